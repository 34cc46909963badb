"""DistillKit's capture format (distillkit/compression: bitpack.py, monotonic_logprobs.py;
Apache-2.0), written independently of Ember from the published format, in numpy.

cfg is a compression_config.yaml as a dict. Log-probabilities of a position (sorted, most
likely first) become: exact_k values in exact_dtype, polynomial coefficients in term_dtype
(least squares over the rest), then per residual bin a scale and quantized codes; ids are
one MSB-first bit stream of ceil(log2 d) bits each.
"""
import math

import numpy as np


def pack(values, width):
    stream = "".join(format(int(v), f"0{width}b") for v in values)
    stream += "0" * ((8 - len(stream) % 8) % 8)
    return [int(stream[i:i + 8], 2) for i in range(0, len(stream), 8)]


def unpack(data, width, n):
    stream = "".join(format(b, "08b") for b in data)
    return [int(stream[i * width:(i + 1) * width], 2) for i in range(n)]


def index_bits(cfg):
    return int(math.ceil(math.log2(cfg["d"])))


def as_bytes(x, dtype):
    """(bytes, the values as stored) of x in dtype."""
    if dtype == "bfloat16":
        f = np.asarray(x, dtype=np.float32).view(np.uint32)
        # round to nearest even, like torch's float32 -> bfloat16
        r = ((f + 0x7FFF + ((f >> 16) & 1)) >> 16).astype(np.uint16)
        return list(r.tobytes()), (r.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    np_t = {"float16": np.float16, "float32": np.float32, "float64": np.float64}[dtype]
    a = np.asarray(x, dtype=np_t)
    return list(a.tobytes()), a.astype(np.float64)


def from_bytes(data, dtype, n):
    b = bytes(data)
    if dtype == "bfloat16":
        u = np.frombuffer(b, dtype=np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).astype(np.float64)[:n]
    np_t = {"float16": np.float16, "float32": np.float32, "float64": np.float64}[dtype]
    return np.frombuffer(b, dtype=np_t).astype(np.float64)[:n]


def size(dtype):
    return {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}[dtype]


def terms_matrix(cfg, n):
    if cfg.get("normalize_t"):
        x = np.linspace(0, 1, n) if n > 1 else np.zeros(n)
    else:
        x = np.arange(n, dtype=np.float64)
    cols = [x ** p if isinstance(p, int) else (np.sqrt(x) if p == "sqrt" else np.exp(x))
            for p in cfg["polynomial_terms"] or []]
    return np.stack(cols, axis=-1) if cols else np.zeros((n, 0))


def encode(lp, cfg):
    """(bytes, decoded values) of one position's sorted log-probabilities."""
    lp = np.asarray(lp, dtype=np.float32)
    v = np.concatenate([lp[:1], np.diff(lp)]) if cfg.get("delta_encoding", True) else lp
    ek = cfg["exact_k"]
    out_b, exact = as_bytes(v[:ek], cfg.get("exact_dtype", "float32"))
    tail = v[ek:].astype(np.float64)
    decoded_tail = np.zeros(len(tail))
    if cfg.get("polynomial_terms"):
        X = terms_matrix(cfg, len(tail))
        coeffs = np.linalg.lstsq(X, tail, rcond=None)[0]
        cb, stored = as_bytes(coeffs, cfg.get("term_dtype", "float32"))
        out_b += cb
        fit = X @ stored
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
        sb, stored = as_bytes([scale], b["scale_dtype"])
        s = float(stored[0])
        if eb == 1:
            q = np.clip(np.round(seg / s), 0, 1).astype(int)
            deq = (q * 2.0 - 1.0) * s
        else:
            q = np.clip(np.round(seg / s), -(2 ** (eb - 1)), 2 ** (eb - 1) - 1).astype(int) + 2 ** (eb - 1)
            deq = (q - 2 ** (eb - 1)) * s
        out_b += sb + pack(q, eb)
        decoded_tail[pos:pos + len(seg)] += deq
        pos += b["num_elements"]
    vals = np.concatenate([exact, decoded_tail])
    if cfg.get("delta_encoding", True):
        vals = np.cumsum(vals)
    return out_b, vals


def decode(data, cfg):
    """One position's k log-probabilities from its compressed_logprobs bytes."""
    k, ek = cfg["k"], cfg["exact_k"]
    ed, td = cfg.get("exact_dtype", "float32"), cfg.get("term_dtype", "float32")
    at = 0
    exact = from_bytes(data[at:at + ek * size(ed)], ed, ek)
    at += ek * size(ed)
    nt = len(cfg.get("polynomial_terms") or [])
    coeffs = from_bytes(data[at:at + nt * size(td)], td, nt)
    at += nt * size(td)
    resid = np.zeros(k - ek)
    pos = 0
    for b in cfg["residual_bins"]:
        s = float(from_bytes(data[at:at + size(b["scale_dtype"])], b["scale_dtype"], 1)[0])
        at += size(b["scale_dtype"])
        nb = (b["num_elements"] * b["element_bits"] + 7) // 8
        q = np.array(unpack(data[at:at + nb], b["element_bits"], b["num_elements"]), dtype=np.float64)
        at += nb
        eb = b["element_bits"]
        resid[pos:pos + b["num_elements"]] = (q * 2 - 1) * s if eb == 1 else (q - 2 ** (eb - 1)) * s
        pos += b["num_elements"]
    if at != len(data):
        raise ValueError(f"{len(data)} bytes, the config implies {at}")
    tail = (terms_matrix(cfg, k - ek) @ coeffs if nt else 0.0) + resid
    vals = np.concatenate([exact, tail])
    if cfg.get("delta_encoding", True):
        vals = np.cumsum(vals)
    return vals
