"""Peak memory of `ember record` on an MoE teacher of at least 8 GB, beside transformers, one run.

Writes a random Qwen3-MoE checkpoint (bf16, ~8.2 GB in 2 GB shards; nothing is committed) tensor
by tensor, prepares a small dataset, then records top-k logits over `--rows` rows with routed
experts streamed from the file (Ember's default when the model would not fit in half the memory)
and, for comparison, loaded in bf16; and runs transformers' forward (bf16) over the same rows.
Peak RSS comes from getrusage of each child process.

    $(bash scripts/setup_python.sh | tail -1) benches/teacher_memory.py --ember target/debug/ember --dir /tmp/moe8g
"""
import argparse, json, os, resource, subprocess, sys, time

import torch
from safetensors.torch import save_file

p = argparse.ArgumentParser()
p.add_argument("--ember", required=True)
p.add_argument("--dir", default="/tmp/ember-moe-8g")
p.add_argument("--rows", type=int, default=128)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--seq", type=int, default=128)
p.add_argument("--runs", default="ember_streamed_f32,ember_loaded_bf16,transformers_bf16",
               help="which of the runs to do, comma-separated")
p.add_argument("--out", default=None)
a = p.parse_args()

H, L, E, I, V = 1024, 16, 80, 1024, 8192
cfg = dict(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], vocab_size=V, hidden_size=H,
           intermediate_size=2048, num_hidden_layers=L, num_attention_heads=8, num_key_value_heads=4,
           head_dim=128, max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1e6,
           tie_word_embeddings=False, num_experts=E, num_experts_per_tok=2, moe_intermediate_size=I,
           decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True, torch_dtype="bfloat16",
           hidden_act="silu", attention_bias=False, use_sliding_window=False)
ckpt = os.path.join(a.dir, "teacher")
os.makedirs(ckpt, exist_ok=True)
gen = torch.Generator().manual_seed(0)


def rnd(*shape, std=0.02):
    return (torch.randn(*shape, generator=gen) * std).to(torch.bfloat16)


if not os.path.exists(os.path.join(ckpt, "model.safetensors.index.json")):
    t0 = time.time()
    weight_map, shard, size, n = {}, {}, 0, 0

    def flush():
        global shard, size, n
        if shard:
            name = f"model-{n:05d}.safetensors"
            save_file(shard, os.path.join(ckpt, name), metadata={"format": "pt"})
            for k in shard:
                weight_map[k] = name
            shard, size, n = {}, 0, n + 1

    def add(key, t):
        global size
        shard[key] = t
        size += t.numel() * 2
        if size >= 2 << 30:
            flush()

    add("model.embed_tokens.weight", rnd(V, H))
    add("lm_head.weight", rnd(V, H))
    add("model.norm.weight", torch.ones(H, dtype=torch.bfloat16))
    for i in range(L):
        pre = f"model.layers.{i}"
        add(f"{pre}.input_layernorm.weight", torch.ones(H, dtype=torch.bfloat16))
        add(f"{pre}.post_attention_layernorm.weight", torch.ones(H, dtype=torch.bfloat16))
        add(f"{pre}.self_attn.q_proj.weight", rnd(8 * 128, H))
        add(f"{pre}.self_attn.k_proj.weight", rnd(4 * 128, H))
        add(f"{pre}.self_attn.v_proj.weight", rnd(4 * 128, H))
        add(f"{pre}.self_attn.o_proj.weight", rnd(H, 8 * 128))
        add(f"{pre}.self_attn.q_norm.weight", torch.ones(128, dtype=torch.bfloat16))
        add(f"{pre}.self_attn.k_norm.weight", torch.ones(128, dtype=torch.bfloat16))
        add(f"{pre}.mlp.gate.weight", rnd(E, H, std=0.5))
        for e in range(E):
            add(f"{pre}.mlp.experts.{e}.gate_proj.weight", rnd(I, H))
            add(f"{pre}.mlp.experts.{e}.up_proj.weight", rnd(I, H))
            add(f"{pre}.mlp.experts.{e}.down_proj.weight", rnd(H, I))
    flush()
    json.dump({"metadata": {}, "weight_map": weight_map},
              open(os.path.join(ckpt, "model.safetensors.index.json"), "w"))
    json.dump(cfg, open(os.path.join(ckpt, "config.json"), "w"), indent=1)
    print(f"wrote the checkpoint in {time.time() - t0:.0f}s", file=sys.stderr)
ckpt_bytes = sum(os.path.getsize(os.path.join(ckpt, f)) for f in os.listdir(ckpt) if f.endswith(".safetensors"))

# a dataset of --seq tokens per row (tokenizer of vocab 512, so every id is in the teacher's range)
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
corpus = os.path.join(root, "tests/fixtures/moby_dick_excerpt.txt")
ds = os.path.join(a.dir, "ds")
if not os.path.exists(os.path.join(ds, "dataset.json")):
    subprocess.run([a.ember, "tokenizer", "train", corpus, "--out", os.path.join(a.dir, "tok.json"),
                    "--vocab-size", "512"], check=True, capture_output=True)
    subprocess.run([a.ember, "data", "prepare", corpus, "--tokenizer", os.path.join(a.dir, "tok.json"),
                    "--out", ds, "--seq-len", str(a.seq), "--val-fraction", "0.1",
                    "--passage-bytes", "1024"], check=True, capture_output=True)


WRAP = """
import json, resource, subprocess, sys
r = subprocess.run(json.loads(sys.argv[1]), capture_output=True, text=True)
sys.stderr.write(r.stderr[-3000:])
print(json.dumps({"rc": r.returncode, "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def measured(cmd, env=None):
    """Run `cmd` under a fresh wrapper; (seconds, peak RSS of that one child in bytes)."""
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", WRAP, json.dumps(cmd)], env=env, capture_output=True, text=True)
    secs = time.time() - t0
    info = json.loads(r.stdout.strip().splitlines()[-1])
    if info["rc"] != 0:
        raise SystemExit(f"{cmd} failed:\n{r.stderr}")
    return secs, info["maxrss_kib"] * 1024


results = {"checkpoint_gb": round(ckpt_bytes / 1e9, 2), "rows": a.rows, "seq_len": a.seq,
           "batch": a.batch, "layers": L, "experts": E, "top_k": 2, "runs": {}}
for label, extra, env in [
    ("ember_streamed_f32", ["--dtype", "f32"], {"EMBER_STREAM_EXPERTS": "1"}),
    ("ember_loaded_bf16", ["--dtype", "bf16"], {"EMBER_STREAM_EXPERTS": "0"}),
]:
    if label not in a.runs.split(","):
        continue
    out = os.path.join(a.dir, f"rec-{label}")
    subprocess.run(["rm", "-rf", out])
    secs, rss = measured([a.ember, "record", "--teacher", ckpt, "--data", ds, "--top-k", "8",
                          "--out", out, "--max-rows", str(a.rows), "--batch-size", str(a.batch)] + extra,
                         env={**os.environ, **env})
    results["runs"][label] = {"seconds": round(secs, 1), "peak_rss_gb": round(rss / 1e9, 2),
                              "peak_rss_over_checkpoint": round(rss / ckpt_bytes, 3),
                              "tokens_per_s": round(a.rows * a.seq / secs, 1)}
    print(label, results["runs"][label], file=sys.stderr)

if "transformers_bf16" in a.runs.split(","):
    script = f"""
import json, sys, time, torch, transformers as T, pyarrow.ipc as ipc, glob
torch.set_num_threads({os.cpu_count()})
m = T.AutoModelForCausalLM.from_pretrained({ckpt!r}, dtype=torch.bfloat16).eval()
rows = []
for f in sorted(glob.glob({os.path.join(ds, 'train-*.arrow')!r})):
    t = ipc.open_file(f).read_all()
    rows += t.column("input_ids").to_pylist()
rows = rows[:{a.rows}]
t0 = time.time()
with torch.no_grad():
    for i in range(0, len(rows), {a.batch}):
        m(input_ids=torch.tensor(rows[i:i + {a.batch}]))
print(time.time() - t0)
"""
    secs, rss = measured([sys.executable, "-c", script])
    results["runs"]["transformers_bf16"] = {"seconds_incl_load": round(secs, 1), "peak_rss_gb": round(rss / 1e9, 2),
                                            "peak_rss_over_checkpoint": round(rss / ckpt_bytes, 3)}
    print("transformers_bf16", results["runs"]["transformers_bf16"], file=sys.stderr)
text = json.dumps(results, indent=1)
print(text)
if a.out:
    open(a.out, "w").write(text + "\n")
