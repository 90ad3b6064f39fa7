#!/usr/bin/env bash
# Run the test suite and the fused-head, map and loss benchmarks on a CUDA machine, within
# a time budget, and keep every log and JSON under $OUT_DIR.
#
#   bash benchmarks/gpu.sh [BUDGET_SECONDS]      # default 480 (8 minutes)
#
# From the repository root; softmaxkit need not be installed (PYTHONPATH=src). Steps, each
# under `timeout` so that the whole run ends within the budget:
#   1. the environment (torch, CUDA, GPU) -> env.txt
#   2. the test suite, fast subset (-m "not slow"), with the contract harness's CUDA device
#      parameter active (tests/contract first, so the CUDA runs come early) -> pytest.log,
#      pytest.xml; at most PYTEST_SHARE % of the budget (default 45)
#   3. `softmaxkit bench --quick --device cuda` on the fused head (with memory: peak
#      torch.cuda.max_memory_allocated in a child per implementation), then the maps and
#      the losses (timings only: a memory child per implementation costs a CUDA start-up
#      each) -> bench-heads.json, bench-maps.json, bench-losses.json and their logs
# summary.txt lists each step's exit status and time (124 or 130: stopped by its timeout,
# 137: killed 5 s after that).
#
# Environment: OUT_DIR (default benchmarks/results/gpu), PYTEST_SHARE (default 45),
# PYTEST_ARGS (default: -q -m "not slow" --maxfail=25 -p no:cacheprovider -rfE),
# TESTS (default "tests/contract tests"), DEVICE (default cuda; cpu runs the same steps on
# a machine without a GPU, to try the script), FULL=1 to bench every map and loss case instead of the issue-15 subset below
# (StableMax, clipped softmax, the torch.softmax reference row, StableMax cross-entropy,
# Z-loss; with the torch.compile(naive) peer, each compiles for tens of seconds).
set -u
cd "$(dirname "$0")/.."
BUDGET=${1:-480}
OUT_DIR=${OUT_DIR:-benchmarks/results/gpu}
PYTEST_SHARE=${PYTEST_SHARE:-45}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"

left() { echo $((DEADLINE - $(date +%s))); }

step() {  # step NAME SECONDS COMMAND...: run under timeout, log, record status
    local name=$1 limit=$2
    shift 2
    if [ "$limit" -lt 10 ]; then
        echo "$name: skipped (budget spent)" | tee -a "$SUMMARY"
        return
    fi
    local t0=$(date +%s)
    # SIGINT first (pytest then writes its summary and pytest.xml), SIGKILL 5 s later
    timeout --signal=INT --kill-after=5 $((limit - 5)) "$@" > "$OUT_DIR/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $(($(date +%s) - t0)) s (limit $limit s)" | tee -a "$SUMMARY"
}

python - > "$OUT_DIR/env.txt" 2>&1 <<'EOF'
import platform
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "python", platform.python_version())
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
EOF
cat "$OUT_DIR/env.txt"
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cuda ]; then
    python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
        echo "CUDA is not available: nothing to do" | tee -a "$SUMMARY"
        exit 1
    }
fi

# 2. tests: the CUDA parameter is active because torch.cuda.is_available()
PYTEST_ARGS=${PYTEST_ARGS:-'-q -m "not slow" --maxfail=25 -p no:cacheprovider -rfE'}
eval "set -- $PYTEST_ARGS"
step pytest $((BUDGET * PYTEST_SHARE / 100)) \
    python -m pytest "$@" --junitxml="$OUT_DIR/pytest.xml" ${TESTS:-tests/contract tests}
tail -n 30 "$OUT_DIR/pytest.log"

# 3. benchmarks on CUDA
bench() {  # bench NAME SECONDS ARGS...
    local name=$1 limit=$2
    shift 2
    step "bench-$name" "$limit" python -m softmaxkit.cli.main bench --quick --device "$DEVICE" \
        --out "$OUT_DIR/bench-$name.json" "$@"
}
if [ "${FULL:-0}" = 1 ]; then
    MAPS=(-k two_pass -k stablemax/ -k clipped_softmax/ -k topk_softmax
          -k reference -k sparsemax -k entmax)
    LOSSES=(-k 8192x32000 -k 4096x8192)
else
    MAPS=(-k stablemax/1024 -k clipped_softmax/1024 -k reference)
    LOSSES=(-k stablemax_cross_entropy/ -k z_loss)
fi
bench heads $(( $(left) * 45 / 100 )) -k linear_cross_entropy
bench maps $(( $(left) / 2 )) --no-memory "${MAPS[@]}"
bench losses $(( $(left) - 2 )) --no-memory "${LOSSES[@]}"
for f in "$OUT_DIR"/bench-*.log; do
    [ -e "$f" ] || continue
    echo "== $f"
    grep -v '^\[' "$f" | tail -n 25
done
echo "total: $(($(date +%s) - START)) s of $BUDGET s" | tee -a "$SUMMARY"
