#!/usr/bin/env bash
# The whole GPU run in one command: benchmarks/gpu_suite.py (ROOT vs optax Muon: step,
# compile, memory, threshold, Newton-Schulz) and the LM comparison at GPU scale
# (python -m examples.lm.main --config configs/lm_gpu.py), each under its own time
# limit, then one Markdown report: printed, and written to OUT/report.md.
#
#   bash benchmarks/gpu_run.sh [OUT]          # one H100/H200: <= 10 min (OUT: runs/gpu_run)
#   bash benchmarks/gpu_run.sh --quick [OUT]  # the same on a CPU, tiny sizes (a smoke run)
#
# OUT holds report.md, suite.md, suite.log, lm.log and lm/ (table.md, curves.png,
# robustness.png, curves.csv, summary.csv). Environment: PYTHON (default python),
# JAX_PLATFORMS (default cuda; --quick: cpu), SUITE_TIMEOUT and LM_TIMEOUT (seconds),
# SUITE_FLAGS and LM_FLAGS (extra flags, e.g. LM_FLAGS="--config.steps 2000").
# Exit status: 0 when both parts finished, 1 otherwise (the report is written either way).
set -u
cd "$(dirname "$0")/.."

QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; shift; fi
OUT=${1:-runs/gpu_run}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"

# The repository's root_optax and examples, whether or not it is installed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$QUICK" = 1 ]; then
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
  SUITE_ARGS=(--quick)
  LM_ARGS=(--quick)
  : "${SUITE_TIMEOUT:=400}" "${LM_TIMEOUT:=400}"
else
  # On the GPU, or fail at once (JAX_PLATFORMS=cuda) rather than train for hours on the CPU.
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
  # The suite starts no process after 140 s (--budget) and stops any at 190 s (--time-limit).
  SUITE_ARGS=(--trees gpt-12x768 --budget 140 --time-limit 190)
  LM_ARGS=()
  : "${SUITE_TIMEOUT:=210}" "${LM_TIMEOUT:=390}"
fi
# The extra flags are split as a shell would (quotes group), e.g. LM_FLAGS="--config.only 'ROOT [none]'".
eval "SUITE_ARGS+=(${SUITE_FLAGS:-})"
eval "LM_ARGS+=(${LM_FLAGS:-})"

# run NAME TIMEOUT COMMAND...: runs COMMAND under TIMEOUT seconds, logs to OUT/NAME.log,
# and leaves its status, in words, in STATUS_NAME.
run() {
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "== $name: $* (time limit ${limit} s)" >&2
  timeout --kill-after=15 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  local took=$(( $(date +%s) - start ))
  case $rc in
    0) printf -v "STATUS_$name" "finished in %d s" "$took" ;;
    124|137) printf -v "STATUS_$name" "**stopped at its time limit** (%d s)" "$limit" ;;
    *) printf -v "STATUS_$name" "**failed** (exit status %d after %d s)" "$rc" "$took" ;;
  esac
  echo "== $name: $(eval echo "\$STATUS_$name")" >&2
  return $rc
}

STARTED=$(date -u +"%Y-%m-%d %H:%M UTC")
T0=$(date +%s)
OK=1
# The suite first: its budget bounds it, and its processes then have the device alone.
run suite "$SUITE_TIMEOUT" "$PYTHON" benchmarks/gpu_suite.py --out "$OUT/suite.md" "${SUITE_ARGS[@]}" || OK=0
run lm "$LM_TIMEOUT" "$PYTHON" -m examples.lm.main --config configs/lm_gpu.py --workdir "$OUT/lm" "${LM_ARGS[@]}" || OK=0
TOTAL=$(( $(date +%s) - T0 ))

GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
QUICK_FLAG=""; [ "$QUICK" = 1 ] && QUICK_FLAG=" --quick"
{
  echo "# GPU run: ROOT vs Muon${QUICK_FLAG:+ (--quick)}"
  echo
  echo "- Command: \`bash benchmarks/gpu_run.sh${QUICK_FLAG}\`; started $STARTED; ${TOTAL} s in all."
  echo "- Device: ${GPU:-no nvidia-smi}; JAX sees: $(grep -m1 -o '^Device: [^;]*' "$OUT/lm/table.md" 2>/dev/null | cut -c9- || true)"
  echo "- \`benchmarks/gpu_suite.py ${SUITE_ARGS[*]}\`: $STATUS_suite."
  echo "- \`python -m examples.lm.main --config configs/lm_gpu.py ${LM_ARGS[*]}\`: $STATUS_lm."
  echo
  echo "## Step, compile, memory, threshold and Newton-Schulz (benchmarks/gpu_suite.py)"
  echo
  if [ -s "$OUT/suite.md" ]; then
    cat "$OUT/suite.md"
  else
    echo "No table. The end of its log:"; echo; echo '```'; tail -n 20 "$OUT/suite.log"; echo '```'
  fi
  echo
  if [ -s "$OUT/lm/table.md" ]; then
    sed 's/^## /## LM: /; s/^### /### LM: /' "$OUT/lm/table.md"
    echo
    echo "Curves: \`$OUT/lm/curves.png\` (loss vs step per run), \`$OUT/lm/robustness.png\`."
  else
    echo "## LM (configs/lm_gpu.py)"
    echo
    echo "No table. The runs that finished, and the end of its log:"
    echo; echo '```'; grep -E '^\[[0-9]+/[0-9]+\]' "$OUT/lm.log"; tail -n 10 "$OUT/lm.log"; echo '```'
  fi
} >"$OUT/report.md"
cat "$OUT/report.md"
[ "$OK" = 1 ]
