#!/usr/bin/env bash
# The GPU figures in one command, on a machine with an NVIDIA GPU and PyTorch (CUDA) +
# transformers (the lent machines have both at /opt/torch/.venv; Rust is not needed there):
#
#   EMBER=path/to/ember bash scripts/gpu_bench.sh [results_dir]
#
# EMBER: an `ember` built with the GPU backends, e.g. here
#   source scripts/cuda_env.sh; EMBER_TORCH_PYTHON=/opt/torch/.venv/bin/python source scripts/tch_env.sh
#   cargo build --release --features cuda,tch,wgpu
# (tch must be built against the libtorch the GPU machine runs: see scripts/tch_env.sh). A file
# `$EMBER.xz` is unpacked first (the binary links LLVM statically; xz makes it small to carry).
#
# 1. benches/compare_backends.py for the `base` (125M with vocab 32,000) and `mobile` (345M)
#    presets at batch 16 x 1024: one distillation step (forward KL over the top-32 + tail,
#    AdamW) on tch-CUDA, native CUDA and WGPU, f32 and bf16, beside PyTorch eager CUDA f32 and
#    bf16; tokens/s and peak device memory -> backends-gpu-<preset>.json.
# 2. A real run on the fastest Ember backend of step 1 (mobile): `ember train` of a small
#    teacher, then `ember distill` of a mobile student from it in-process (online) ->
#    distill-gpu.json (tokens/s from its metrics.jsonl).
# Environment: BATCH (16), SEQ (1024), VOCAB (32000), ITERS (10), BACKENDS, EMBER_TORCH_PYTHON,
# DATASET (a prepared dataset for step 2; default: datasets/default when present, else one
# made from tests/fixtures/moby_dick_excerpt.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benches/results}
mkdir -p "$OUT"
EMBER=${EMBER:-target/release/ember}
if [[ ! -x $EMBER && -f $EMBER.xz ]]; then
  xz -dkf "$EMBER.xz" && chmod +x "$EMBER"
fi
[[ -x $EMBER ]] || { echo "error: no ember binary at $EMBER (set EMBER)" >&2; exit 1; }
PY=${EMBER_TORCH_PYTHON:-/opt/torch/.venv/bin/python}
TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' >&2

for preset in base mobile; do
  echo "== compare_backends: $preset" >&2
  "$PY" benches/compare_backends.py --ember "$EMBER" --preset "$preset" \
    --batch "${BATCH:-16}" --seq "${SEQ:-1024}" --vocab "${VOCAB:-32000}" --iters "${ITERS:-10}" \
    --backends "${BACKENDS:-tch,tch-bf16,cuda,cuda-bf16,wgpu}" --timeout 900 \
    > "$OUT/backends-gpu-$preset.json"
  "$PY" - "$OUT/backends-gpu-$preset.json" <<'EOF' >&2
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["rows"]:
    mem = r.get("device_bytes_reserved")
    print(f'{r["engine"]:>28} {r["backend"]:<14} {r.get("tokens_per_s", "-"):>9} tok/s',
          f'{mem / 2**30:6.1f} GiB' if mem else "", r.get("error", "")[:120])
EOF
done

# the fastest Ember backend on mobile, as `--backend X [--set train.precision=...]`
read -r BACKEND PRECISION < <("$PY" - "$OUT/backends-gpu-mobile.json" <<'EOF'
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["rows"] if r["engine"] == "ember" and "tokens_per_s" in r]
best = max(rows, key=lambda r: r["tokens_per_s"]) if rows else {"backend": "cuda"}
name = best["backend"]
print(name.split("-")[0], "bf16" if name.endswith("bf16") else "f32")
EOF
)
echo "== ember train + distill on --backend $BACKEND ($PRECISION)" >&2
WORK=$(mktemp -d)
DATASET=${DATASET:-}
if [[ -z $DATASET && -f datasets/default/dataset.json ]]; then DATASET=datasets/default; fi
if [[ -z $DATASET ]]; then
  mkdir -p "$WORK/corpus" && cp tests/fixtures/moby_dick_excerpt.txt "$WORK/corpus/"
  "$EMBER" tokenizer train "$WORK/corpus/moby_dick_excerpt.txt" --out "$WORK/tokenizer.json" --vocab-size 4096
  "$EMBER" data prepare "$WORK/corpus" --tokenizer "$WORK/tokenizer.json" --out "$WORK/data" --seq-len 256
  DATASET=$WORK/data
fi
run() { "$EMBER" "$@" --backend "$BACKEND" --set "train.precision=\"$PRECISION\"" --set train.eval_every=0; }
run train --dataset "$DATASET" --out "$WORK/teacher" --max-steps 300 --set model.preset=\"small\"
cat > "$WORK/distill.toml" <<EOF
[data]
dataset = "$DATASET"
[model]
preset = "mobile"
[teacher]
model = "$WORK/teacher/model"
top_k = 32
[distill]
loss = { type = "forward_kl" }
tail = "bucket"
[train]
out_dir = "$WORK/student"
batch_size = ${BATCH:-16}
max_steps = 200
warmup_steps = 20
log_every = 10
EOF
run distill --config "$WORK/distill.toml"
"$PY" - "$WORK/student/metrics.jsonl" "$BACKEND" "$PRECISION" <<'EOF' > "$OUT/distill-gpu.json"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
train = [r for r in rows if "tokens_per_s" in r or "tokens_per_second" in r]
tps = [r.get("tokens_per_s", r.get("tokens_per_second")) for r in train]
print(json.dumps({"backend": sys.argv[2], "precision": sys.argv[3], "student": "mobile",
                  "teacher": "small, trained 300 steps here", "log_rows": len(rows),
                  "tokens_per_s_last": tps[-1] if tps else None,
                  "tokens_per_s_median": sorted(tps)[len(tps) // 2] if tps else None,
                  "last": rows[-1] if rows else None}, indent=1))
EOF
cat "$OUT/distill-gpu.json" >&2
rm -rf "$WORK"
