"""Independent PyTorch reference for on-policy distillation's sampled-token objective
(tests/it/onpolicy.rs).

Usage: python onpolicy_reference.py <inputs.safetensors> <out.safetensors>

Inputs: `hidden` [b, t, d], `weight` [d, V] (logits = hidden @ weight), `labels` [b, t] (the sampled
tokens; negative on prompt and padding positions), `teacher_logprob` [b, t] (teacher's log-probability
of the sampled token), `sample_logprob` [b, t] (its log-probability under the sampling policy).
Writes `loss`, `grad_hidden`, `grad_weight`, `nll`.

The objective (Thinking Machines' on-policy distillation; TRL GKD's sampled estimate): per-token
advantage A = log p_teacher(x) - log q(x), held constant, importance ratio r = q(x) / mu(x), loss
mean(-r A) over the positions with a label.
"""
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file

src, dst = sys.argv[1], sys.argv[2]
with safe_open(src, "pt") as f:
    t = {k: f.get_tensor(k) for k in f.keys()}
h = t["hidden"].double().requires_grad_(True)
w = t["weight"].double().requires_grad_(True)
y = t["labels"]
tlp, slp = t["teacher_logprob"].double(), t["sample_logprob"].double()
mask = (y >= 0).double()
logq = torch.log_softmax(h @ w, -1).gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
ratio = torch.exp(logq - slp)
advantage = (tlp - logq).detach()
n = mask.sum().clamp_min(1)
loss = -(ratio * advantage * mask).sum() / n
loss.backward()
nll = -(logq * mask).sum() / n
save_file({"loss": loss.detach().float().reshape(1), "nll": nll.detach().float().reshape(1),
           "grad_hidden": h.grad.float().contiguous(), "grad_weight": w.grad.float().contiguous()}, dst)
