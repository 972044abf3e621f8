#!/usr/bin/env bash
# One prepared check for a GPU or TPU machine: the verification catalogue, the test
# suite and the benchmark, in under 8 minutes, with JSON results in $OUT
# (./device_results when OUT is unset).
#
#   PYTHONPATH=. bash scripts/device_check.sh           # on the accelerator machine
#   PYTHONPATH=. bash scripts/device_check.sh --quick   # the script's logic, seconds, any machine
#
# Needs JAX (with CUDA on a GPU), optax, numpy and pytest; installs nothing. Tests that
# need hypothesis are skipped when it is missing. Each step has its own time limit and a
# failing step does not stop the next; summary.json records each step's exit status
# (124 = hit its time limit). Verification and tests run at float32 matmul precision
# "highest" (a GPU uses TF32 otherwise); the benchmark does too, so its figures are
# float32 figures.
set -u

QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; fi

OUT="${OUT:-./device_results}"
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:-.}"
export JAX_DEFAULT_MATMUL_PRECISION=highest
PY="${PYTHON:-python}"

if [ "$QUICK" = 1 ]; then
    LIMIT_VERIFY=120 LIMIT_TESTS=120 LIMIT_BENCH=120
    TESTS=(tests/test_equations.py tests/test_bench.py)
    BENCH_ARGS=(--quick --configs small,nielsen)
else
    # 30 + 110 + 170 + 140 s of limits, plus start-up, stays under 8 minutes.
    LIMIT_VERIFY=110 LIMIT_TESTS=170 LIMIT_BENCH=140
    TESTS=(tests)
    BENCH_ARGS=(--budget 3)
fi

STEPS=()
run_step() {  # run_step NAME LIMIT_S COMMAND...: log to $OUT/NAME.log, record status and time
    local name=$1 limit=$2
    shift 2
    local command="$*"
    echo "== $name (limit ${limit}s): ${command:0:160}"
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    local took=$((SECONDS - start))
    echo "   exit $rc after ${took}s; last lines:"
    tail -n 5 "$OUT/$name.log" | sed 's/^/   | /'
    STEPS+=("\"$name\": {\"rc\": $rc, \"seconds\": $took}")
}

run_step environment 30 "$PY" -c '
import json, os, sys, jax
d = jax.devices()
json.dump({"backend": jax.default_backend(), "devices": [str(x) for x in d],
           "device_kind": d[0].device_kind, "jax": jax.__version__,
           "matmul_precision": str(jax.config.jax_default_matmul_precision),
           "cpu_count": os.cpu_count(), "loadavg": os.getloadavg()},
          open(sys.argv[1], "w"), indent=1)
print(open(sys.argv[1]).read())
' "$OUT/environment.json"

# The catalogue: `verify` of the command line. If the command line or the subcommand is
# missing or fails, the log says so and the script goes on.
run_step verify "$LIMIT_VERIFY" "$PY" -m manualbp.tools.cli verify --json "$OUT/verify.json"

IGNORE=()
if ! "$PY" -c 'import hypothesis' 2>/dev/null; then
    IGNORE+=(-p no:hypothesispytest)  # its pytest plugin, should a broken copy be around
    for f in $(grep -l -E '^(import|from) hypothesis' tests/*.py 2>/dev/null); do
        IGNORE+=("--ignore=$f")
    done
    echo "hypothesis is missing: skipping ${IGNORE[*]:-nothing}"
fi
run_step tests "$LIMIT_TESTS" "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" \
    "${IGNORE[@]}" --junitxml="$OUT/tests.xml"

run_step bench "$LIMIT_BENCH" "$PY" scripts/bench.py "${BENCH_ARGS[@]}" \
    --json "$OUT/bench.json" --markdown "$OUT/bench.md"

{
    printf '{\n "quick": %s,\n "ignored_tests": "%s",\n "steps": {\n  ' \
        "$([ "$QUICK" = 1 ] && echo true || echo false)" "${IGNORE[*]:-}"
    (IFS=','; printf '%s' "${STEPS[*]}" | sed 's/,"/,\n  "/g')
    printf '\n }\n}\n'
} >"$OUT/summary.json"
echo "== summary ($OUT/summary.json)"
cat "$OUT/summary.json"
