"""Load an Ember student saved in HF layout with transformers and compare logits.

Usage: python check_hf_student.py <model_dir> <ember_logits.safetensors> [tolerance]

<ember_logits.safetensors> holds `input_ids` (int64 [B, T]) and `logits` (float32 [B, T, V])
computed by Ember. Prints one JSON line {"max_abs_diff": ..., "arch": ...}; exits 1 when the
max abs difference exceeds the tolerance (default 1e-4).
"""
import json
import sys

import torch
import transformers
from safetensors.torch import load_file

model_dir, ember_file = sys.argv[1], sys.argv[2]
tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-4
ref = load_file(ember_file)
model = transformers.AutoModelForCausalLM.from_pretrained(
    model_dir, dtype=torch.float32, attn_implementation="eager"
).eval()
with torch.no_grad():
    logits = model(input_ids=ref["input_ids"]).logits.float()
diff = (logits - ref["logits"]).abs().max().item()
print(json.dumps({"max_abs_diff": diff, "arch": type(model).__name__,
                  "params": sum(p.numel() for p in model.parameters()),
                  "logits_std": logits.std().item()}))
sys.exit(0 if diff <= tol else 1)
