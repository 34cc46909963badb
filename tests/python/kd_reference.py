"""Independent PyTorch reference for Ember's distillation losses (tests/it/kd.rs).

Usage: python kd_reference.py <inputs.safetensors> <out.safetensors>

Inputs: student `logits` [b, t, V] (f32), teacher `ids` [b, t, k] (i64, ids >= V are padding of a
larger teacher vocabulary), teacher `logprobs` [b, t, k] (f32, full-vocabulary normalised), `labels`
[b, t] (i64), and `cases` (a JSON string in the metadata): [{"loss", "temperature", "ce_weight",
"beta"?, "alpha"?}]. For each case i writes `loss_i` (total), `kd_i`, `ce_i` and `grad_i` (d total /
d logits). Formulas: teacher and student compared over k + 1 outcomes (top-k + tail), teacher
re-tempered as p^(1/T) renormalised over those outcomes, KD scaled by T^2.
"""
import json, sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file

src, dst = sys.argv[1], sys.argv[2]
with safe_open(src, "pt") as f:
    t = {k: f.get_tensor(k) for k in f.keys()}
    cases = json.loads(f.metadata()["cases"])
logits0, ids, lp, labels = t["logits"].double(), t["ids"], t["logprobs"].double(), t["labels"]
V = logits0.shape[-1]
EPS = 1e-10
out = {}
for i, c in enumerate(cases):
    T = c["temperature"]
    logits = logits0.clone().requires_grad_(True)
    # teacher over k + 1 outcomes at temperature T; padding ids move into the tail
    valid = ids < V
    tail = (1 - lp.exp().sum(-1, keepdim=True)).clamp_min(0)
    w = torch.where(valid, (lp / T).exp(), torch.zeros_like(lp))
    pad_w = torch.where(valid, torch.zeros_like(lp), (lp / T).exp()).sum(-1, keepdim=True)
    tail_w = torch.where(tail > 0, tail ** (1 / T), torch.zeros_like(tail)) + pad_w
    Z = w.sum(-1, keepdim=True) + tail_w
    P = torch.cat([w / Z, tail_w / Z], -1)
    # student
    logq_full = torch.log_softmax(logits / T, -1)
    safe_ids = torch.where(valid, ids, torch.zeros_like(ids))
    q = logq_full.gather(-1, safe_ids).exp() * valid
    Q = torch.cat([q, (1 - q.sum(-1, keepdim=True)).clamp(EPS, 1)], -1)
    # entries with P = 0 (padding) contribute nothing to KL(P||.), but Q there is a real gather:
    # rebuild Q without them for the reverse direction
    def kl(a, b):
        return torch.where(a > 0, a * (a.clamp_min(EPS).log() - b.clamp_min(EPS).log()), torch.zeros_like(a)).sum(-1)
    name = c["loss"]
    if name == "forward_kl" and c.get("tail") == "uniform":
        # dense teacher: top-k where valid, tail mass spread uniformly over the other student tokens
        p_top = w / Z
        m = V - valid.sum(-1, keepdim=True)
        u = (tail_w / Z) / m
        # scatter_add of (p - u) on valid entries only: padding slots (id 0) add nothing
        dense = u.expand(*u.shape[:-1], V) + torch.zeros(*u.shape[:-1], V, dtype=u.dtype).scatter_add(
            -1, safe_ids, torch.where(valid, p_top - u, torch.zeros_like(p_top)))
        per = (torch.where(dense > 0, dense * (dense.clamp_min(EPS).log() - logq_full), torch.zeros_like(dense))).sum(-1)
    elif name == "forward_kl":
        per = kl(P, Q)
    elif name == "reverse_kl":
        per = kl(Q, P)
    elif name == "jsd":
        b = c["beta"]; M = b * P + (1 - b) * Q
        per = b * kl(P, M) + (1 - b) * kl(Q, M)
    elif name == "skew_kl":
        a = c["alpha"]; per = kl(P, a * P + (1 - a) * Q)
    elif name == "tvd":
        per = 0.5 * (P - Q).abs().sum(-1)
    kd = per.mean() * T * T
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, V), labels.reshape(-1))
    total = c["ce_weight"] * ce + (1 - c["ce_weight"]) * kd
    total.backward()
    out[f"loss_{i}"] = total.detach().float().reshape(1)
    out[f"kd_{i}"] = kd.detach().float().reshape(1)
    out[f"ce_{i}"] = ce.detach().float().reshape(1)
    out[f"grad_{i}"] = logits.grad.float().contiguous()
save_file(out, dst)
print(json.dumps({"cases": len(cases)}))
