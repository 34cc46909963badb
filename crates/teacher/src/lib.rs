//! Ember's teacher runner: open-weight HF checkpoints (Llama, Qwen2, Qwen3, Qwen3-MoE,
//! Mixtral, DeepSeek-V3, Kimi K2, GLM-4.5, MiniMax-M2; bf16/f16/f32 or FP8 blocks) run in Burn, every position's logits, and top-k recording to
//! the Arrow logits format of `ember_data`.

mod blas;
mod config;
mod deepseek_v3;
mod deepseek_v32;
mod delta_net;
mod distillkit;
mod dsa;
mod error;
mod glm4_moe;
mod layers;
mod llama;
mod load;
mod longcat_flash;
mod minimax_m2;
mod mixtral;
mod model;
pub mod protocol;
mod qwen2;
mod qwen3;
mod qwen3_moe;
mod qwen3_next;
mod record;
mod remote;
mod rope;
mod weights;

pub use config::{Arch, Fp8Blocks, HfConfig};

/// The CBLAS library the teacher's float32 CPU matmuls use, if one was found ([`blas`]).
pub fn blas_library() -> Option<&'static str> {
    blas::blas().map(|b| b.name.as_str())
}

pub use blas::init_blas;
pub use distillkit::{
    CompressionConfig, EXPORT_PAD_GAP, ExportConfig, ExportReport, ImportConfig, QuantizationBin,
    Term, TermDtype, export_distillkit, import_distillkit,
};
pub use error::TeacherError;
pub use load::{load_teacher, load_teacher_with};
pub use model::{KvCache, Router, Teacher, grouped_routing, softmax_routing};
pub use record::{
    LocalTeacher, LogitSource, RecordConfig, TopK, check_vocab, record, score_rows, topk_logprobs,
};
pub use remote::{Protocol, RemoteTeacher, RetryPolicy, ScoredRow};
pub use rope::{Rope, RopeScaling};
pub use weights::{Weights, f8_e4m3_to_f32};
