#!/usr/bin/env bash
# The first GPU run, in order (docs/GPU.md says why this order), in under 8 minutes on one GPU:
#   0. preflight: the project's Python imports torch and anyorder and sees CUDA (else stop: nothing else can run);
#   1. the CUDA cases of the device-parametrised tests (the CPU cases run everywhere else): host syncs while
#      sampling, eager = static = compiled for a seed, a CPU generator feeding the GPU, bf16 (logits, KV-cache
#      decoding, FSDP), Flash for the parallel steps, TF32 in the CLI, the compiled step, training and resuming;
#   2. sampling throughput (benchmarks/device_check.py, each configuration in its own process): RAR-B … XXL img/s
#      (batch 128; fp32/bf16; eager/compiled) beside RAR Table 5, RandAR-L 88 vs 256 steps, LPD-L/XL at their
#      release policy (bf16, 20 steps, locality orders; batch 1 latency and batch 64 img/s, warm-up then 5 timed
#      runs) beside the LPD README's A100 figures, peak memory per row.
# Writes $OUT/device_check.json (or ./device_check.json) with both stages' results, and the logs beside it.
# Exits non-zero, saying which stage failed, when any stage fails.
#
#   bash benchmarks/device_check.sh            # on a GPU machine
#   bash benchmarks/device_check.sh --smoke    # on a CPU: the CPU cases of the same tests + tiny models
#
# Python: $PYTHON if set, else the project's .venv/bin/python if present, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=""
[[ "${1:-}" == "--smoke" ]] && SMOKE="--smoke"
DEST="${OUT:-.}"
mkdir -p "$DEST"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi
BUDGET=450  # seconds for stages 1 and 2 together
start=$(date +%s)
fail() { echo "device_check: FAILED: $*" >&2; }

# 0. preflight: one clear failure instead of a ModuleNotFoundError per stage
if ! "$PY" - "$SMOKE" <<'PY'
import sys
import torch
import anyorder
cuda = torch.cuda.is_available()
print(f"python {sys.executable}, torch {torch.__version__} (CUDA {torch.version.cuda}), anyorder from "
      f"{anyorder.__file__}, GPU: {torch.cuda.get_device_name(0) if cuda else 'none'}")
if not cuda and sys.argv[1] != "--smoke":
    sys.exit("no CUDA device visible: run with --smoke on a CPU")
PY
then
  fail "preflight ($PY cannot import torch and anyorder, or sees no CUDA device; set PYTHON=...)"
  exit 2
fi

# 1. the device-parametrised tests: their cuda cases on a GPU, their cpu cases under --smoke
TESTS=(tests/test_cuda_paths.py tests/test_device.py tests/test_bf16.py tests/test_compile.py)
if [[ -n "$SMOKE" ]]; then SELECT="cpu"; TEST_LIMIT=300
else SELECT="cuda"; TEST_LIMIT=180
  export ANYORDER_COMPILE_BACKEND=aot_eager  # graph capture in the tests; inductor + CUDA graphs in the timings
fi
test_rc=0
timeout "$TEST_LIMIT" "$PY" -m pytest -v -p no:cacheprovider -k "$SELECT" "${TESTS[@]}" \
  --junitxml="$DEST/device_check_tests.xml" > "$DEST/device_check_tests.log" 2>&1 || test_rc=$?
tail -3 "$DEST/device_check_tests.log"
[[ $test_rc -eq 0 ]] || fail "tests (exit $test_rc$([[ $test_rc -eq 124 ]] && echo ', timed out'); see $DEST/device_check_tests.log)"

# 2. the timings, each configuration in its own process, inside what is left of the budget
left=$(( BUDGET - ($(date +%s) - start) ))
bench_rc=0
"$PY" benchmarks/device_check.py $SMOKE --budget-s $(( left > 120 ? left : 120 )) \
  --json "$DEST/device_check.bench.json" 2> >(tee "$DEST/device_check_bench.log" >&2) || bench_rc=$?
[[ $bench_rc -eq 0 ]] || fail "benchmark (exit $bench_rc; see $DEST/device_check_bench.log and 'failed' in the JSON)"

"$PY" - "$DEST" "$test_rc" "$bench_rc" "$(( $(date +%s) - start ))" <<'PY'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
dest, test_rc, bench_rc, seconds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tests = {"exit_code": test_rc, "timed_out": test_rc == 124}
try:
    suite = ET.parse(dest / "device_check_tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    tests.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
except (OSError, ET.ParseError):
    pass
bench_file = dest / "device_check.bench.json"
bench = json.loads(bench_file.read_text()) if bench_file.is_file() else {}
out = {"tests": tests, **bench, "bench_exit_code": bench_rc, "wall_seconds": seconds}
(dest / "device_check.json").write_text(json.dumps(out, indent=1))
print(f"wrote {dest / 'device_check.json'} (tests: {tests}, {seconds} s)")
PY

if [[ $test_rc -ne 0 || $bench_rc -ne 0 ]]; then
  fail "tests exit $test_rc, benchmark exit $bench_rc"
  exit 1
fi
echo "device_check: all stages passed"
