#!/bin/sh
# Runs inside the run-guest VM (started by interop/aoe-guest-test).
# Targets on the LAN: `opie isu serve` with e1.1 .. e1.4 (128 MiB each; e1.3 masked to
# another MAC, e1.4 reserved by another MAC on request), vblade e4.1 (128 MiB).
# AOE_FULL=1 adds mkfs/fsck, the mask and the reservation checks.
set -eu
. /rg/lib.sh

# The driver drops error replies (AOEFL_ERR) and retransmits until a frame has
# waited aoe_deadsecs (default 180 s); then it declares the device down and
# fails the I/O with EIO. Keep it below the driver's HARD_SCORN_SECS (10 s): a
# frame that waits longer than that first gets its target "scorned" and then
# sits in the retransmit queue, where the dead check never sees it (the read
# hangs for good and the guest cannot power off).
rg_step "load aoe (aoe_deadsecs=5)"
modprobe aoe aoe_deadsecs=5
rg_log "lan0 mtu $(cat /sys/class/net/lan0/mtu)"

rg_step "discover opie e1.1 and vblade e4.1"
dev=$(rg_aoe_dev 1 1 30) || rg_fail "no /dev/etherd/e1.1 after 30 s"
vdev=$(rg_aoe_dev 4 1 30) || rg_fail "no /dev/etherd/e4.1 (vblade) after 30 s"
aoe-stat
size=$(blockdev --getsize64 "$dev")
[ "$size" = $((128 << 20)) ] || rg_fail "$dev is $size bytes, want 128 MiB"
rg_log "$dev is 128 MiB"

rg_step "64 MiB dd write / read back / compare on opie"
rg_pattern_check "$dev" 64 16 || rg_fail "pattern mismatch on $dev"
cp /tmp/rg-pattern.bin "$RG_SHARE_DIR/aoe.pattern"

rg_step "dd throughput, 64 MiB O_DIRECT, opie then vblade"
for d in "$dev:opie" "$vdev:vblade"; do
  path=${d%%:*} name=${d##*:}
  # Same place as the pattern check (16 MiB), so the host can still find the pattern there.
  w=$(dd if=/tmp/rg-pattern.bin of="$path" bs=1M count=64 seek=16 oflag=direct conv=fsync,notrunc 2>&1 | tail -1)
  r=$(dd if="$path" of=/dev/null bs=1M count=64 skip=16 iflag=direct 2>&1 | tail -1)
  echo "GUEST_DD $name write: $w"
  echo "GUEST_DD $name read: $r"
done

if [ "${AOE_FULL:-0}" = 1 ]; then
  rg_step "mkfs.ext4 + fsck on opie e1.2 (second slot on the same interface)"
  fdev=$(rg_aoe_dev 1 2 30) || rg_fail "no /dev/etherd/e1.2"
  mkfs.ext4 -q -F "$fdev" || rg_fail "mkfs.ext4 failed"
  modprobe ext4 2>/dev/null || true
  mkdir -p /mnt/t && mount -t ext4 "$fdev" /mnt/t || rg_fail "mount failed"
  dd if=/tmp/rg-pattern.bin of=/mnt/t/f bs=1M count=8 status=none
  umount /mnt/t
  e2fsck -fn "$fdev" || rg_fail "fsck found errors"
  rg_log "ext4 clean"

  rg_step "masked disk e1.3 stays invisible"
  for i in 1 2 3 4 5; do aoe-discover; usleep 500000; done
  if [ -e /dev/etherd/e1.3 ] || aoe-stat | grep -q 'e1\.3'; then
    rg_fail "e1.3 is visible although our MAC is not on its mask list"
  fi
  rg_log "e1.3 not visible (mask list enforced)"

  rg_step "disk e1.4 reserved by another MAC: I/O fails with EIO"
  rdev=$(rg_aoe_dev 1 4 30) || rg_fail "no /dev/etherd/e1.4"
  dd if="$rdev" of=/dev/null bs=4k count=1 iflag=direct status=none || rg_fail "e1.4 not readable before the reservation"
  touch "$RG_SHARE_DIR/reserve"
  rg_wait 30 test -e "$RG_SHARE_DIR/reserved" || rg_fail "host did not reserve e1.4"
  t0=$(cut -d. -f1 /proc/uptime)
  if dd if="$rdev" of=/dev/null bs=4k count=1 iflag=direct 2>/tmp/dd.err; then
    rg_fail "read from a disk reserved by another MAC succeeded"
  fi
  t1=$(cut -d. -f1 /proc/uptime)
  grep -q 'Input/output error' /tmp/dd.err || rg_fail "read failed, but not with EIO: $(cat /tmp/dd.err)"
  dmesg | grep -q 'error packet from 1\.4.*ecode=6' || rg_fail "no error 6 (reserved) reply from e1.4 in the kernel log"
  rg_log "read failed with EIO after $((t1 - t0)) s (target answered error 6; device declared down)"
  aoe-stat | grep 'e1\.4' || true

  rg_step "released: e1.4 serves again"
  touch "$RG_SHARE_DIR/release"
  rg_wait 30 test -e "$RG_SHARE_DIR/released" || rg_fail "host did not release e1.4"
  # The driver brings a downed device back when the target answers discovery.
  _readable() { aoe-discover; dd if="$rdev" of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null; }
  rg_wait 60 _readable || rg_fail "e1.4 not readable after the reservation was released"
  rg_log "e1.4 readable again after release"
fi
rg_log "ALL AoE CHECKS PASSED"
