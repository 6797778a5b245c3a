#!/bin/sh
# Runs inside the run-guest VM (started by interop/aoe-guest-test).
# Targets on the LAN: e1.1 and e1.2 opie (128 MiB each), e2.1 opie masked to another MAC,
# e3.1 opie reserved by another MAC, e4.1 vblade (128 MiB).
# AOE_FULL=1 adds mkfs/fsck, the mask and the reservation checks.
set -eu
. /rg/lib.sh

# A short dead timeout so the reserved target's I/O fails within the run.
rg_step "load aoe (aoe_deadsecs=12)"
modprobe aoe aoe_deadsecs=12
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

  rg_step "masked target e2.1 stays invisible"
  for i in 1 2 3 4 5; do aoe-discover; usleep 500000; done
  if [ -e /dev/etherd/e2.1 ] || aoe-stat | grep -q 'e2\.1'; then
    rg_fail "e2.1 is visible although our MAC is not on its mask list"
  fi
  rg_log "e2.1 not visible (mask list enforced)"

  rg_step "target e3.1 reserved by another MAC: I/O fails"
  rdev=$(rg_aoe_dev 3 1 30) || rg_fail "e3.1 not discovered (IDENTIFY must be exempt from reservations)"
  # The driver drops error replies and retransmits until aoe_deadsecs, then
  # fails the I/O. Under emulation that can outlast the run, so the check is:
  # the read must not succeed within 60 s.
  # (A read stuck in the driver cannot be killed, so it runs in the background.)
  rm -f /tmp/dd.rc
  (dd if="$rdev" of=/dev/null bs=4k count=1 iflag=direct 2>/tmp/dd.err; echo $? >/tmp/dd.rc) &
  i=0
  while [ ! -e /tmp/dd.rc ] && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done
  if [ -e /tmp/dd.rc ]; then
    [ "$(cat /tmp/dd.rc)" != 0 ] || rg_fail "read from a target reserved by another MAC succeeded"
    rg_log "read failed as it must after ${i} s: $(tail -1 /tmp/dd.err)"
  else
    rg_log "read still blocked after 60 s (no data returned; the driver keeps getting error 6)"
  fi
  # Ask the host to release the reservation. The 6.1 driver stops retransmitting
  # the refused read (only the first error replies are logged), so the read may
  # stay stuck and the guest then cannot shut down; interop/aoe-guest-test knows.
  touch "$RG_SHARE_DIR/release"
  if rg_wait 20 test -e /tmp/dd.rc; then
    rg_log "after release the read completed (dd exit $(cat /tmp/dd.rc))"
  else
    rg_log "after release the read is still stuck in the driver"
  fi
fi
rg_log "ALL AoE CHECKS PASSED"
