#!/usr/bin/env bash
# open-iscsi (the Linux initiator, in the shared test VM) against
# chap::Authenticator: for each of MD5, SHA1, SHA256, SHA3-256 (chap_algs),
# one-way CHAP with the right and a wrong secret, and mutual CHAP where the
# initiator checks the target's answer (right and wrong target secret).
# Needs root and ../shared/vm. Usage: bash chap/tests/vm/open-iscsi-chap.sh
# Exit 0 = pass.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
vm=${VM_DIR:-$repo/../shared/vm}
[[ -x $vm/run-guest ]] || vm=/work/shared/vm
die() { echo "open-iscsi-chap: FAIL: $*" >&2; exit 1; }

CHAP_USER=opie-initiator CHAP_PASS=init-secret-1234
CHAP_TUSER=opie-target CHAP_TPASS=targ-secret-1234   # open-iscsi wants 12..16 chars

(cd "$repo" && cargo build -q -p chap --example chap_probe) || die "build"
probe=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/examples/chap_probe
tmp=$(mktemp -d /tmp/chap-vm.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

"$vm/build-guest" >/dev/null
rc=0
"$vm/run-guest" -t 240 \
  --host "exec $probe \$RG_LAN_HOST_IP:3260 $CHAP_USER $CHAP_PASS $CHAP_TUSER $CHAP_TPASS > $tmp/probe.log 2>&1" \
  -e PROBE=10.99.0.1:3260 -e CHAP_USER=$CHAP_USER -e CHAP_PASS=$CHAP_PASS \
  -e CHAP_TUSER=$CHAP_TUSER -e CHAP_TPASS=$CHAP_TPASS \
  "$here/guest-chap.sh" > "$tmp/guest.log" 2>&1 || rc=$?
cat "$tmp/probe.log"
((rc == 0)) || { tail -40 "$tmp/guest.log"; die "guest script failed (exit $rc)"; }

# One line per login, in the guest script's order; nothing else.
for alg in MD5 SHA-1 SHA-256 SHA3-256; do
  echo "algorithm=$alg user=$CHAP_USER outcome=Authenticated { mutual: false, continued: true }"
  echo "algorithm=$alg user=- outcome=Refused(Authentication)"
  echo "algorithm=$alg user=$CHAP_USER outcome=Authenticated { mutual: true, continued: true }"
  echo "algorithm=$alg user=$CHAP_USER outcome=Authenticated { mutual: true, continued: false }"
done > "$tmp/expected.log"
# one-way ok, wrong secret refused by us, mutual accepted by the initiator,
# wrong target secret refused by the initiator (it does not continue).
diff -u "$tmp/expected.log" "$tmp/probe.log" || die "open-iscsi outcomes differ from the expected ones (above)"
echo "open-iscsi-chap: 16 of 16 cases passed (MD5, SHA-1, SHA-256, SHA3-256; one-way, wrong secret, mutual, wrong target secret)"
