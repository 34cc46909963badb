//! Ember's teacher runner: open-weight HF checkpoints (Llama, Qwen2, Qwen3, Qwen3-MoE,
//! Mixtral, DeepSeek-V3) run in Burn, every position's logits, and top-k recording to
//! the Arrow logits format of `ember_data`.

mod config;
mod deepseek_v3;
mod distillkit;
mod error;
mod layers;
mod llama;
mod load;
mod mixtral;
mod model;
mod qwen2;
mod qwen3;
mod qwen3_moe;
mod record;
mod remote;
mod weights;

pub use config::{Arch, HfConfig};
pub use distillkit::{CompressionConfig, ImportConfig, import_distillkit, unpack_bits};
pub use error::TeacherError;
pub use load::load_teacher;
pub use model::{Router, Teacher, grouped_routing, softmax_routing};
pub use record::{
    LocalTeacher, LogitSource, RecordConfig, TopK, check_vocab, record, topk_logprobs,
};
pub use remote::{Protocol, RemoteTeacher};
pub use weights::Weights;
