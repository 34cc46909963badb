use std::path::PathBuf;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::DType;
use clap::Args;
use ember_teacher::load_teacher;

use crate::util::device;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model directory (any supported architecture).
    #[arg(long)]
    model: PathBuf,
    /// Sequences per forward.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Timed forwards (after one warm-up).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Compute backend.
    #[arg(long, default_value = "cpu")]
    backend: String,
}

/// Teacher forward throughput on random token ids; prints one JSON line.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let device = device(&a.backend)?;
    let load = Instant::now();
    let teacher = load_teacher(&a.model, &device, DType::F32)?;
    let load_s = load.elapsed().as_secs_f64();
    let (b, t) = (a.batch_size, a.seq_len);
    let v = teacher.vocab_size() as i64;
    let ids: Vec<i64> = (0..(b * t) as i64).map(|i| (i * 7919 + 13) % v).collect();
    let input = || Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [b, t]), &device);
    let sync = |x: Tensor<3>| x.slice([0..1, 0..1, 0..1]).into_scalar::<f32>();
    sync(teacher.forward(input(), None));
    let mut times = Vec::with_capacity(a.iters);
    for _ in 0..a.iters {
        let start = Instant::now();
        sync(teacher.forward(input(), None));
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "model": a.model, "arch": teacher.config.model_type, "batch_size": b, "seq_len": t,
            "load_seconds": load_s, "median_seconds": median, "tokens_per_second": (b * t) as f64 / median,
        })
    );
    Ok(())
}
