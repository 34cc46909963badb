//! Ember's student: a small dense Llama-style decoder (RMSNorm, RoPE, GQA, SwiGLU).
//!
//! Saved and loaded in HuggingFace layout (`config.json` with
//! `architectures: ["LlamaForCausalLM"]` + `model.safetensors`), so transformers,
//! llama.cpp's converter and candle read it as they read any Llama.

mod config;
mod error;
mod fused;
mod generate;
mod gguf;
mod hf;
mod llama;

pub use config::{HfLlamaConfig, StudentConfig};
pub use ember_nn::rope_tables;
pub use error::StudentError;
pub use generate::{
    GenerateConfig, Sample, generate, sample_batch, sample_next, sample_next_with_logprob,
};
pub use gguf::{
    GgufType, dequantize_q4_0, dequantize_q8_0, fake_quantize, quantize_q4_0, quantize_q8_0,
    save_gguf,
};
pub use hf::{SaveDtype, hf_tensors, load_hf, save_hf};
pub use llama::{Attention, DecoderLayer, KvCache, LlamaModel, Mlp, Student};
