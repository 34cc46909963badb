"""Read an Ember GGUF export back with the `gguf` package (llama.cpp's Python reader) and
compare every tensor with the HF checkpoint it came from.

Usage: python check_gguf.py <model.gguf> <hf dir with f32 model.safetensors> f16|q8_0|q4_0

Checks metadata, tokenizer arrays, tensor names/shapes/types, dequantized values against the HF
weights (query/key rows permuted as llama.cpp's convert_hf_to_gguf.py does), and the quantized bytes
against gguf's own reference quantizer. Prints one JSON line.
"""
import json, sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize
from safetensors.numpy import load_file

path, hf_dir, quant = sys.argv[1], sys.argv[2], sys.argv[3]
r = GGUFReader(path)
cfg = json.load(open(f"{hf_dir}/config.json"))
w = load_file(f"{hf_dir}/model.safetensors")


def field(name):
    f = r.fields[name]
    if f.types[0].name == "STRING":
        return bytes(f.parts[f.data[0]]).decode()
    if f.types[0].name == "ARRAY":
        return [bytes(f.parts[i]).decode() if f.types[-1].name == "STRING" else f.parts[i][0].item() for i in f.data]
    return f.parts[f.data[0]][0].item()


meta = {k: field(k) for k in ["general.architecture", "llama.block_count", "llama.attention.head_count",
                              "llama.attention.head_count_kv", "llama.embedding_length", "llama.rope.dimension_count",
                              "tokenizer.ggml.model", "tokenizer.ggml.eos_token_id"]}
tokens = field("tokenizer.ggml.tokens")
merges = field("tokenizer.ggml.merges")


def permute(x, n_head):  # llama.cpp LlamaModel.permute
    return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
         "output.weight": "lm_head.weight"}
parts = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
         "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
         "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
want_type = {"f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[quant]
worst_rel, byte_agree, types = 0.0, [], set()
for t in r.tensors:
    if t.name in names:
        hf = names[t.name]
    else:
        _, n, p, _ = t.name.split(".")
        hf = f"model.layers.{n}.{parts[p]}.weight"
    ref = w[hf].astype(np.float32)
    if hf.endswith("q_proj.weight"):
        ref = permute(ref, cfg["num_attention_heads"])
    elif hf.endswith("k_proj.weight"):
        ref = permute(ref, cfg["num_key_value_heads"])
    shape = tuple(int(x) for x in reversed(t.shape))
    got = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
    assert shape == ref.shape, (t.name, shape, ref.shape)
    types.add(t.tensor_type.name)
    amax = float(np.abs(ref).max()) or 1.0
    worst_rel = max(worst_rel, float(np.abs(got - ref).max()) / amax)
    if t.tensor_type in (Q.Q8_0, Q.Q4_0):
        theirs = quantize(ref, t.tensor_type).reshape(-1).view(np.uint8)
        ours = np.asarray(t.data).reshape(-1).view(np.uint8)
        byte_agree.append(float((theirs == ours).mean()))
    elif len(ref.shape) == 2:
        assert t.tensor_type == want_type, (t.name, t.tensor_type)
print(json.dumps({"meta": meta, "n_tokens": len(tokens), "n_merges": len(merges), "n_tensors": len(r.tensors),
                  "types": sorted(types), "worst_rel_error": worst_rel,
                  "min_byte_agreement": min(byte_agree) if byte_agree else None}))
