use std::path::PathBuf;
use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::DType;
use clap::{Args, Subcommand};
use ember_student::{Student, StudentConfig};
use ember_teacher::load_teacher;
use ember_train::{KdConfig, Precision, TeacherTargets, loss_from_hidden};

use crate::backend::BackendArgs;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Teacher forward throughput on random ids.
    Teacher(BenchArgs),
    /// One distillation training step of a student (forward, top-k KL, backward, AdamW).
    KdStep(KdStepArgs),
}

#[derive(Debug, Args)]
pub struct KdStepArgs {
    /// Student preset.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Vocabulary size.
    #[arg(long, default_value_t = 4096)]
    vocab_size: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Positions per sequence.
    #[arg(long, default_value_t = 255)]
    seq_len: usize,
    #[arg(long, default_value_t = 32)]
    top_k: usize,
    /// Timed steps (after two warm-up steps).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    #[command(flatten)]
    backend: BackendArgs,
    /// Compute precision (losses stay f32).
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PrecisionArg {
    F32,
    Bf16,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Teacher(a) => teacher(a),
        BenchCommand::KdStep(a) => kd_step(a),
    }
}

/// Same shapes and loss as the PyTorch step of benches/compare_backends.py; prints one JSON line.
fn kd_step(a: KdStepArgs) -> anyhow::Result<()> {
    let precision = match a.precision {
        PrecisionArg::F32 => Precision::F32,
        PrecisionArg::Bf16 => Precision::Bf16,
    };
    let device = a.backend.device_for(precision)?;
    let cfg = StudentConfig::preset(&a.preset, a.vocab_size)
        .ok_or_else(|| anyhow::anyhow!("unknown preset {}", a.preset))?;
    let ad = device.clone().autodiff();
    device.seed(0);
    let mut model = cfg.init(&ad);
    let mut optim = AdamWConfig::new().with_weight_decay(0.1).init();
    let (b, t, k, v) = (a.batch_size, a.seq_len, a.top_k, a.vocab_size);
    let ids: Vec<i32> = (0..b * t).map(|i| ((i * 7919 + 13) % v) as i32).collect();
    let labels: Vec<i32> = (0..b * t).map(|i| ((i * 104729 + 7) % v) as i32).collect();
    // teacher: k distinct ids per position with a geometric distribution holding 90% of the mass
    let tids: Vec<i32> = (0..b * t * k)
        .map(|i| (((i / k) * 31 + (i % k) * 97) % v) as i32)
        .collect();
    let tlp: Vec<f32> = (0..b * t * k)
        .map(|i| ((0.9f64 * 0.5f64.powi((i % k) as i32 + 1)).ln()) as f32)
        .collect();
    let kd = KdConfig::default();
    let step = |model: Student, optim: &mut burn::optim::ModuleOptimizer| {
        let x = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [b, t]), &ad);
        let y = Tensor::<2, Int>::from_data(TensorData::new(labels.clone(), [b, t]), &ad);
        let targets = TeacherTargets::new(&tids, &tlp, b, t, k, v, 1.0, &ad);
        // as `ember distill` trains: logits chunk by chunk inside the loss
        let hidden = model.forward_hidden(x, None);
        let out = loss_from_hidden(hidden, model.head_weight(), Some(&targets), y, &kd).out;
        let loss = out.total.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(out.total.backward(), &model);
        (optim.step(1e-3, model, grads), loss)
    };
    for _ in 0..2 {
        model = step(model, &mut optim).0;
    }
    let mut times = Vec::with_capacity(a.iters);
    let mut loss = 0.0;
    for _ in 0..a.iters {
        let start = Instant::now();
        (model, loss) = step(model, &mut optim);
        device.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let memory = device.memory_pool_usage().map(|m| m.bytes_reserved);
    println!(
        "{}",
        serde_json::json!({
            "backend": format!("{:?}", a.backend.backend).to_lowercase(), "precision": format!("{precision:?}").to_lowercase(),
            "device_bytes_reserved": memory, "preset": a.preset, "params": cfg.num_params(), "batch_size": b, "seq_len": t, "top_k": k,
            "median_step_seconds": median, "tokens_per_second": (b * t) as f64 / median, "last_loss": loss,
        })
    );
    Ok(())
}

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
    #[command(flatten)]
    backend: BackendArgs,
}

/// Teacher forward throughput on random token ids; prints one JSON line.
fn teacher(a: BenchArgs) -> anyhow::Result<()> {
    let device = a.backend.device()?;
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
            "blas": ember_teacher::blas_library(),
            "load_seconds": load_s, "median_seconds": median, "tokens_per_second": (b * t) as f64 / median,
        })
    );
    Ok(())
}
