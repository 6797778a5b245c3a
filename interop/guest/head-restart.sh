#!/bin/bash
# Runs inside the run-guest VM (started by interop/guest-head-restart):
# open-iscsi and ext4 on a head volume while the host kills the head with
# SIGKILL and restarts it (phase 1), then grows the array onto a fourth ISU
# and the volume after it (phase 2). Host and guest step through the phases
# by marker files in the 9p share: the guest writes phase-N.ready once its
# writer runs, the host acts and writes phase-N.done.
# Env: IQN (the export), PHASE_TIMEOUT (seconds to wait for a phase-N.done).
set -eu
set -o pipefail
. /rg/lib.sh
HOST=$RG_HOST_IP:3260
MNT=/mnt/t
SHARE=$RG_SHARE_DIR
SLOTS=48
node="-m node -T $IQN -p $HOST"

# now: guest uptime in centiseconds (busybox date has whole seconds only).
now() { local u; read -r u _ </proc/uptime; u=${u/./}; echo $((10#$u)); }
secs() { printf '%d.%02d' $(($1 / 100)) $(($1 % 100)); }

# writer TAG: rewrites $MNT/TAG/w0..w(SLOTS-1) in turn with 1 MiB of fresh
# random data each, fsync'd (dd conv=fsync); only after the fsync returns is
# the file's checksum and the time logged. Stops when /tmp/stop-TAG exists;
# exits non-zero on the first failed write.
writer() {
  local tag=$1 n=0 f
  mkdir -p "$MNT/$tag"
  while [ ! -e "/tmp/stop-$tag" ]; do
    f=$tag/w$((n % SLOTS))
    head -c 1048576 /dev/urandom >"/tmp/src-$tag" || exit 10
    dd if="/tmp/src-$tag" of="$MNT/$f" bs=1M conv=fsync status=none || exit 11
    echo "$(sha256sum <"/tmp/src-$tag" | cut -d' ' -f1)  $f" >>"/tmp/$tag.log"
    now >>"/tmp/$tag.times"
    mkdir -p "/tmp/src/$tag" && cp "/tmp/src-$tag" "/tmp/src/$f"
    n=$((n + 1))
  done
}
writes() { [ -f "/tmp/$1.log" ] && wc -l <"/tmp/$1.log" || echo 0; }
# start_writer TAG: runs writer TAG in the background (pid in WPID) and
# waits for its first 3 writes.
start_writer() {
  rm -f "/tmp/stop-$1"
  writer "$1" &
  WPID=$!
  rg_wait 120 sh -c "[ \$(wc -l <'/tmp/$1.log' 2>/dev/null || echo 0) -ge 3 ]" ||
    rg_fail "writer $1 made no progress"
}
# stop_writer TAG: after MORE further writes, stops the writer; fails on
# its error status.
stop_writer() {
  local tag=$1 more=$2 base rc=0
  base=$(writes "$tag")
  rg_wait 300 sh -c "[ \$(wc -l <'/tmp/$tag.log') -ge $((base + more)) ]" ||
    { kill -0 "$WPID" 2>/dev/null || wait "$WPID" || rc=$?; rg_fail "writer $tag stalled after $base writes (exit $rc)"; }
  touch "/tmp/stop-$tag"
  wait "$WPID" || rc=$?
  [ "$rc" = 0 ] || rg_fail "writer $tag failed with exit status $rc after $(writes "$tag") writes"
  # The longest time between two consecutive fsync'd writes: the stall the
  # guest saw.
  awk 'NR > 1 && $1 - p > m { m = $1 - p } { p = $1 } END { printf "%d\n", m }' "/tmp/$tag.times" >"/tmp/$tag.gap"
  rg_log "writer $tag: $(writes "$tag") fsync'd writes, no error; longest gap between two $(secs "$(cat "/tmp/$tag.gap")") s"
}
# sums TAG: the last checksum logged for each file TAG wrote.
sums() { awk '{ last[$2] = $1 } END { for (f in last) print last[f] "  " f }' "/tmp/$1.log"; }
# verify TAG...: every file's checksum as read from the device (the caller
# has just mounted it, so nothing comes from the page cache).
verify() {
  local t n
  for t in "$@"; do
    if [ "$t" = base ]; then cp /tmp/base.sums /tmp/check.sums; else sums "$t" >/tmp/check.sums; fi
    n=$(wc -l </tmp/check.sums)
    (cd "$MNT" && sha256sum -c /tmp/check.sums) >/tmp/check.out 2>&1 || true
    if [ "$(grep -c ': OK$' /tmp/check.out)" != "$n" ]; then
      grep -v ': OK$' /tmp/check.out | head -20
      diagnose "$t"
      rg_fail "checksums of /$t differ ($(grep -c ': OK$' /tmp/check.out) of $n OK)"
    fi
    rg_log "/$t: $n of $n checksums OK"
  done
}
# diagnose TAG: for each file of TAG that differs, which bytes (from the
# copy of what was written), the time its write ended, and its extents.
diagnose() {
  local f n
  grep -v ': OK$' /tmp/check.out | sed -n 's/: FAILED$//p' | while read -r f; do
    [ -f "/tmp/src/$f" ] || continue
    cmp -l "/tmp/src/$f" "$MNT/$f" >/tmp/cmp.out 2>/dev/null || true
    n=$(wc -l </tmp/cmp.out)
    rg_log "$f: $n bytes differ, first/last at $(head -1 /tmp/cmp.out | awk '{print $1 - 1}')/$(tail -1 /tmp/cmp.out | awk '{print $1 - 1}'), device bytes zero: $(awk '$3 == 0' /tmp/cmp.out | wc -l)"
    awk '{ print int(($1 - 1) / 4096) }' /tmp/cmp.out | uniq -c | head -40 | tr '\n' ' '; echo
    grep -n "  $f\$" "/tmp/$1.log" | head -3
    debugfs -R "stat /$f" "$dev" 2>/dev/null | sed -n '/EXTENTS/,$p' | head -5
  done
  rg_log "write end times (cs of uptime): $(tr '\n' ' ' <"/tmp/$1.times")"
  rg_log "phase-1.ready at $T_READY1"
}
no_io_errors() {
  if dmesg | grep -iE 'I/O error|EXT4-fs error|Buffer I/O'; then rg_fail "the kernel logged I/O errors ($1)"; fi
  rg_log "dmesg: no I/O error ($1)"
}
fsck_remount() {
  umount "$MNT"
  e2fsck -fn "$dev" >/tmp/fsck.out 2>&1 || { cat /tmp/fsck.out; rg_fail "e2fsck -fn $dev: not clean ($1)"; }
  rg_log "e2fsck -fn clean ($1): $(tail -1 /tmp/fsck.out)"
  mount -t ext4 "$dev" "$MNT"
}
# await N: waits for the host's phase-N.done.
await() {
  rg_log "phase $1 ready, waiting for the host"
  rg_wait "$PHASE_TIMEOUT" test -e "$SHARE/phase-$1.done" || rg_fail "no phase-$1.done from the host in $PHASE_TIMEOUT s"
  rg_log "host: $(cat "$SHARE/phase-$1.done")"
}
session_state() { iscsiadm -m session -P 1 | sed -n 's/.*iSCSI Session State: *//p' | head -1; }

rg_step "login to $IQN at $HOST (replacement_timeout 120), mkfs.ext4, files"
iscsiadm -m node -o new -T "$IQN" -p "$HOST" >/dev/null
iscsiadm $node -o update -n node.session.timeo.replacement_timeout -v 120
iscsiadm $node --login
dev=$(rg_iscsi_disk "$IQN" 0) || rg_fail "no SCSI disk for $IQN"
sd=${dev#/dev/}
size0=$(($(cat "/sys/block/$sd/size") * 512))
rg_log "$IQN -> $dev, $size0 bytes"
mkfs.ext4 -q -F "$dev"
mkdir -p "$MNT"
mount -t ext4 "$dev" "$MNT"
mkdir -p "$MNT/base"
i=1
while [ "$i" -le 16 ]; do
  dd if=/dev/urandom of="$MNT/base/f$i" bs=256k count=$((i * 2)) conv=fsync status=none
  i=$((i + 1))
done
(cd "$MNT" && sha256sum base/f*) >/tmp/base.sums
rg_log "16 files in /base, each fsync'd"

rg_step "phase 1: writes while the host kills the head (SIGKILL) and restarts it"
start_writer p1
before=$(writes p1)
t0=$(now)
T_READY1=$t0
dumpe2fs -h "$dev" 2>/dev/null | grep -i "block size" || true
touch "$SHARE/phase-1.ready"
await 1
rg_log "session state: $(session_state)"
stop_writer p1 8
rg_log "phase 1: $before writes before the kill, $(writes p1) in all, done $(secs $(($(now) - t0))) s after phase-1.ready"
no_io_errors "phase 1"
fsck_remount "after the head restart"
verify base p1

rg_step "phase 2: writes while the host grows the array onto a fourth ISU, then the volume"
start_writer p2
t0=$(now)
touch "$SHARE/phase-2.ready"
await 2
new_size=$(sed -n 's/.*new_size=\([0-9]*\).*/\1/p' "$SHARE/phase-2.done")
[ -n "$new_size" ] || rg_fail "phase-2.done names no new_size"
stop_writer p2 8
rg_log "phase 2: $(writes p2) writes in $(secs $(($(now) - t0))) s"
no_io_errors "phase 2"
seen=$(($(cat "/sys/block/$sd/size") * 512))
rg_log "before the rescan the kernel sees $seen bytes"
echo 1 >"/sys/block/$sd/device/rescan"
rg_wait 30 sh -c "[ \$((\$(cat /sys/block/$sd/size) * 512)) = $new_size ]" ||
  rg_fail "$dev is $(($(cat "/sys/block/$sd/size") * 512)) bytes after the rescan, the host grew the volume to $new_size"
rg_log "after the rescan: $dev is $new_size bytes (was $size0)"
blocks0=$(df -k "$MNT" | awk 'NR == 2 { print $2 }')
free0=$(df -k "$MNT" | awk 'NR == 2 { print $4 }')
resize2fs "$dev" >/tmp/resize.out 2>&1 || { cat /tmp/resize.out; rg_fail "resize2fs $dev failed"; }
blocks1=$(df -k "$MNT" | awk 'NR == 2 { print $2 }')
[ "$blocks1" -gt "$blocks0" ] || rg_fail "resize2fs left the filesystem at $blocks1 KiB"
rg_log "resize2fs online: $blocks0 -> $blocks1 KiB"
# Fill part of the new space: a file 32 MiB larger than the old free space
# (4 MiB of random data over and over: urandom is slow in an emulated CPU).
fill=$(((free0 / 1024 + 32) / 4 * 4))
head -c 4194304 /dev/urandom >/tmp/rnd4
i=0
while [ "$i" -lt $((fill / 4)) ]; do cat /tmp/rnd4; i=$((i + 1)); done |
  dd of="$MNT/fill" bs=1M iflag=fullblock conv=fsync status=none || rg_fail "writing $fill MiB into the grown filesystem failed"
(cd "$MNT" && sha256sum fill) >/tmp/fill.sums
rg_log "wrote $fill MiB into the grown filesystem"
no_io_errors "after the resize"
fsck_remount "after the resize"
verify base p1 p2
(cd "$MNT" && sha256sum -c /tmp/fill.sums) >/dev/null || rg_fail "the fill file differs"
rg_log "/fill: checksum OK"
umount "$MNT"
e2fsck -fn "$dev" >/tmp/fsck.out 2>&1 || { cat /tmp/fsck.out; rg_fail "final e2fsck -fn not clean"; }
iscsiadm $node --logout
{
  echo "size0=$size0 new_size=$new_size fs_kib=$blocks0->$blocks1"
  echo "p1_writes=$(writes p1) p1_gap_cs=$(cat /tmp/p1.gap) p2_writes=$(writes p2) p2_gap_cs=$(cat /tmp/p2.gap)"
} >"$SHARE/guest-figures"
rg_log "ALL HEAD RESTART AND GROW CHECKS PASSED"
