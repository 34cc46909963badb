"""Teacher forward throughput: Ember (Burn flex, CPU) vs transformers (PyTorch eager, CPU), one run.

Builds a scaled-up random checkpoint of `--arch` with transformers (no download), times
transformers' forward on it, then `ember bench` on the same files and the same shapes.

    $(bash scripts/setup_python.sh | tail -1) benches/compare_teacher.py [--batch 4 --seq 256]

Ember and transformers run alternately `--rounds` times (each time the median of `--iters`
forwards) and each keeps its best: on a shared machine interference only ever slows a run down.
Writes a JSON summary to stdout (and to --out if given).
"""
import argparse, json, os, subprocess, sys, tempfile, time

import torch
import transformers as T

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=4)
p.add_argument("--seq", type=int, default=256)
p.add_argument("--iters", type=int, default=5)
p.add_argument("--arch", default="qwen3_moe",
               choices=["qwen3_moe", "llama", "deepseek_v3", "deepseek_v32", "longcat_flash", "qwen3_next"])
p.add_argument("--ember", default=None, help="path of the ember binary (default: build it with cargo)")
p.add_argument("--out", default=None)
p.add_argument("--dir", default=None, help="write the checkpoint here (reused when it holds one) instead of a temporary directory")
p.add_argument("--ember-only", action="store_true", help="time Ember only (profiling), not transformers")
p.add_argument("--rounds", type=int, default=3,
               help="alternate Ember and transformers this many times and keep each one's best median "
                    "(a shared machine only ever slows a run down)")
a = p.parse_args()

torch.manual_seed(0)
threads = os.cpu_count()
torch.set_num_threads(threads)
common = dict(vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=4, head_dim=64, max_position_embeddings=2048, rms_norm_eps=1e-6,
              tie_word_embeddings=False, rope_theta=1e6)
if a.arch == "qwen3_moe":
    cfg = T.Qwen3MoeConfig(**common, intermediate_size=1536, num_experts=8, num_experts_per_tok=2,
                           moe_intermediate_size=768, decoder_sparse_step=1, mlp_only_layers=[],
                           norm_topk_prob=True)
elif a.arch in ("deepseek_v3", "deepseek_v32"):
    # MLA: RoPE on qk_rope_head_dim (transformers' DeepseekV3 sizes its tables by head_dim if given)
    mla = dict({k: v for k, v in common.items() if k != "head_dim"}, num_key_value_heads=8, intermediate_size=1536, moe_intermediate_size=768,
               n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1,
               first_k_dense_replace=1, q_lora_rank=256, kv_lora_rank=128, qk_rope_head_dim=32,
               qk_nope_head_dim=64, v_head_dim=64)
    if a.arch == "deepseek_v3":
        cfg = T.DeepseekV3Config(**mla)
    else:  # the indexer keeps half of the keys at the default length
        cfg = T.DeepseekV32Config(**mla, index_topk=a.seq // 2, index_head_dim=64, index_n_heads=8)
elif a.arch == "longcat_flash":
    lc = {k: v for k, v in common.items() if k not in ("num_hidden_layers", "head_dim")}
    lc["num_key_value_heads"] = 8  # MLA expands keys to every head
    cfg = T.LongcatFlashConfig(**lc, num_layers=2, ffn_hidden_size=1536, expert_ffn_hidden_size=768,
                               n_routed_experts=8, zero_expert_num=4, moe_topk=2, q_lora_rank=256,
                               kv_lora_rank=128, qk_rope_head_dim=32, qk_nope_head_dim=64,
                               v_head_dim=64, head_dim=32)
elif a.arch == "qwen3_next":
    cfg = T.Qwen3NextConfig(**common, intermediate_size=1536, num_experts=8, num_experts_per_tok=2,
                            moe_intermediate_size=768, shared_expert_intermediate_size=768,
                            linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=64,
                            linear_value_head_dim=64, full_attention_interval=2)
else:
    cfg = T.LlamaConfig(**common, intermediate_size=1536)
d = a.dir or tempfile.mkdtemp(prefix="ember-bench-")
if not os.path.exists(os.path.join(d, "config.json")):
    model = T.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for n, w in model.named_parameters():
            if w.dim() >= 2:
                w.normal_(0, 0.05)
    model = model.to(torch.bfloat16)
    model.save_pretrained(d, safe_serialization=True)

m = T.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
params = sum(x.numel() for x in m.parameters())
ids = (torch.arange(a.batch * a.seq).reshape(a.batch, a.seq) * 7919 + 13) % cfg.vocab_size


def bench(fn):
    fn()
    ts = []
    for _ in range(a.iters):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ember = a.ember
if ember is None:
    subprocess.run(["cargo", "build", "--quiet", "--release", "--bin", "ember"], cwd=root, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    ember = os.path.join(target, "release", "ember")


def ember_tokens_per_s():
    out = subprocess.run([ember, "bench", "teacher", "--model", d, "--batch-size", str(a.batch),
                          "--seq-len", str(a.seq), "--iters", str(a.iters)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["tokens_per_second"]


m_sdpa = None if a.ember_only else \
    T.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa").eval()
tok = a.batch * a.seq
runs = {"ember": [], "eager": [], "sdpa": []}
for _ in range(a.rounds):
    # Ember first in each round: PyTorch's OpenMP workers keep spinning after its last forward
    runs["ember"].append(ember_tokens_per_s())
    if not a.ember_only:
        with torch.inference_mode():
            runs["eager"].append(tok / bench(lambda: m(input_ids=ids).logits))
            runs["sdpa"].append(tok / bench(lambda: m_sdpa(input_ids=ids).logits))
best = {k: max(v) if v else float("nan") for k, v in runs.items()}

res = {
    "arch": a.arch, "params": params, "batch": a.batch, "seq_len": a.seq, "threads": threads,
    "torch": torch.__version__, "transformers": T.__version__, "rounds": a.rounds,
    "transformers_eager_tokens_per_s": best["eager"], "transformers_sdpa_tokens_per_s": best["sdpa"],
    "ember_tokens_per_s": best["ember"],
    "ember_vs_eager": best["ember"] / best["eager"],
    "all_rounds": runs,
}
print(json.dumps(res, indent=1))
if a.out:
    json.dump(res, open(a.out, "w"), indent=1)
