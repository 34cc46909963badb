#!/usr/bin/env bash
# On-policy vs off-policy distillation vs cross-entropy on the logistics vertical (reports/onpolicy).
# Needs the quick-start tiny model, the nano-ce student and the logistics-tuned tiny teacher:
#   bash scripts/quickstart.sh && ember train --config configs/nano-ce.toml
#   ember data prepare-chat ... --out datasets/logistics-sft && ember train --config configs/logistics.toml
# Stage 1: every run starts from checkpoints/nano-ce/model (pre-trained on the corpus, never seen
# an answer) and trains STEPS steps of 16 rows with the same schedule. Stage 2: every run starts
# from stage 1's cross-entropy model (the student already answers in the format) and trains STEPS2
# more steps: the setting on-policy distillation is meant for (SFT first, then on-policy).
# Then `ember eval-chat` scores greedy answers on the 300 held-out records.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cargo_env.sh
STEPS=${STEPS:-150}
STEPS2=${STEPS2:-100}
BACKEND=${BACKEND:-cpu}
cargo build --locked --bin ember
E=$CARGO_TARGET_DIR/debug/ember
OUT=checkpoints/onpolicy-cmp
run() { # steps, name, command...
  local steps=$1 name=$2; shift 2
  local common=(--max-steps "$steps" --backend "$BACKEND" --set train.warmup_steps=10
        --set train.eval_every=$((steps / 2)) --set train.checkpoint_every=$((steps / 2)) --set train.log_every=10)
  [[ -f $OUT/$name/summary.json ]] || "$@" --out "$OUT/$name" "${common[@]}"
  [[ -f $OUT/$name/eval_chat.json ]] ||
    $E eval-chat --model "$OUT/$name/model" --data datasets/logistics/test.jsonl --backend "$BACKEND" --out "$OUT/$name/eval_chat.json"
  mkdir -p reports/onpolicy/$name
  for f in summary.json metrics.jsonl onpolicy.jsonl train_config.toml eval_chat.json; do
    [[ -f $OUT/$name/$f ]] && cp "$OUT/$name/$f" reports/onpolicy/$name/
  done
}
run "$STEPS" ce $E train --config configs/logistics.toml --set 'train.init_from="checkpoints/nano-ce/model"'
run "$STEPS" offline-kd $E distill --config configs/logistics-distill.toml
run "$STEPS" onpolicy-sampled-kl $E distill --config configs/logistics-onpolicy.toml
run "$STEPS" onpolicy-jsd $E distill --config configs/logistics-onpolicy.toml --set onpolicy.objective=distribution
run "$STEPS" onpolicy-mix $E distill --config configs/logistics-onpolicy.toml --set onpolicy.lambda=0.5
SFT="train.init_from=\"$OUT/ce/model\""
run "$STEPS2" sft-then-ce $E train --config configs/logistics.toml --set "$SFT"
run "$STEPS2" sft-then-offline-kd $E distill --config configs/logistics-distill.toml --set "$SFT"
run "$STEPS2" sft-then-onpolicy-sampled-kl $E distill --config configs/logistics-onpolicy.toml --set "$SFT"
run "$STEPS2" sft-then-onpolicy-jsd $E distill --config configs/logistics-onpolicy.toml --set "$SFT" --set onpolicy.objective=distribution
# diagnostics: a 10x lower learning rate for the sampled objective, and GKD's mix (half the
# micro-batches offline JSD on the dataset's answers)
run "$STEPS2" sft-then-onpolicy-sampled-kl-lr2e-4 $E distill --config configs/logistics-onpolicy.toml --set "$SFT" \
  --set train.lr=2e-4 --set train.min_lr=2e-5
run "$STEPS2" sft-then-onpolicy-jsd-t0.7-lr2e-4 $E distill --config configs/logistics-onpolicy.toml --set "$SFT" \
  --set onpolicy.objective=distribution --set onpolicy.temperature=0.7 --set train.lr=2e-4 --set train.min_lr=2e-5
run "$STEPS2" sft-then-onpolicy-mix $E distill --config configs/logistics-onpolicy.toml --set "$SFT" --set onpolicy.lambda=0.5
python3 scripts/onpolicy_report.py reports/onpolicy
