# shellcheck shell=bash
# AoE helpers for the interop scripts, on top of lib.sh (source lib.sh first):
# a private network namespace with one veth pair, `opie isu serve` inside it,
# and the AoE example clients (aoe-proto's, on its test client).
#   . "$(dirname "$0")/lib.sh"; . "$(dirname "$0")/aoe-lib.sh"

# aoe_need_root: fails (never skips) without root.
aoe_need_root() {
  ((EUID == 0)) || die "needs root (network namespace, raw sockets)"
}

# aoe_build_examples NAME...: builds aoe-proto examples (release, with its
# `client` feature); they are then in $AOE_EXAMPLES.
AOE_EXAMPLES=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples
aoe_build_examples() {
  local args=() e
  for e in "$@"; do args+=(--example "$e"); done
  (cd "$ROOT" && cargo build -q --release -p aoe-proto --features client "${args[@]}") || die "cannot build ${*}"
}

# aoe_netns: a network namespace $AOE_NS (unique per run) holding the veth
# pair tgt <-> cli (down, IPv6 off); removed at exit.
aoe_netns() {
  AOE_NS=aoe-$$-$RANDOM
  ip netns add "$AOE_NS" || die "cannot create network namespace $AOE_NS"
  on_exit "ip netns del $AOE_NS"
  ip -n "$AOE_NS" link set lo up
  ip -n "$AOE_NS" link add tgt type veth peer name cli || die "cannot create veth pair"
  local i
  for i in tgt cli; do
    ip netns exec "$AOE_NS" sh -c "echo 1 > /proc/sys/net/ipv6/conf/$i/disable_ipv6" 2>/dev/null || true
  done
}

# aoe_link_mtu MTU: sets both ends of the veth pair to MTU and up.
aoe_link_mtu() {
  local i
  for i in tgt cli; do ip -n "$AOE_NS" link set "$i" mtu "$1" up || die "cannot set $i mtu $1"; done
}

# aoe_opie_start CONFIG: runs `opie isu serve --config CONFIG` inside $AOE_NS
# (log: $TMP/opie.log, replaced), waits until AoE serves; sets OPIE_PID. It
# is stopped at exit by lib.sh's opie_stop (which fails unless it exits 0).
aoe_opie_start() {
  local i
  RUST_LOG=${RUST_LOG:-warn,target_aoe=info} \
    ip netns exec "$AOE_NS" "$OPIE" isu serve --config "$1" >"$TMP/opie.log" 2>&1 &
  OPIE_PID=$!
  on_exit opie_stop
  for ((i = 0; i < 200; i++)); do
    grep -qs 'AoE serving' "$TMP/opie.log" && return 0
    kill -0 "$OPIE_PID" 2>/dev/null || { wait "$OPIE_PID" 2>/dev/null; OPIE_PID=; die "opie exited at start"; }
    sleep 0.1
  done
  die "opie did not start serving AoE within 20 s"
}

# aoe_root_or_skip: a test that needs root and has none prints SKIP and
# exits 0, except under CI=true, where that is a failure.
aoe_root_or_skip() {
  ((EUID == 0)) && return 0
  [[ ${CI:-} != true ]] || die "needs root (network namespace, raw sockets, VM), which CI=true must have"
  log "SKIP: needs root (network namespace, raw sockets, VM)"
  exit 0
}
