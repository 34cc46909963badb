"""Write a DistillKit-format capture from an Ember logits shard, for the import test.

Usage: python make_distillkit_capture.py <ember shard.arrow> <out dir> lossless|lossy

This is an independent encoder written from DistillKit's published format
(distillkit/compression: bitpack.py, monotonic_logprobs.py; Apache-2.0): ids as one MSB-first
bit stream of ceil(log2 d) bits each; log-probabilities as exact_k leading values, then
polynomial coefficients fitted to the tail, then quantized residual bins (scale + codes).
It also writes expected.json: the values a DistillKit decoder returns for every position.
"""
import json, os, sys

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from distillkit_format import encode, index_bits, pack  # noqa: E402

src, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(out, exist_ok=True)
t = ipc.open_file(src).read_all()
md = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
d, k = int(md["ember.vocab_size"]), int(md["ember.k"])
ids_rows = t.column("input_ids").to_pylist()
top_ids = t.column("topk_ids").to_pylist()
top_lp = t.column("topk_logprobs").to_pylist()

if mode == "lossless":
    cfg = dict(d=d, k=k, exact_k=k, exact_dtype="float32", polynomial_terms=[], term_dtype="float32",
               residual_bins=[], delta_encoding=False, error_diffusion=False, normalize_t=False)
else:
    cfg = dict(d=d, k=k, exact_k=2, exact_dtype="bfloat16", polynomial_terms=[0, 1, 2, "sqrt"],
               term_dtype="float32", residual_bins=[dict(scale_dtype="float16", element_bits=8, num_elements=4),
                                                    dict(scale_dtype="float16", element_bits=1, num_elements=2)],
               delta_encoding=True, error_diffusion=False, normalize_t=False)
with open(os.path.join(out, "compression_config.yaml"), "w") as f:
    for key in sorted(cfg):
        f.write(f"{key}: {json.dumps(cfg[key])}\n")  # JSON is valid YAML flow syntax

bits = index_bits(cfg)


rows, expected = [], []
for ids, tid, tlp in zip(ids_rows, top_ids, top_lp):
    comp, packed, exp_row = [], [], []
    for p in range(len(ids)):
        b, vals = encode(tlp[p], cfg)
        comp.append(b)
        packed.append(pack(tid[p], bits))
        exp_row.append(vals.tolist())
    # DistillKit appends one pad token so every real token gets a distribution
    rows.append({"input_ids": [int(i) for i in ids] + [0], "compressed_logprobs": comp, "bytepacked_indices": packed})
    expected.append(exp_row)
schema = pa.schema([pa.field("input_ids", pa.list_(pa.uint64())),
                    pa.field("compressed_logprobs", pa.list_(pa.list_(pa.uint8()))),
                    pa.field("bytepacked_indices", pa.list_(pa.list_(pa.uint8())))])
half = len(rows) // 2
pq.write_table(pa.Table.from_pylist(rows[:half], schema=schema), os.path.join(out, "data_0.parquet"))
pq.write_table(pa.Table.from_pylist(rows[half:], schema=schema), os.path.join(out, "data_1.parquet"))
json.dump({"logprobs": expected}, open(os.path.join(out, "expected.json"), "w"))
print(json.dumps({"rows": len(rows), "k": k, "d": d, "bits": bits, "mode": mode}))
