#!/bin/sh
# Runs inside the run-guest VM (started by interop/guest-chap): open-iscsi
# against opie with CHAP. Two initiator names (open-iscsi ifaces): alice is on
# the ACL of $IQN_CHAP, eve is not. For each chap_algs value: one-way CHAP
# logs in and does I/O, a wrong secret fails, mutual CHAP logs in and does
# I/O, a wrong target secret fails. Discovery is open (no CHAP), so eve sees
# $IQN_CHAP like any name would (an unproven name must not change the answer),
# and she is refused at login even with alice's secret, with 0201 as for a
# wrong secret.
set -u
. /rg/lib.sh
LAN=$RG_LAN_HOST_IP:3260

for who in alice eve; do
  iscsiadm -m iface -I "$who" -o new >/dev/null || rg_fail "iface $who"
  iscsiadm -m iface -I "$who" -o update -n iface.transport_name -v tcp >/dev/null ||
    rg_fail "iface $who transport"
  iscsiadm -m iface -I "$who" -o update -n iface.initiatorname -v "$(eval echo \$IQN_$who)" >/dev/null ||
    rg_fail "iface $who initiatorname"
done

rg_step "discovery as alice and as eve"
rg_wait 30 sh -c "iscsiadm -m discovery -t sendtargets -p $LAN -I alice >/tmp/disc.alice 2>&1" ||
  { cat /tmp/disc.alice; rg_fail "discovery as alice failed"; }
cat /tmp/disc.alice
grep -q " $IQN_CHAP\$" /tmp/disc.alice || rg_fail "alice does not see $IQN_CHAP"
iscsiadm -m discovery -t sendtargets -p $LAN -I eve >/tmp/disc.eve 2>&1 ||
  { cat /tmp/disc.eve; rg_fail "discovery as eve failed"; }
cat /tmp/disc.eve
grep -q " $IQN_OPEN\$" /tmp/disc.eve || rg_fail "eve does not see $IQN_OPEN"
grep -q " $IQN_CHAP\$" /tmp/disc.eve || rg_fail "eve does not see $IQN_CHAP in open discovery"
echo "RESULT discovery-acl ok"

# Eve's discovery of the same portal dropped alice's record of $IQN_CHAP.
# (-o new may refuse a record that is still there; the record must exist after.)
iscsiadm -m node -o new -T "$IQN_CHAP" -p "$LAN" -I alice >/dev/null 2>&1
iscsiadm -m node -T "$IQN_CHAP" -p "$LAN" -I alice >/dev/null || rg_fail "no node record for alice"
node="-m node -T $IQN_CHAP -p $LAN -I alice"
up() { iscsiadm $node -o update -n "$1" -v "$2" >/dev/null || rg_fail "set $1"; }
up node.session.initial_login_retry_max 0
up node.conn[0].timeo.login_timeout 5
up node.session.auth.authmethod CHAP
up node.session.auth.username "$CHAP_USER"

# io LABEL: 1 MiB of random data at a per-case offset, read back with O_DIRECT.
n=0
io() {
  n=$((n + 1))
  dev=$(rg_iscsi_disk "$IQN_CHAP" 0) || rg_fail "$1: no SCSI disk"
  dd if=/dev/urandom of=/tmp/w bs=1M count=1 status=none
  dd if=/tmp/w of="$dev" bs=1M seek=$n oflag=direct conv=fsync status=none || rg_fail "$1: write"
  dd if="$dev" of=/tmp/r bs=1M skip=$n count=1 iflag=direct status=none || rg_fail "$1: read"
  cmp -s /tmp/w /tmp/r || rg_fail "$1: data read back differs"
}
# case LABEL EXPECT(ok|fail)
case_() {
  if iscsiadm $node --login >/tmp/login.log 2>&1; then
    [ "$2" = ok ] || { iscsiadm $node --logout >/dev/null 2>&1; rg_fail "$1: login succeeded"; }
    io "$1"
    iscsiadm $node --logout >/dev/null 2>&1 || rg_fail "$1: logout"
    rg_wait 10 sh -c "[ ! -b $dev ]" || rg_fail "$1: $dev still present after logout"
  else
    [ "$2" = fail ] || { cat /tmp/login.log; rg_fail "$1: login failed"; }
  fi
  echo "RESULT $1 $2"
}

for alg in MD5 SHA1 SHA256 SHA3-256; do
  rg_step "chap_algs=$alg"
  up node.session.auth.chap_algs "$alg"
  up node.session.auth.password "$CHAP_PASS"
  up node.session.auth.username_in ""
  up node.session.auth.password_in ""
  case_ "one-way-$alg" ok
  up node.session.auth.password "wrong-secret-12"
  case_ "wrong-secret-$alg" fail
  up node.session.auth.password "$CHAP_PASS"
  up node.session.auth.username_in "$CHAP_TUSER"
  up node.session.auth.password_in "$CHAP_TPASS"
  case_ "mutual-$alg" ok
  up node.session.auth.password_in "wrong-target-12"
  case_ "mutual-wrong-target-$alg" fail
done

rg_step "eve with alice's credentials"
node="-m node -T $IQN_CHAP -p $LAN -I eve"
# (Eve's record may exist from her discovery; the updates below need it.)
iscsiadm -m node -o new -T "$IQN_CHAP" -p "$LAN" -I eve >/dev/null 2>&1
up node.session.initial_login_retry_max 0
up node.conn[0].timeo.login_timeout 5
up node.session.auth.authmethod CHAP
up node.session.auth.username "$CHAP_USER"
up node.session.auth.password "$CHAP_PASS"
case_ "eve-not-on-acl" fail
exit 0
