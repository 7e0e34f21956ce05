#!/usr/bin/env bash
# The papers' evaluation protocol on the bundled digits, with the digit judge in place of Inception:
# 1,000 class-balanced samples per model (ADM npz), scored with `anyorder eval --features judge` against
# the 500 test digits; RandAR at 49 / 17 / 8 / 4 parallel-decoding steps; the training split as the floor.
#
# Needs the two demo runs (each ~8 min on an idle 2-core machine):
#   anyorder demo --model rar    --out runs/demo_rar    --threads 1
#   anyorder demo --model randar --out runs/demo_randar --threads 1
# Usage: bash benchmarks/eval_digits.sh [RUNS_DIR (default runs)] [NUM_SAMPLES (default 1000)] [STAGE ...]
#   stages: refs (needs only runs/demo_rar/judge), rar, randar, unguided, seeds, table (default: all, in order)
# Writes RUNS_DIR/eval_digits/*.npz, *_metrics.json and $JSON_OUT (default docs/eval_digits.json, the table in
# docs/EVALUATION.md). Every sample file is made with `--protocol anyorder` (class-balanced labels,
# float32, rounded to uint8): the protocol these numbers were made with before each family got its
# paper's protocol (issue 21: RAR truncates; RandAR draws random labels and samples with bf16 weights).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
N=${2:-1000}
shift $(( $# < 2 ? $# : 2 ))
STAGES=${*:-refs rar randar unguided seeds table}
OUT=$RUNS/eval_digits
JSON_OUT=${JSON_OUT:-docs/eval_digits.json}
JUDGE=$RUNS/demo_rar   # one judge scores everything (a reference records its judge's hash)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"

score() {  # score NAME: $OUT/NAME.npz against the test split
  anyorder eval "$OUT/$1.npz" --ref "$OUT/ref_test.npz" --features judge --judge "$JUDGE" --device cpu \
    --out "$OUT/$1_metrics.json" --quiet
}

need_run() {
  [ -f "$RUNS/$1/model/config.json" ] || { echo "missing $RUNS/$1/model: run anyorder demo first" >&2; exit 1; }
}

for stage in $STAGES; do
  case $stage in
  refs)  # reference: the 500 test digits; the floor: the 4,500 training digits, and N of them (the samples' size)
    anyorder eval --make-ref digits:test --features judge --judge "$JUDGE" --device cpu --out "$OUT/ref_test.npz" \
      --quiet
    anyorder eval --make-ref digits:train --features judge --judge "$JUDGE" --device cpu \
      --out "$OUT/train_all.npz" --quiet
    python3 - "$OUT" "$N" <<'EOF'
import sys
import numpy as np
from anyorder.io.npz import read_samples, write_samples
out, n = sys.argv[1], int(sys.argv[2])
images, labels = read_samples(f"{out}/train_all.npz")
keep = np.sort(np.random.default_rng(0).permutation(len(images))[:n])
write_samples(f"{out}/train_{n}.npz", images[keep], labels[keep])
EOF
    score train_all
    score "train_$N"
    ;;
  rar)  # the demo's sampling settings (guidance 3, constant), spelled out: runs made before the demo recorded
        # them in model/config.json would otherwise sample with the family's defaults (no guidance)
    need_run demo_rar
    anyorder sample --model "$RUNS/demo_rar" --num-samples "$N" --npz "$OUT/rar.npz" --batch-size 100 --seed 0 \
      --guidance-scale 3 --guidance-power 0 --temperature 1 --protocol anyorder --device cpu --quiet
    score rar
    ;;
  randar)  # the demo's settings (guidance linear from 1 to 3, spelled out as above) at 49 / 17 / 8 / 4 steps
    need_run demo_randar
    for steps in 49 17 8 4; do
      anyorder sample --model "$RUNS/demo_randar" --steps "$steps" --num-samples "$N" \
        --npz "$OUT/randar_${steps}.npz" --batch-size 100 --seed 0 \
        --guidance-scale 3 --guidance-start 1 --temperature 1 --top-k 0 --top-p 1 \
        --protocol anyorder --device cpu --quiet
      score "randar_$steps"
    done
    ;;
  unguided)  # the same runs without guidance (scale 1), RandAR one token per step
    need_run demo_rar
    need_run demo_randar
    anyorder sample --model "$RUNS/demo_rar" --num-samples "$N" --npz "$OUT/rar_unguided.npz" --batch-size 100 \
      --seed 0 --guidance-scale 1 --temperature 1 --protocol anyorder --device cpu --quiet
    score rar_unguided
    anyorder sample --model "$RUNS/demo_randar" --steps 49 --num-samples "$N" --npz "$OUT/randar_49_unguided.npz" \
      --batch-size 100 --seed 0 --guidance-scale 1 --temperature 1 --top-k 0 --top-p 1 \
        --protocol anyorder --device cpu --quiet
    score randar_49_unguided
    ;;
  seeds)  # seed-to-seed spread: RandAR at 49 and 17 steps with seeds 1 and 2
    need_run demo_randar
    for seed in 1 2; do
      for steps in 49 17; do
        anyorder sample --model "$RUNS/demo_randar" --steps "$steps" --num-samples "$N" \
          --npz "$OUT/seed${seed}_randar_${steps}.npz" --batch-size 100 --seed "$seed" \
          --guidance-scale 3 --guidance-start 1 --temperature 1 --top-k 0 --top-p 1 \
        --protocol anyorder --device cpu --quiet
        score "seed${seed}_randar_${steps}"
      done
    done
    ;;
  table)
    python3 - "$OUT" "$JSON_OUT" train_all "train_$N" rar randar_49 randar_17 randar_8 randar_4 \
      rar_unguided randar_49_unguided seed1_randar_49 seed1_randar_17 seed2_randar_49 seed2_randar_17 <<'EOF'
import json
import sys
from pathlib import Path
out, json_out, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
rows = {}
for name in names:
    m = json.loads((out / f"{name}_metrics.json").read_text())
    row = {k: m.get(k) for k in ("num_samples", "num_reference", "fid", "judge_accuracy", "inception_score",
                                 "precision", "recall")}
    meta = out / f"{name}.json"
    s = json.loads(meta.read_text()) if meta.is_file() else {}
    if "sampling" in s:  # a sampled npz: its settings and speed
        row["sampling"] = {**s["sampling"], "seed": s["seed"], "batch_size": s["batch_size"]}
        row["images_per_s"] = s["this_run"]["images_per_s"]
    rows[name] = row
doc = {"protocol": "anyorder eval --features judge (the digit judge's 32-d features for FID / precision / recall, "
                   "its class probabilities for IS and accuracy) against the 500 test digits; "
                   "see docs/EVALUATION.md and benchmarks/eval_digits.sh",
       "judge_sha256": json.loads((out / f"{names[0]}_metrics.json").read_text()).get("judge_sha256"),
       "results": rows}
json_out.write_text(json.dumps(doc, indent=2) + "\n")
print(f"{'':18} {'n':>5} {'FID':>8} {'acc':>6} {'IS':>6} {'prec':>6} {'recall':>6}")
for name, r in rows.items():
    print(f"{name:18} {r['num_samples']:5d} {r['fid']:8.2f} {r['judge_accuracy']:6.3f} {r['inception_score']:6.2f} "
          f"{r['precision']:6.3f} {r['recall']:6.3f}")
EOF
    ;;
  *) echo "unknown stage $stage (refs, rar, randar, unguided, seeds, table)" >&2; exit 2 ;;
  esac
done
