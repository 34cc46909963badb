//! Model pieces the student and the teacher runner share, written once: HF-layout rotary
//! embeddings (tables and application, partial and interleaved), grouped-query head
//! repetition, decoding of safetensors float tensors and top-k selection.

mod heads;
mod rope;
mod tensors;
mod topk;

pub use heads::repeat_kv;
pub use rope::{apply_rope, apply_rope_interleaved, inv_freq, rope_tables, tables_from_inv_freq};
pub use tensors::decode_floats;
pub use topk::topk_indices;
