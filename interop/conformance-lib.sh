# shellcheck shell=bash
# The judging of a libiscsi conformance run, shared by interop/conformance
# (the ISU) and interop/conformance-head (the head): the known failures of
# conformance-known-failures.txt, judge and run_suite. Needs lib.sh, $conf
# (the iscsi-conformance script), $known_file, and a function
# suite_alive RUN that dies when the daemon under test died.

# known KEY -> REGEX of the one reason the test may fail or skip with. Lines
# "Suite.Test | REGEX" apply to every run (KEY Suite.Test), lines
# "Suite.Test @BS | REGEX" only to the runs on BS-byte blocks (KEY
# Suite.Test@BS); blank lines and lines starting with # are skipped.
declare -A known=()
if [[ -f $known_file ]]; then
  while IFS= read -r line; do
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    [[ $line == *"|"* ]] || die "$known_file: no '| REGEX' in: $line"
    key=${line%%|*}; key=${key//[[:space:]]/}
    [[ $key =~ ^[A-Za-z0-9_]+\.[A-Za-z0-9_]+(@[0-9]+)?$ ]] || die "$known_file: bad test name in: $line"
    re=${line#*|}; re=${re#"${re%%[![:space:]]*}"}; re=${re%"${re##*[![:space:]]}"}
    known[$key]=$re
  done <"$known_file"
fi

total_new=0 total_known=0
declare -A seen_bad=()
# judge RUN BLOCK_SIZE TSV: classify every non-passing row.
judge() {
  local run=$1 bs=$2 tsv=$3 name result reason key n_pass=0 n_fail=0 n_skip=0 new=0 tol=0 allowed=0
  while IFS=$'\t' read -r name result reason; do
    case $result in
      passed) n_pass=$((n_pass + 1)); continue ;;
      FAILED) n_fail=$((n_fail + 1)) ;;
      SKIPPED)
        n_skip=$((n_skip + 1))
        if [[ $reason =~ [Rr]emovable || ( $run == rw* && $reason =~ [Ww]rite.?[Pp]rotect ) ]]; then
          allowed=$((allowed + 1)); continue
        fi ;;
    esac
    key=$name@$bs
    [[ -n ${known[$key]:-} ]] || key=$name
    seen_bad[$key]=1
    if [[ -n ${known[$key]:-} && $reason =~ ${known[$key]} ]]; then
      tol=$((tol + 1)); echo "  known   $result $name: $reason"
    elif [[ -n ${known[$key]:-} ]]; then
      new=$((new + 1)); echo "  NEW     $result $name (listed, but not for this reason): $reason"
    else
      new=$((new + 1)); echo "  NEW     $result $name: $reason"
    fi
  done <"$tsv"
  log "$run ($bs-byte blocks): $n_pass passed, $n_fail failed, $n_skip skipped ($allowed allowed: removable media, not write-protected); $tol known problems, $new new"
  total_new=$((total_new + new)); total_known=$((total_known + tol))
}

# A test without a verdict (the suite died or hung in it) is a failure like
# any other: the shared script no longer leaves the last test of a run
# without one.
run_suite() { # RUN BLOCK_SIZE FAMILY [--sanitize] URL...
  local run=$1 bs=$2 fam=$3 rc=0; shift 3
  log "$run: iscsi-conformance --family $fam $*"
  "$conf" --timeout 1500 --family "$fam" --list-file "$TMP/$run.tsv" "$@" | tee "$TMP/$run.out" || rc=$?
  if ((rc == 2)) || [[ ! -s $TMP/$run.tsv ]]; then
    die "$run: the conformance suite could not run (exit $rc)"
  fi
  judge "$run" "$bs" "$TMP/$run.tsv"
  suite_alive "$run"
}

# report_unseen_known: notes the listed problems that did not show up.
report_unseen_known() {
  local key
  for key in "${!known[@]}"; do
    [[ -n ${seen_bad[$key]:-} ]] || log "note: $key passes now; remove it from $(basename "$known_file")"
  done
}
