#!/usr/bin/env bash
# The main job on a small default, end to end on CPU:
# fetch a real corpus -> train a byte-level BPE -> pack an Arrow dataset ->
# train the tiny student (configs/tiny.toml) -> evaluate -> generate.
# Needs: cargo, npm and python3 (all on the default machine). Steps already done are skipped;
# an interrupted training run resumes from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cargo_env.sh
cargo build --locked --bin ember
EMBER=$CARGO_TARGET_DIR/debug/ember
$EMBER data fetch --out datasets/corpus
[[ -f datasets/tokenizer/tokenizer.json ]] ||
  $EMBER tokenizer train datasets/corpus/*.txt --out datasets/tokenizer/tokenizer.json --vocab-size 4096
[[ -f datasets/default/dataset.json ]] ||
  $EMBER data prepare datasets/corpus --tokenizer datasets/tokenizer/tokenizer.json --out datasets/default --seq-len 256
$EMBER train --config configs/tiny.toml "$@"
$EMBER eval --model checkpoints/tiny/model --dataset datasets/default
$EMBER generate --model checkpoints/tiny/model --prompt "Fellow-Citizens of the Senate and House of Representatives:" --max-new-tokens 60 --seed 1
