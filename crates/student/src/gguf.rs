//! GGUF (v3) export for llama.cpp: `llama` architecture metadata, the GPT-2-style BPE
//! tokenizer from `tokenizer.json`, and weights in F16, Q8_0 or Q4_0.
//!
//! Follows llama.cpp's `convert_hf_to_gguf.py` for Llama: tensor names (`token_embd`,
//! `blk.N.attn_q`, ...), dims listed innermost first, and the query/key rows permuted
//! from HF's rotate-half layout to GGML's interleaved RoPE pairs. 1-D tensors (norms)
//! stay F32; quantised blocks are 32 values with an f16 scale.

use std::path::Path;

use crate::hf::hf_tensors;
use crate::{Student, StudentConfig, StudentError};

/// Weight format of a GGUF export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    F16,
    Q8_0,
    Q4_0,
}

impl GgufType {
    /// `general.file_type` (llama_ftype).
    fn file_type(self) -> u32 {
        match self {
            GgufType::F16 => 1,
            GgufType::Q8_0 => 7,
            GgufType::Q4_0 => 2,
        }
    }
}

/// Q8_0: per block of 32, `d = max|x| / 127` (f16) then `round(x / d)` as i8.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for block in x.chunks_exact(32) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(half::f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

/// Q4_0: per block of 32, `d = max / -8` where `max` is the value of largest magnitude,
/// codes `min(15, trunc(x / d + 8.5))`, element j in the low nibble of byte j and element
/// j + 16 in its high nibble (ggml's `quantize_row_q4_0_ref`).
pub fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 18);
    for block in x.chunks_exact(32) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in block {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(half::f16::from_f32(d).to_le_bytes());
        for j in 0..16 {
            let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
            out.push(q(block[j]) | (q(block[j + 16]) << 4));
        }
    }
    out
}

/// Inverse of [`quantize_q8_0`].
pub fn dequantize_q8_0(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(34)
        .flat_map(|blk| {
            let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            blk[2..].iter().map(move |&q| q as i8 as f32 * d)
        })
        .collect()
}

/// Inverse of [`quantize_q4_0`].
pub fn dequantize_q4_0(b: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(b.len() / 18 * 32);
    for blk in b.chunks_exact(18) {
        let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        out.extend(blk[2..].iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
        out.extend(blk[2..].iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
    }
    out
}

/// The student with every matrix rounded as the GGUF export of type `ty` stores it
/// (norms untouched), to measure what quantization costs before leaving Ember.
pub fn fake_quantize(
    model: &Student,
    cfg: &StudentConfig,
    ty: GgufType,
    device: &burn::prelude::Device,
) -> Result<Student, StudentError> {
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = hf_tensors(model)
        .into_iter()
        .map(|(key, shape, v)| {
            let q = shape.len() == 2 && shape[1] % 32 == 0;
            let v = match (shape.len(), ty) {
                (1, _) => v,
                (_, GgufType::Q8_0) if q => dequantize_q8_0(&quantize_q8_0(&v)),
                (_, GgufType::Q4_0) if q => dequantize_q4_0(&quantize_q4_0(&v)),
                _ => v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect(),
            };
            (key, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .expect("consistent view"),
            )
        })
        .collect();
    let label = Path::new("<fake-quantized>");
    let bytes = safetensors::serialize(views, None).map_err(|e| StudentError::Safetensors {
        path: label.into(),
        message: e.to_string(),
    })?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| StudentError::Safetensors {
            path: label.into(),
            message: e.to_string(),
        })?;
    crate::hf::from_safetensors(cfg, &st, label, device)
}

/// llama.cpp's `permute`: rows of each head from `[half0, half1]` (rotate_half) to interleaved pairs.
fn permute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let head_rows = rows / heads;
    let half = head_rows / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for two in 0..2 {
                let src = h * head_rows + two * half + i;
                let dst = h * head_rows + i * 2 + two;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn gguf_name(hf: &str) -> Option<String> {
    let map = |s: &str| -> Option<&'static str> {
        Some(match s {
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            _ => return None,
        })
    };
    match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight".into()),
        "model.norm.weight" => Some("output_norm.weight".into()),
        "lm_head.weight" => Some("output.weight".into()),
        _ => {
            let rest = hf.strip_prefix("model.layers.")?;
            let (n, tail) = rest.split_once('.')?;
            Some(format!("blk.{n}.{}", map(tail)?))
        }
    }
}

/// Little-endian GGUF value writer.
struct Buf(Vec<u8>);

impl Buf {
    fn u32(&mut self, v: u32) {
        self.0.extend(v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend(v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.extend(s.as_bytes());
    }
    fn kv_u32(&mut self, k: &str, v: u32) {
        self.str(k);
        self.u32(4);
        self.u32(v);
    }
    fn kv_f32(&mut self, k: &str, v: f32) {
        self.str(k);
        self.u32(6);
        self.0.extend(v.to_le_bytes());
    }
    fn kv_str(&mut self, k: &str, v: &str) {
        self.str(k);
        self.u32(8);
        self.str(v);
    }
    fn kv_strs(&mut self, k: &str, v: &[String]) {
        self.str(k);
        self.u32(9);
        self.u32(8);
        self.u64(v.len() as u64);
        for s in v {
            self.str(s);
        }
    }
    fn kv_i32s(&mut self, k: &str, v: &[i32]) {
        self.str(k);
        self.u32(9);
        self.u32(5);
        self.u64(v.len() as u64);
        for x in v {
            self.0.extend(x.to_le_bytes());
        }
    }
}

/// Tokens (by id), token types and merges of a byte-level BPE `tokenizer.json`.
fn bpe_vocab(
    path: &Path,
    vocab_size: usize,
) -> Result<(Vec<String>, Vec<i32>, Vec<String>), StudentError> {
    let err = |message: String| StudentError::Config {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| StudentError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(err(format!(
            "GGUF export supports BPE tokenizers; this one is {}",
            model["type"]
        )));
    }
    let mut tokens = vec![String::new(); vocab_size];
    let mut types = vec![1i32; vocab_size];
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| err("model.vocab is not an object".into()))?;
    let mut set = |tok: &str, id: u64, ty: i32| {
        if (id as usize) < vocab_size {
            tokens[id as usize] = tok.to_string();
            types[id as usize] = ty;
        }
    };
    for (tok, id) in vocab {
        set(tok, id.as_u64().unwrap_or(u64::MAX), 1);
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let special = added["special"].as_bool().unwrap_or(false);
        set(
            added["content"].as_str().unwrap_or_default(),
            added["id"].as_u64().unwrap_or(u64::MAX),
            if special { 3 } else { 4 },
        );
    }
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_empty() {
            *t = format!("[PAD{i}]");
            types[i] = 5; // unused
        }
    }
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| err("model.merges missing".into()))?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(pair) => Ok(format!(
                "{} {}",
                pair[0].as_str().unwrap_or_default(),
                pair[1].as_str().unwrap_or_default()
            )),
            _ => Err(err("a merge is neither \"a b\" nor [a, b]".into())),
        })
        .collect::<Result<_, _>>()?;
    Ok((tokens, types, merges))
}

/// Write `model` as a GGUF file at `out` (atomically), with the tokenizer at `tokenizer`.
pub fn save_gguf(
    model: &Student,
    cfg: &StudentConfig,
    tokenizer: &Path,
    out: &Path,
    ty: GgufType,
    name: &str,
) -> Result<(), StudentError> {
    let (tokens, types, merges) = bpe_vocab(tokenizer, cfg.vocab_size)?;
    let mut tensors: Vec<(String, Vec<usize>, u32, Vec<u8>)> = Vec::new();
    for (key, shape, values) in hf_tensors(model) {
        let name = gguf_name(&key).ok_or_else(|| StudentError::Config {
            path: out.to_path_buf(),
            message: format!("no GGUF name for {key}"),
        })?;
        let values = if key.ends_with("q_proj.weight") {
            permute_rows(&values, shape[0], shape[1], cfg.num_attention_heads)
        } else if key.ends_with("k_proj.weight") {
            permute_rows(&values, shape[0], shape[1], cfg.num_key_value_heads)
        } else {
            values
        };
        let quantizable = shape.len() == 2 && shape[1] % 32 == 0;
        let (ggml, bytes) = match (shape.len(), ty) {
            (1, _) => (0, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            (_, GgufType::F16) => (
                1,
                values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
            (_, GgufType::Q8_0) if quantizable => (8, quantize_q8_0(&values)),
            (_, GgufType::Q4_0) if quantizable => (2, quantize_q4_0(&values)),
            _ => (
                1,
                values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
        };
        // GGUF lists dimensions innermost first
        tensors.push((name, shape.iter().rev().copied().collect(), ggml, bytes));
    }
    let mut b = Buf(Vec::new());
    b.0.extend(b"GGUF");
    b.u32(3);
    b.u64(tensors.len() as u64);
    let kv_count = 21u64;
    b.u64(kv_count);
    b.kv_str("general.architecture", "llama");
    b.kv_str("general.name", name);
    b.kv_u32("general.file_type", ty.file_type());
    b.kv_u32("general.alignment", 32);
    b.kv_u32("llama.context_length", cfg.max_position_embeddings as u32);
    b.kv_u32("llama.embedding_length", cfg.hidden_size as u32);
    b.kv_u32("llama.block_count", cfg.num_hidden_layers as u32);
    b.kv_u32("llama.feed_forward_length", cfg.intermediate_size as u32);
    b.kv_u32("llama.attention.head_count", cfg.num_attention_heads as u32);
    b.kv_u32(
        "llama.attention.head_count_kv",
        cfg.num_key_value_heads as u32,
    );
    b.kv_u32("llama.rope.dimension_count", cfg.head_dim as u32);
    b.kv_f32("llama.rope.freq_base", cfg.rope_theta as f32);
    b.kv_f32(
        "llama.attention.layer_norm_rms_epsilon",
        cfg.rms_norm_eps as f32,
    );
    b.kv_u32("llama.vocab_size", cfg.vocab_size as u32);
    b.kv_str("tokenizer.ggml.model", "gpt2");
    b.kv_str("tokenizer.ggml.pre", "gpt-2");
    b.kv_strs("tokenizer.ggml.tokens", &tokens);
    b.kv_i32s("tokenizer.ggml.token_type", &types);
    b.kv_strs("tokenizer.ggml.merges", &merges);
    b.kv_u32("tokenizer.ggml.bos_token_id", cfg.bos_token_id);
    b.kv_u32("tokenizer.ggml.eos_token_id", cfg.eos_token_id);
    let mut offset = 0u64;
    for (name, dims, ggml, bytes) in &tensors {
        b.str(name);
        b.u32(dims.len() as u32);
        for d in dims {
            b.u64(*d as u64);
        }
        b.u32(*ggml);
        b.u64(offset);
        offset += (bytes.len() as u64).div_ceil(32) * 32;
    }
    while b.0.len() % 32 != 0 {
        b.0.push(0);
    }
    for (_, _, _, bytes) in &tensors {
        b.0.extend(bytes);
        while b.0.len() % 32 != 0 {
            b.0.push(0);
        }
    }
    crate::hf::write_atomic(out, &b.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizers_round_trip_within_their_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 31.5) / 10.0)
            .collect();
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let q8 = dequantize_q8_0(&quantize_q8_0(&x));
        let q4 = dequantize_q4_0(&quantize_q4_0(&x));
        assert_eq!((quantize_q8_0(&x).len(), quantize_q4_0(&x).len()), (68, 36));
        for (a, b) in x.iter().zip(&q8) {
            // half a step, plus the f16 rounding of the scale (|q| <= 127 times 2^-11 relative)
            assert!((a - b).abs() <= amax / 127.0 * 0.57, "q8_0 {a} -> {b}");
        }
        for (a, b) in x.iter().zip(&q4) {
            assert!((a - b).abs() <= amax / 8.0 * 1.01, "q4_0 {a} -> {b}");
        }
        // the value of largest magnitude is exact in q4_0 (it defines the scale)
        let i = x
            .iter()
            .enumerate()
            .fold(0, |m, (i, v)| if v.abs() > x[m].abs() { i } else { m });
        assert!((q4[i] - x[i]).abs() < 1e-2, "{} vs {}", q4[i], x[i]);
    }

    #[test]
    fn permutation_interleaves_the_halves_of_each_head() {
        // 2 heads x 4 rows, 1 column: [a0 a1 b0 b1 | c0 c1 d0 d1] -> [a0 b0 a1 b1 | c0 d0 c1 d1]
        let w: Vec<f32> = (0..8).map(|i| i as f32).collect();
        assert_eq!(
            permute_rows(&w, 8, 1, 2),
            vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
        );
    }
}
