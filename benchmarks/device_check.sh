#!/usr/bin/env bash
# One device check, under 8 minutes on one GPU: the device-relevant tests on CUDA (the device-parametrised tests
# run their cuda cases; fixtures, core, editing, compile, bf16), then sampling throughput (benchmarks/device_check.py):
# RAR-B … XXL img/s (batch 128; fp32/bf16; eager/compiled) beside RAR Table 5, RandAR-L 88 vs 256 steps.
# Writes one JSON: $OUT/device_check.json (or ./device_check.json), with the test summary in it.
#
#   bash benchmarks/device_check.sh            # on a GPU machine
#   bash benchmarks/device_check.sh --smoke    # on a CPU: the device tests + tiny models (a few minutes)
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=""
[[ "${1:-}" == "--smoke" ]] && SMOKE="--smoke"
DEST="${OUT:-.}"
mkdir -p "$DEST"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)

if [[ -n "$SMOKE" ]]; then
  TESTS=(tests/test_device.py)
  TEST_LIMIT=300
else  # the tests with CUDA cases, the official fixtures, the core and editing (the rest is CPU-only work)
  TESTS=(tests/test_device.py tests/test_bf16.py tests/test_compile.py tests/test_rar_fixtures.py
         tests/test_randar_fixtures.py tests/test_core.py tests/test_editing.py)
  TEST_LIMIT=180
  export ANYORDER_COMPILE_BACKEND=aot_eager  # graph capture in the tests; inductor + CUDA graphs in the timings
fi
timeout "$TEST_LIMIT" python3 -m pytest -q -p no:cacheprovider -x "${TESTS[@]}" --junitxml="$DEST/device_check_tests.xml" \
  > "$DEST/device_check_tests.log" 2>&1
test_rc=$?
tail -3 "$DEST/device_check_tests.log"

left=$(( 450 - ($(date +%s) - start) ))
python3 benchmarks/device_check.py $SMOKE --budget-s $(( left > 90 ? left - 90 : 30 )) --json "$DEST/device_check.bench.json"
bench_rc=$?

python3 - "$DEST" "$test_rc" "$bench_rc" "$(( $(date +%s) - start ))" <<'PY'
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
bench = json.loads((dest / "device_check.bench.json").read_text()) if bench_rc == 0 else {"exit_code": bench_rc}
out = {"tests": tests, **bench, "wall_seconds": seconds}
(dest / "device_check.json").write_text(json.dumps(out, indent=1))
print(f"wrote {dest / 'device_check.json'} (tests: {tests}, {seconds} s)")
PY
