#!/bin/sh
# Runs inside the run-guest VM (started by interop/guest-head): open-iscsi and
# the kernel's iscsi_tcp against `opie head serve` (host loopback, reached
# through run-guest's --fwd as 10.0.2.2:3260). mkfs.ext4 and a tree of files
# with checksums, then one phase per host action: the guest starts its writers
# (files written with fsync, a dd stream with O_DIRECT; each counts its
# completed writes in the share: PHASE.count, PHASE-dd.count), writes PHASE.ready
# into the share and keeps writing until the host, done with its action (an
# ISU killed and rebuilt onto the spare; an ISU suspended and resumed; an ISU
# replaced while another is killed), writes PHASE.done. Then: the writers'
# exit status, no I/O error in dmesg, e2fsck -fn clean and every checksum OK.
set -eu
set -o pipefail
. /rg/lib.sh
PORTAL=$RG_HOST_IP:3260
MNT=/mnt/v
SH=$RG_SHARE_DIR
SUMS=/tmp/sums

rg_step "login to $IQN at $PORTAL (manual node record)"
iscsiadm -m node -o new -T "$IQN" -p "$PORTAL" >/dev/null
# Long enough for the head to ride out an ISU's loss without the guest
# failing its I/O (the head holds commands in doubt for its session horizon).
iscsiadm -m node -T "$IQN" -p "$PORTAL" -o update -n node.session.timeo.replacement_timeout -v 120
iscsiadm -m node -T "$IQN" -p "$PORTAL" --login
dev=$(rg_iscsi_disk "$IQN" 0) || rg_fail "no SCSI disk for $IQN"
size=$(blockdev --getsize64 "$dev")
rg_log "$IQN -> $dev, $((size >> 20)) MiB"
[ "$size" -ge $((256 << 20)) ] || rg_fail "$dev is only $size bytes"

rg_step "mkfs.ext4 and a tree of files with checksums"
mkfs.ext4 -q -F "$dev"
mkdir -p "$MNT" "$SUMS/tree"
mount -t ext4 "$dev" "$MNT"
for d in a b c d; do
  mkdir -p "$MNT/tree/$d/sub"
  i=1
  while [ "$i" -le 6 ]; do
    dd if=/dev/urandom of="$MNT/tree/$d/f$i" bs=4k count=$((i * i * 8)) status=none
    dd if=/dev/urandom of="$MNT/tree/$d/sub/g$i" bs=1k count=$((i * 3)) status=none
    i=$((i + 1))
  done
done
sync
(cd "$MNT" && find tree -type f | sort | xargs sha256sum) >"$SUMS/tree/all"
rg_log "tree: $(wc -l <"$SUMS/tree/all") files, $(du -sk "$MNT/tree" | cut -f1) KiB"

# files DIR: until /tmp/stop exists, files f1..f32 (64 KiB to 1 MiB of random
# data, then round again) written with fsync; a file's checksum (of the data
# before it was written) is kept once its write returned. Exits 1 at the
# first failed write. A file always gets the same size (n % 16 follows the
# file's number) and is rewritten in place (notrunc): the set of blocks the
# writers touch stays bounded (17 MiB here, 24 MiB by the stream) however fast
# they go, so the suspend phase can tell a resync of what changed from one of
# everything. (Truncating rewrites let ext4 move the data on every pass.)
files() {
  mkdir -p "$MNT/$1" "$SUMS/$1"
  n=0
  while [ ! -e /tmp/stop ]; do
    n=$((n + 1))
    f=f$(( (n - 1) % 32 + 1 ))
    dd if=/dev/urandom of=/tmp/files.buf bs=64k count=$(( n % 16 + 1 )) status=none
    rm -f "$SUMS/$1/$f"
    dd if=/tmp/files.buf of="$MNT/$1/$f" bs=64k conv=fsync,notrunc status=none ||
      { echo "[guest] write of /$1/$f failed" >&2; return 1; }
    echo "$(sha256sum </tmp/files.buf | cut -d' ' -f1)  $1/$f" >"$SUMS/$1/$f"
    echo "$n" >"$SH/.$1.count" && mv "$SH/.$1.count" "$SH/$1.count"
  done
}
# stream DIR: until /tmp/stop exists, 24 MiB of random data written again and
# again in place to DIR/big with O_DIRECT and fsync.
stream() {
  mkdir -p "$MNT/$1" "$SUMS/$1"
  dd if=/dev/urandom of=/tmp/stream.buf bs=1M count=24 status=none
  n=0
  while [ ! -e /tmp/stop ]; do
    n=$((n + 1))
    rm -f "$SUMS/$1/big"
    dd if=/tmp/stream.buf of="$MNT/$1/big" bs=1M oflag=direct conv=fsync,notrunc status=none ||
      { echo "[guest] dd to /$1/big failed" >&2; return 1; }
    echo "$(sha256sum </tmp/stream.buf | cut -d' ' -f1)  $1/big" >"$SUMS/$1/big"
    echo "$n" >"$SH/.$1.count" && mv "$SH/.$1.count" "$SH/$1.count"
  done
}

# verify WHAT: no I/O error so far, fsck clean, every checksum written so far.
verify() {
  if dmesg | grep -iE 'I/O error|EXT4-fs (error|warning)|blk_update_request'; then
    rg_fail "$1: the kernel logged I/O errors"
  fi
  umount "$MNT"
  e2fsck -fn "$dev" >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; rg_fail "$1: e2fsck -fn found errors"; }
  mount -t ext4 "$dev" "$MNT"
  cat "$SUMS"/*/* >/tmp/all.sums
  (cd "$MNT" && sha256sum -c /tmp/all.sums >/tmp/check.log 2>&1) ||
    { grep -v ': OK$' /tmp/check.log; rg_fail "$1: checksums differ"; }
  ok=$(grep -c ': OK$' /tmp/check.log)
  [ "$ok" = "$(wc -l </tmp/all.sums)" ] || rg_fail "$1: $ok of $(wc -l </tmp/all.sums) checksums OK"
  rg_log "$1: fsck clean, $ok of $ok checksums OK, no I/O error in dmesg"
  echo "$ok" >"$SH/$1.verified"
}

# phase NAME SECS: writers on, NAME.ready, wait for NAME.done, writers off,
# their exit status, verify.
phase() {
  rg_step "$1: writers running; the host acts"
  rm -f /tmp/stop
  files "$1" &
  fpid=$!
  stream "$1-dd" &
  spid=$!
  sleep 2
  touch "$SH/$1.ready"
  rg_wait "$2" test -e "$SH/$1.done" || { touch /tmp/stop; rg_fail "$1: no $1.done from the host within $2 s"; }
  touch /tmp/stop
  frc=0 src=0
  wait "$fpid" || frc=$?
  wait "$spid" || src=$?
  [ "$frc" = 0 ] || rg_fail "$1: a file write failed (exit $frc)"
  [ "$src" = 0 ] || rg_fail "$1: the dd stream failed (exit $src)"
  rg_log "$1: $(cat "$SH/$1.count" 2>/dev/null || echo 0) files fsynced, $(cat "$SH/$1-dd.count" 2>/dev/null || echo 0) x 24 MiB dd, no write failed"
  verify "$1"
}

verify tree
phase kill 900
phase suspend 600
phase replace 900

rg_step "logout"
umount "$MNT"
iscsiadm -m node -T "$IQN" -p "$PORTAL" --logout
rg_log "ALL HEAD RECOVERY CHECKS PASSED"
