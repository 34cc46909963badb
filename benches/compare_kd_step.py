"""One distillation training step: Ember (Burn flex, CPU) vs PyTorch eager (CPU), one run.

Same student shape (Ember's `tiny` preset as a transformers LlamaForCausalLM), same batch,
same teacher top-k targets, same loss (forward KL over top-k + tail), same optimizer (AdamW).

    $(bash scripts/setup_python.sh | tail -1) benches/compare_kd_step.py [--batch 16 --seq 255 --k 32]
"""
import argparse, json, os, subprocess, time

import torch
import transformers as T

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=16)
p.add_argument("--seq", type=int, default=255)
p.add_argument("--k", type=int, default=32)
p.add_argument("--vocab", type=int, default=4096)
p.add_argument("--iters", type=int, default=5)
p.add_argument("--ember", default=None)
a = p.parse_args()
torch.manual_seed(0)
torch.set_num_threads(os.cpu_count())
B, S, K, V = a.batch, a.seq, a.k, a.vocab
cfg = T.LlamaConfig(vocab_size=V, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                    rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=10000.0)
model = T.LlamaForCausalLM(cfg)
model.config._attn_implementation = "eager"
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
i = torch.arange(B * S)
ids = ((i * 7919 + 13) % V).reshape(B, S)
labels = ((i * 104729 + 7) % V).reshape(B, S)
j = torch.arange(B * S * K)
tids = (((j // K) * 31 + (j % K) * 97) % V).reshape(B, S, K)
tlp = torch.log(0.9 * 0.5 ** ((j % K) + 1).double()).float().reshape(B, S, K)
P = tlp.exp()
P_tail = (1 - P.sum(-1, keepdim=True)).clamp_min(0)


def step():
    logits = model(input_ids=ids).logits
    logq = torch.log_softmax(logits, -1)
    q_lp = logq.gather(-1, tids)
    q_tail = (1 - q_lp.exp().sum(-1, keepdim=True)).clamp(1e-10, 1)
    kl = (P * (tlp - q_lp)).sum(-1) + (P_tail * (P_tail.clamp_min(1e-10).log() - q_tail.log())).squeeze(-1)
    loss = kl.mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


for _ in range(2):
    step()
ts = []
for _ in range(a.iters):
    t0 = time.perf_counter(); step(); ts.append(time.perf_counter() - t0)
t_torch = sorted(ts)[len(ts) // 2]

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ember = a.ember
if ember is None:
    subprocess.run(["cargo", "build", "--quiet", "--bin", "ember"], cwd=root, check=True)
    ember = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target")), "debug", "ember")
out = subprocess.run([ember, "bench", "kd-step", "--batch-size", str(B), "--seq-len", str(S), "--top-k", str(K),
                      "--vocab-size", str(V), "--iters", str(a.iters)], check=True, capture_output=True, text=True).stdout
em = json.loads(out.strip().splitlines()[-1])
tok = B * S
print(json.dumps({"batch": B, "seq_len": S, "k": K, "vocab": V, "threads": os.cpu_count(),
                  "torch": torch.__version__, "pytorch_step_s": t_torch, "pytorch_tokens_per_s": tok / t_torch,
                  "ember_step_s": em["median_step_seconds"], "ember_tokens_per_s": em["tokens_per_second"],
                  "ember_vs_pytorch": em["tokens_per_second"] / (tok / t_torch)}, indent=1))
