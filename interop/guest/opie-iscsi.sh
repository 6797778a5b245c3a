#!/bin/sh
# Runs inside the run-guest VM (started by interop/guest-iscsi): open-iscsi and
# the kernel's iscsi_tcp against opie on the LAN portal.
set -eu
set -o pipefail
. /rg/lib.sh
LAN=$RG_LAN_HOST_IP:3260
MNT=/mnt/t

rg_step "SendTargets discovery on $LAN"
rg_wait 30 sh -c "iscsiadm -m discovery -t sendtargets -p $LAN >/tmp/disc 2>/tmp/disc.err" ||
  { cat /tmp/disc.err; rg_fail "discovery at $LAN failed"; }
cat /tmp/disc
grep -qx "$LAN,1 $IQN_FS" /tmp/disc || rg_fail "$IQN_FS not discovered at $LAN"
grep -qx "$LAN,1 $IQN_RO" /tmp/disc || rg_fail "$IQN_RO not discovered at $LAN"

node="-m node -T $IQN_FS -p $LAN"
login() {
  iscsiadm $node --login
  dev=$(rg_iscsi_disk "$IQN_FS" 0) || rg_fail "no SCSI disk for $IQN_FS"
  rg_log "$IQN_FS -> $dev"
}
logout() {
  iscsiadm $node --logout
  rg_wait 10 sh -c "[ ! -b $dev ]" || rg_fail "$dev still present after logout"
}
# write_files TAG COUNT: files of 1..COUNT MiB of random data, checksums to the share.
write_files() {
  mkdir -p "$MNT/$1"
  i=1
  while [ "$i" -le "$2" ]; do
    dd if=/dev/urandom of="$MNT/$1/f$i" bs=256k count=$((i * 4)) status=none
    i=$((i + 1))
  done
  (cd "$MNT" && sha256sum "$1"/f*) >"/tmp/$1.sums"
  cp "/tmp/$1.sums" "$RG_SHARE_DIR/$1.sums"
  rg_log "wrote $2 files in /$1"
}
verify() { (cd "$MNT" && sha256sum -c "/tmp/$1.sums" >/dev/null) || rg_fail "checksums of /$1 differ"; rg_log "/$1 verified"; }

rg_step "login, mkfs.ext4, write files, fsck, logout"
login
size=$(blockdev --getsize64 "$dev")
[ "$size" = $((256 << 20)) ] || rg_fail "$dev is $size bytes, want 256 MiB"
mkfs.ext4 -q -F "$dev"
mkdir -p "$MNT"
mount -t ext4 "$dev" "$MNT"
write_files plain 12
umount "$MNT"
e2fsck -fn "$dev" || rg_fail "fsck after the first session"
logout

rg_step "login again, fsck, verify checksums"
login
e2fsck -fn "$dev" || rg_fail "fsck on the second login"
mount -t ext4 "$dev" "$MNT"
verify plain
umount "$MNT"
logout

rg_step "HeaderDigest and DataDigest CRC32C"
iscsiadm $node -o update -n 'node.conn[0].iscsi.HeaderDigest' -v CRC32C
iscsiadm $node -o update -n 'node.conn[0].iscsi.DataDigest' -v CRC32C
login
iscsiadm -m session -P 2 | grep -E 'HeaderDigest|DataDigest'
iscsiadm -m session -P 2 | grep -q 'HeaderDigest: CRC32C' || rg_fail "header digest not negotiated"
iscsiadm -m session -P 2 | grep -q 'DataDigest: CRC32C' || rg_fail "data digest not negotiated"
mount -t ext4 "$dev" "$MNT"
verify plain
write_files digest 8
umount "$MNT"
e2fsck -fn "$dev" || rg_fail "fsck with digests"
mount -t ext4 -o ro "$dev" "$MNT"
verify digest
umount "$MNT"
logout

rg_step "read-only LUN refuses writes"
iscsiadm -m node -T "$IQN_RO" -p "$LAN" --login
ro=$(rg_iscsi_disk "$IQN_RO" 0) || rg_fail "no SCSI disk for $IQN_RO"
[ "$(cat /sys/block/${ro#/dev/}/ro)" = 1 ] || rg_fail "$ro is not write-protected in the kernel"
dd if="$ro" of=/dev/null bs=1M count=4 iflag=direct status=none || rg_fail "cannot read $ro"
if dd if=/dev/zero of="$ro" bs=4k count=1 oflag=direct status=none 2>/dev/null; then
  rg_fail "a write to the read-only LUN succeeded"
fi
iscsiadm -m node -T "$IQN_RO" -p "$LAN" --logout
rg_log "ALL opie iSCSI CHECKS PASSED"
