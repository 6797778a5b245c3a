#!/bin/bash
# Runs in the run-guest VM: open-iscsi logs in to chap_probe at $PROBE (one
# login per case). The probe hangs up after CHAP, so every login "fails" on the
# initiator side; the host reads the verdicts from the probe's log.
set -u
. /rg/lib.sh
IQN=iqn.2026-11.org.opie:chap-probe
node="-m node -T $IQN -p $PROBE"

iscsiadm -m node -o new -T "$IQN" -p "$PROBE" >/dev/null || rg_fail "iscsiadm node new"
up() { iscsiadm $node -o update -n "$1" -v "$2" >/dev/null || rg_fail "set $1"; }
up node.session.initial_login_retry_max 0
up node.conn[0].timeo.login_timeout 5
up node.session.auth.authmethod CHAP
up node.session.auth.username "$CHAP_USER"

attempt() { # label
  echo "=== case $1"
  iscsiadm $node --login >/dev/null 2>&1
  iscsiadm $node --logout >/dev/null 2>&1
  sleep 1
}

for alg in MD5 SHA1 SHA256 SHA3-256; do
  up node.session.auth.chap_algs "$alg"
  up node.session.auth.password "$CHAP_PASS"
  up node.session.auth.username_in ""
  up node.session.auth.password_in ""
  attempt "one-way $alg"
  up node.session.auth.password "wrong-secret-12"
  attempt "wrong $alg"
  up node.session.auth.password "$CHAP_PASS"
  up node.session.auth.username_in "$CHAP_TUSER"
  up node.session.auth.password_in "$CHAP_TPASS"
  attempt "mutual $alg"
  up node.session.auth.password_in "wrong-target-12"
  attempt "mutual-wrong $alg"
done
exit 0
