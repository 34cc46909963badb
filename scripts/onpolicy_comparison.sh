#!/usr/bin/env bash
# On-policy vs off-policy distillation vs cross-entropy on the logistics vertical (reports/onpolicy).
# Needs the quick-start tiny model, the nano-ce student and the logistics-tuned tiny teacher:
#   bash scripts/quickstart.sh && ember train --config configs/nano-ce.toml
#   ember data prepare-chat ... --out datasets/logistics-sft && ember train --config configs/logistics.toml
# Every run starts from checkpoints/nano-ce/model and trains STEPS steps of 16 rows with the same
# schedule; then `ember eval-chat` scores greedy answers on the 300 held-out records.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cargo_env.sh
STEPS=${STEPS:-150}
BACKEND=${BACKEND:-cpu}
cargo build --locked --bin ember
E=$CARGO_TARGET_DIR/debug/ember
OUT=checkpoints/onpolicy-cmp
common=(--max-steps "$STEPS" --backend "$BACKEND" --set train.warmup_steps=10
        --set train.eval_every=$((STEPS / 3)) --set train.checkpoint_every=$((STEPS / 3)) --set train.log_every=10)
run() { # name, command...
  local name=$1; shift
  [[ -f $OUT/$name/summary.json ]] || "$@" --out "$OUT/$name" "${common[@]}"
  [[ -f $OUT/$name/eval_chat.json ]] ||
    $E eval-chat --model "$OUT/$name/model" --data datasets/logistics/test.jsonl --backend "$BACKEND" --out "$OUT/$name/eval_chat.json"
  mkdir -p reports/onpolicy/$name
  for f in summary.json metrics.jsonl onpolicy.jsonl train_config.toml eval_chat.json; do
    [[ -f $OUT/$name/$f ]] && cp "$OUT/$name/$f" reports/onpolicy/$name/
  done
}
run ce $E train --config configs/logistics.toml --set 'train.init_from="checkpoints/nano-ce/model"'
run offline-kd $E distill --config configs/logistics-distill.toml
run onpolicy-sampled-kl $E distill --config configs/logistics-onpolicy.toml
run onpolicy-jsd $E distill --config configs/logistics-onpolicy.toml --set onpolicy.objective=distribution
run onpolicy-mix $E distill --config configs/logistics-onpolicy.toml --set onpolicy.lambda=0.5
python3 scripts/onpolicy_report.py reports/onpolicy
