#!/usr/bin/env bash
# Logits format v1 vs v2/v3 settings on one teacher, one run: bytes/token, the v2/v3 encoding error
# and the validation perplexity of a nano student distilled from each (configs/distill-tiny.toml,
# 150 steps x 16 x 256 tokens, forward KL over the top-64 + tail, CE weight 0.5).
# Usage: bash scripts/logits_formats.sh [teacher dir, default checkpoints/tiny/model] [out dir]
# Needs the quick start's dataset (bash scripts/quickstart.sh). Writes <out>/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cargo_env.sh
# EMBER=<binary> uses a build already made (e.g. the test profile's $CARGO_TARGET_DIR/debug/ember)
if [[ -z ${EMBER:-} ]]; then
  cargo build --locked --bin ember   # the dev profile is optimized (Cargo.toml)
  EMBER=$CARGO_TARGET_DIR/debug/ember
fi
TEACHER=${1:-checkpoints/tiny/model}
OUT=${2:-reports/logits-formats}
mkdir -p "$OUT"
L=$OUT/logits
$EMBER record --teacher "$TEACHER" --data datasets/default --split train --top-k 64 --max-rows 2400 \
  --format v1 --out "$L/v1-train"
$EMBER record --teacher "$TEACHER" --data datasets/default --split validation --top-k 64 \
  --format v1 --out "$L/v1-validation"
# name: convert arguments (v1 is the recording itself)
# (adaptive k: --mass keeps the fewest entries per position whose mass reaches it; it pays on
# peaked teachers)
declare -A SETTINGS=(
  [v2-step1_16]="--format v2 --logprob-step 0.0625"
  [v2-step1_8]="--format v2 --logprob-step 0.125"
  [v2-step1_4]="--format v2 --logprob-step 0.25"
  [v2-step1_8-mass0.99]="--format v2 --logprob-step 0.125 --mass 0.99"
  [v2-step1_8-mass0.9]="--format v2 --logprob-step 0.125 --mass 0.9"
  [v2-step1_8-mass0.5]="--format v2 --logprob-step 0.125 --mass 0.5"
  [v3-step1_16]="--format v3 --logprob-step 0.0625"
  [v3-step1_8]="--format v3 --logprob-step 0.125"
  [v3-step1_8-mass0.5]="--format v3 --logprob-step 0.125 --mass 0.5"
)
# EMBER_LOGITS_SETTINGS="v2-step1_8 v2-step1_8-mass0.9" runs only those settings
if [[ -n ${EMBER_LOGITS_SETTINGS:-} ]]; then
  for name in "${!SETTINGS[@]}"; do
    [[ " $EMBER_LOGITS_SETTINGS " == *" $name "* ]] || unset "SETTINGS[$name]"
  done
fi
for name in "${!SETTINGS[@]}"; do
  [[ -f $L/$name/logits.json ]] ||
    $EMBER logits convert --from "$L/v1-train" --out "$L/$name" ${SETTINGS[$name]}
done
distill() { # name logits-dir seed
  [[ -f $OUT/runs/$1/summary.json ]] ||
    $EMBER distill --config configs/distill-tiny.toml --out "$OUT/runs/$1" \
      --set "teacher.logits=\"$2\"" --set "teacher.validation_logits=\"$L/v1-validation\"" \
      --set distill.ce_weight=0.5 --set "train.seed=$3" > "$OUT/runs/$1.log" 2>&1
}
mkdir -p "$OUT/runs"
distill v1 "$L/v1-train" 42
distill v1-seed43 "$L/v1-train" 43
distill v1-seed44 "$L/v1-train" 44
for name in "${!SETTINGS[@]}"; do distill "$name" "$L/$name" 42; done
"${EMBER_PYTHON:-python3}" - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = []
for name in sorted(os.listdir(os.path.join(out, "runs"))):
    s = os.path.join(out, "runs", name, "summary.json")
    if not os.path.isfile(s):
        continue
    summ = json.load(open(s))
    rec = "v1-train" if name.startswith("v1") else name
    m = json.load(open(os.path.join(out, "logits", rec, "logits.json")))
    e = m["details"].get("codec_error") or {}
    f = lambda k, fmt: format(e[k], fmt) if k in e else "-"
    kd = summ.get("validation_kd") or {}
    rows.append(f"| {name} | {m['bytes_per_token']:.1f} | {f('mean_entries', '.1f')} | {f('kl_mean', '.2e')} | "
                f"{f('kl_p99', '.2e')} | {f('tail_error_mean', '.1e')} | {summ['validation']['perplexity']:.2f} | "
                f"{kd.get('kl', float('nan')):.4f} |")
table = ("| recording | bytes/token | entries/position | KL mean | KL p99 | tail error | student val ppl | student KL to teacher |\n"
         "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
open(os.path.join(out, "table.md"), "w").write(table)
print(table)
PY
