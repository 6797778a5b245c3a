# shellcheck shell=bash
# The judging of a libiscsi conformance run, shared by interop/conformance
# (the ISU) and interop/conformance-head (the head): the known failures of
# conformance-known-failures.txt, judge and run_suite. Needs lib.sh, $conf
# (the iscsi-conformance script), $known_file, and a function
# suite_alive RUN that dies when the daemon under test died; $conf_scope
# names what is under test ("isu" unless set; conformance-head sets "head").

# known KEY -> REGEX of the one reason the test may fail or skip with. Lines
# "Suite.Test | REGEX" apply to every run (KEY Suite.Test), lines
# "Suite.Test @BS | REGEX" only to the runs on BS-byte blocks (KEY
# Suite.Test@BS), lines "Suite.Test @SCOPE | REGEX" only to the runs of
# that scope (KEY Suite.Test@SCOPE, SCOPE a word: isu or head); blank lines
# and lines starting with # are skipped.
conf_scope=${conf_scope:-isu}
declare -A known=()
if [[ -f $known_file ]]; then
  while IFS= read -r line; do
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    [[ $line == *"|"* ]] || die "$known_file: no '| REGEX' in: $line"
    key=${line%%|*}; key=${key//[[:space:]]/}
    [[ $key =~ ^[A-Za-z0-9_]+\.[A-Za-z0-9_]+(@([0-9]+|isu|head))?$ ]] || die "$known_file: bad test name in: $line"
    re=${line#*|}; re=${re#"${re%%[![:space:]]*}"}; re=${re%"${re##*[![:space:]]}"}
    known[$key]=$re
  done <"$known_file"
fi

total_new=0 total_known=0
declare -A seen_bad=() ran_bs=()
# judge RUN BLOCK_SIZE TSV: classify every non-passing row.
judge() {
  local run=$1 bs=$2 tsv=$3 name result reason k listed matched n_pass=0 n_fail=0 n_skip=0 new=0 tol=0 allowed=0
  ran_bs[$bs]=1
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
    # The first of the test's lines (for this block size, this scope, every
    # run) whose reason matches; else the first that exists.
    listed= matched=
    for k in "$name@$bs" "$name@$conf_scope" "$name"; do
      [[ -n ${known[$k]:-} ]] || continue
      seen_bad[$k]=1 # not passing: none of its lines may go
      listed=${listed:-$k}
      if [[ $reason =~ ${known[$k]} ]]; then matched=$k; break; fi
    done
    if [[ -n $matched ]]; then
      tol=$((tol + 1)); echo "  known   $result $name: $reason"
    elif [[ -n $listed ]]; then
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
    # A line for another scope or an unrun block size says nothing here.
    [[ $key =~ @(isu|head)$ && $key != *"@$conf_scope" ]] && continue
    [[ $key =~ @([0-9]+)$ && -z ${ran_bs[${BASH_REMATCH[1]}]:-} ]] && continue
    [[ -n ${seen_bad[$key]:-} ]] || log "note: $key passes now; remove it from $(basename "$known_file")"
  done
}
