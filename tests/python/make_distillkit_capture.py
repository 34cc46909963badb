"""Write a DistillKit-format capture from an Ember logits shard, for the import test.

Usage: python make_distillkit_capture.py <ember shard.arrow> <out dir> lossless|lossy

This is an independent encoder written from DistillKit's published format
(distillkit/compression: bitpack.py, monotonic_logprobs.py; Apache-2.0): ids as one MSB-first
bit stream of ceil(log2 d) bits each; log-probabilities as exact_k leading values, then
polynomial coefficients fitted to the tail, then quantized residual bins (scale + codes).
It also writes expected.json: the values a DistillKit decoder returns for every position.
"""
import json, math, os, sys

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

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

bits = int(math.ceil(math.log2(d)))


def pack(values, width):
    stream = "".join(format(int(v), f"0{width}b") for v in values)
    stream += "0" * ((8 - len(stream) % 8) % 8)
    return [int(stream[i:i + 8], 2) for i in range(0, len(stream), 8)]


def as_bytes(x, dtype):
    if dtype == "bfloat16":
        f = np.asarray(x, dtype=np.float32).view(np.uint32)
        # round to nearest even, like torch's float32 -> bfloat16
        r = ((f + 0x7FFF + ((f >> 16) & 1)) >> 16).astype(np.uint16)
        return list(r.tobytes()), (r.astype(np.uint32) << 16).view(np.float32)
    np_t = {"float16": np.float16, "float32": np.float32}[dtype]
    a = np.asarray(x, dtype=np_t)
    return list(a.tobytes()), a.astype(np.float32)


def terms_matrix(n):
    x = np.arange(n, dtype=np.float32)
    cols = [x ** p if isinstance(p, int) else np.sqrt(x) for p in cfg["polynomial_terms"]]
    return np.stack(cols, axis=-1)


def encode(lp):
    lp = np.asarray(lp, dtype=np.float32)
    v = np.concatenate([lp[:1], np.diff(lp)]) if cfg["delta_encoding"] else lp
    ek = cfg["exact_k"]
    out_b, exact = as_bytes(v[:ek], cfg["exact_dtype"])
    tail = v[ek:].astype(np.float64)
    decoded_tail = np.zeros(len(tail))
    if cfg["polynomial_terms"]:
        X = terms_matrix(len(tail)).astype(np.float64)
        coeffs = np.linalg.lstsq(X, tail, rcond=None)[0]
        cb, coeffs32 = as_bytes(coeffs, cfg["term_dtype"])
        out_b += cb
        fit = terms_matrix(len(tail)).astype(np.float64) @ coeffs32.astype(np.float64)
        resid = tail - fit
        decoded_tail += fit
    else:
        resid = tail.copy()
    pos = 0
    for b in cfg["residual_bins"]:
        seg = resid[pos:pos + b["num_elements"]]
        eb = b["element_bits"]
        m = float(np.abs(seg).max()) if len(seg) else 0.0
        scale = (m if eb == 1 else m / 2 ** (eb - 1)) or 1.0
        sb, scale16 = as_bytes([scale], b["scale_dtype"])
        s = float(scale16[0])
        if eb == 1:
            q = (seg >= 0).astype(int)
            deq = (q * 2.0 - 1.0) * s
        else:
            q = np.clip(np.round(seg / s), -(2 ** (eb - 1)), 2 ** (eb - 1) - 1).astype(int) + 2 ** (eb - 1)
            deq = (q - 2 ** (eb - 1)) * s
        out_b += sb + pack(q, eb)
        decoded_tail[pos:pos + len(seg)] += deq
        pos += b["num_elements"]
    vals = np.concatenate([exact.astype(np.float64), decoded_tail])
    if cfg["delta_encoding"]:
        vals = np.cumsum(vals)
    return out_b, vals.tolist()


rows, expected = [], []
for ids, tid, tlp in zip(ids_rows, top_ids, top_lp):
    comp, packed, exp_row = [], [], []
    for p in range(len(ids)):
        b, vals = encode(tlp[p])
        comp.append(b)
        packed.append(pack(tid[p], bits))
        exp_row.append(vals)
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
