# shellcheck shell=bash
# Helpers for the interop scripts: locate the tree, start `opie isu serve` on
# a free loopback port with a temporary data dir, clean up on exit.
#   . "$(dirname "$0")/lib.sh"
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NAME=${NAME:-$(basename "$0")}
# shared/ (conformance, bench, vm) sits beside the repository: ../shared from
# the root. OPIE_SHARED overrides (e.g. for a worktree nested one level deeper).
if [[ -z ${OPIE_SHARED:-} ]]; then
  for c in "$ROOT/../shared" "$ROOT/../../shared"; do
    [[ -d $c/conformance ]] && { OPIE_SHARED=$(cd "$c" && pwd); break; }
  done
fi
SHARED=${OPIE_SHARED:-$ROOT/../shared}
OPIE=${OPIE:-${CARGO_TARGET_DIR:-$ROOT/target}/release/opie}

log() { echo "[$NAME] $*"; }
die() { echo "[$NAME] FAIL: $*" >&2; exit 1; }

# Builds the release binary if it is missing (test-all builds it first).
need_opie() {
  [[ -x $OPIE ]] || (cd "$ROOT" && cargo build --release -p opie) || die "cannot build opie"
}

TMP=$(mktemp -d "/tmp/opie-$NAME.XXXXXX")
_cleanups=()
on_exit() { _cleanups+=("$1"); }
_run_cleanups() {
  local rc=$? i
  for ((i = ${#_cleanups[@]} - 1; i >= 0; i--)); do
    eval "${_cleanups[i]}" || { ((rc)) || rc=1; }
  done
  if ((rc != 0)) && [[ -f $TMP/opie.log ]]; then
    echo "[$NAME] --- last lines of opie's log ---" >&2; tail -n 40 "$TMP/opie.log" >&2 || true
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap _run_cleanups EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# free_port: a TCP port nobody listens on at any address (checked with ss).
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 30000))
    [[ -z $(ss -Hltn "sport = :$p") ]] && { echo "$p"; return 0; }
  done
  die "no free port"
}

# wait_port HOST PORT [SECS]: until something accepts connections there.
wait_port() {
  local end=$((SECONDS + ${3:-20}))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    ((SECONDS < end)) || return 1
    [[ -z ${OPIE_PID:-} ]] || kill -0 "$OPIE_PID" 2>/dev/null || return 1
    sleep 0.1
  done
}

# opie_start CONFIG LISTEN...: runs opie isu serve in the background with the
# data dir $TMP/data, waits for every portal; sets OPIE_PID. Log: $TMP/opie.log.
opie_start() {
  local cfg=$1; shift
  local args=() l host port
  for l in "$@"; do args+=(--listen "$l"); done
  "$OPIE" isu serve --config "$cfg" --data-dir "$TMP/data" "${args[@]}" >>"$TMP/opie.log" 2>&1 &
  OPIE_PID=$!
  on_exit opie_stop
  for l in "$@"; do
    l=${l%%,*}; port=${l##*:}; host=${l%:*}; host=${host#[}; host=${host%]}
    wait_port "$host" "$port" 20 || die "opie did not start listening on $l"
  done
  log "opie (pid $OPIE_PID) serving on $*"
}

# opie_stop: SIGTERM, wait for a clean exit (status 0), else SIGKILL and fail.
opie_stop() {
  [[ -n ${OPIE_PID:-} ]] || return 0
  local pid=$OPIE_PID rc=0
  OPIE_PID=
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    echo "[$NAME] FAIL: opie did not exit within 15 s of SIGTERM" >&2; return 1
  fi
  wait "$pid" || rc=$?
  ((rc == 0)) || { echo "[$NAME] FAIL: opie exited with status $rc after SIGTERM" >&2; return 1; }
  log "opie exited cleanly on SIGTERM"
}

# write_config FILE IQN_BASE then "name size [key=value...]" lines on stdin.
write_config() {
  local file=$1 base=$2 name size kv
  { echo "[isu]"; echo "base_iqn = \"$base\""; echo 'nop_interval = "5s"'
    while read -r name size rest; do
      [[ -n $name ]] || continue
      echo; echo "[[disk]]"; echo "name = \"$name\""; echo "size = \"$size\""
      for kv in $rest; do echo "${kv%%=*} = ${kv#*=}"; done
    done; } >"$file"
}
