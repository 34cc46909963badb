//! Every backend compiled into this build agrees with the CPU (flex) backend on the same
//! student: a forward pass and one AdamW training step. Backends not compiled in are
//! reported as ignored with the feature that enables them. bf16 training runs end to end.

use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use ember_student::{SaveDtype, StudentConfig, load_hf, save_hf};
use ember_train::cross_entropy;

use crate::{SMALL_STUDENT, ember, ember_ok, small_dataset};

/// `(logits before, loss, logits after one AdamW step)` of the same saved student on `device`.
#[allow(dead_code)]
fn forward_and_step(device: &Device, dir: &std::path::Path) -> (Vec<f32>, f32, Vec<f32>) {
    let ids: Vec<i32> = (0..2 * 24).map(|i| ((i * 37 + 5) % 96) as i32).collect();
    let labels: Vec<i32> = (0..2 * 24).map(|i| ((i * 11 + 3) % 96) as i32).collect();
    let ad = device.clone().autodiff();
    let (model, _) = load_hf(dir, &ad).unwrap();
    let x = || Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [2, 24]), &ad);
    let y = Tensor::<2, Int>::from_data(TensorData::new(labels.clone(), [2, 24]), &ad);
    let logits = model.forward(x());
    let before = logits.clone().into_data().try_into_vec_as::<f32>().unwrap();
    let loss = cross_entropy(logits, y);
    let value = loss.clone().into_scalar::<f32>();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let mut optim = AdamWConfig::new().with_weight_decay(0.1).init();
    let model = optim.step(1e-2, model, grads);
    let after = model
        .forward(x())
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    (before, value, after)
}

#[allow(dead_code)]
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Compare `device` with flex on a small GQA student (vocab 96, d 64, 2 layers).
#[allow(dead_code)]
fn agrees_with_cpu(device: Device, name: &str) {
    let cpu = Device::flex();
    cpu.seed(11);
    let cfg = StudentConfig::new(96, 64, 128, 2, 4, 2, 16)
        .with_initializer_range(0.1)
        .with_max_position_embeddings(64);
    let dir = tempfile::tempdir().unwrap();
    save_hf(&cfg.init(&cpu), &cfg, dir.path(), SaveDtype::F32).unwrap();
    let (want_before, want_loss, want_after) = forward_and_step(&cpu, dir.path());
    let (got_before, got_loss, got_after) = forward_and_step(&device, dir.path());
    let fwd = max_diff(&want_before, &got_before);
    let step = max_diff(&want_after, &got_after);
    eprintln!(
        "{name}: forward max diff {fwd:.2e}, loss {got_loss} vs {want_loss}, after one step {step:.2e}"
    );
    assert!(fwd < 1e-4, "{name} forward differs from cpu by {fwd}");
    assert!(
        (got_loss - want_loss).abs() < 1e-4,
        "{name} loss {got_loss} vs cpu {want_loss}"
    );
    // the step moved the logits (lr 1e-2), and moved them the same way on both backends
    assert!(max_diff(&want_before, &want_after) > 1e-2);
    assert!(
        step < 1e-3,
        "{name} after one AdamW step differs from cpu by {step}"
    );
}

#[test]
#[cfg_attr(not(feature = "wgpu"), ignore = "built without --features wgpu")]
fn wgpu_agrees_with_cpu_on_a_forward_and_a_training_step() {
    #[cfg(feature = "wgpu")]
    {
        let device = Device::enumerate(burn::tensor::DeviceType::Wgpu)
            .iter()
            .next()
            .cloned()
            .expect("no WGPU adapter: apt-get install mesa-vulkan-drivers libvulkan1");
        agrees_with_cpu(device, "wgpu");
    }
}

#[test]
#[cfg_attr(
    not(feature = "tch"),
    ignore = "built without --features tch (source scripts/tch_env.sh)"
)]
#[allow(deprecated)]
fn libtorch_agrees_with_cpu_on_a_forward_and_a_training_step() {
    #[cfg(feature = "tch")]
    agrees_with_cpu(Device::libtorch(), "tch");
}

/// A backend that is not compiled in, or whose runtime is missing, is refused with the fix.
#[test]
fn an_unavailable_backend_is_refused_with_the_fix() {
    let ds = small_dataset();
    let dir = tempfile::tempdir().unwrap();
    let out = ember(
        dir.path(),
        &[
            "train",
            "--dataset",
            ds.to_str().unwrap(),
            "--max-steps",
            "2",
            "--set",
            "train.warmup_steps=1",
            "--backend",
            "cuda",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "cuda on a machine without it must fail"
    );
    if cfg!(feature = "cuda") {
        assert!(
            stderr.contains("cuda") && stderr.contains("did not start"),
            "{stderr}"
        );
    } else {
        assert!(stderr.contains("--features cuda"), "{stderr}");
    }
    assert!(
        !stderr.contains("panicked"),
        "a clear error, not a panic: {stderr}"
    );
    assert!(!dir.path().join("checkpoints").exists());
}

/// Validation loss after 40 steps of `ember train` on `backend` (extra CLI args) in `precision`.
fn last_validation_loss(dir: &std::path::Path, backend: &[&str], precision: &str) -> f64 {
    let ds = small_dataset();
    let out = dir.join(format!("{}-{precision}", backend.join("-")));
    let precision = format!("train.precision=\"{precision}\"");
    let mut args = vec![
        "train",
        "--dataset",
        ds.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "40",
        "--set",
        "train.warmup_steps=4",
        "--set",
        "train.eval_every=0",
        "--set",
        &precision,
    ];
    args.extend(backend);
    args.extend(SMALL_STUDENT);
    ember_ok(dir, &args);
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let row = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rev()
        .find(|r| r["split"] == "validation")
        .unwrap();
    row["loss"].as_f64().unwrap()
}

/// bf16 against f32 on one backend: finite, learns, and lands near the f32 run (the attention
/// mask and the losses survive bf16).
fn bf16_learns_like_f32(name: &str, backend: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let a = last_validation_loss(dir.path(), backend, "f32");
    let b = last_validation_loss(dir.path(), backend, "bf16");
    eprintln!("{name}: validation loss after 40 steps: f32 {a:.4}, bf16 {b:.4} (ln 512 = 6.24)");
    assert!(
        b.is_finite() && b < 5.9,
        "{name}: bf16 run did not learn: {b}"
    );
    assert!(
        (a - b).abs() < 0.15,
        "{name}: bf16 {b} too far from f32 {a}"
    );
}

/// bf16 training (whole model in bf16, losses in f32) on the CPU backend.
#[test]
fn bf16_training_learns_like_f32() {
    bf16_learns_like_f32("cpu", &[]);
}

/// The same on libtorch (its CPU device here; the code path tch-CUDA runs).
#[test]
#[cfg_attr(
    not(feature = "tch"),
    ignore = "built without --features tch (source scripts/tch_env.sh)"
)]
fn bf16_training_on_libtorch_learns_like_f32() {
    bf16_learns_like_f32("tch", &["--backend", "tch", "--device", "cpu"]);
}

/// `(loss, kd_loss, grad_norm)` of each of 6 steps of offline distillation (forward KL over
/// the recorded top-16, the fused loss from hidden states, global-norm clipping, AdamW) on
/// `backend`.
/// `backend` from the same initial student (`init`, saved by the CPU backend: each backend's
/// random numbers differ).
fn distill_steps(
    dir: &std::path::Path,
    init: &std::path::Path,
    out: &str,
    backend: &[&str],
) -> Vec<[f64; 3]> {
    let (_, logits, _) = crate::distill::teacher();
    let recipe =
        crate::distill::write_recipe(dir, &format!("logits = {:?}", logits.display().to_string()));
    let ds = small_dataset().to_str().unwrap().to_string();
    let init = format!("train.init_from={:?}", init.display().to_string());
    let mut args = vec!["distill", "--config", recipe.to_str().unwrap()];
    args.extend(crate::distill::student_args(&ds, out, "6"));
    args.extend([
        "--set",
        "train.log_every=1",
        "--set",
        "train.eval_every=0",
        "--set",
        &init,
    ]);
    args.extend(backend);
    ember_ok(dir, &args);
    std::fs::read_to_string(dir.join(out).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["split"] == "train")
        .map(|r| ["loss", "kd_loss", "grad_norm"].map(|k| r[k].as_f64().unwrap()))
        .collect()
}

/// The same distillation run on `backend` and on the CPU backend, step by step.
fn distills_like_cpu(name: &str, backend: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (teacher, _, _) = crate::distill::teacher();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(teacher.join("config.json")).unwrap()).unwrap();
    let vocab = config["vocab_size"].as_u64().unwrap() as usize;
    let cpu = Device::flex();
    cpu.seed(5);
    let cfg = StudentConfig::new(vocab, 32, 64, 2, 2, 1, 16);
    let init = dir.path().join("init");
    save_hf(&cfg.init(&cpu), &cfg, &init, SaveDtype::F32).unwrap();
    let want = distill_steps(dir.path(), &init, "cpu", &[]);
    let got = distill_steps(dir.path(), &init, name, backend);
    assert_eq!(want.len(), 6, "{want:?}");
    assert_eq!(got.len(), want.len(), "{got:?}");
    let mut worst = [0f64; 3];
    for (step, (g, w)) in got.iter().zip(&want).enumerate() {
        for (i, key) in ["loss", "kd_loss", "grad_norm"].iter().enumerate() {
            let rel = (g[i] - w[i]).abs() / w[i].abs().max(1e-12);
            worst[i] = worst[i].max(rel);
            assert!(
                rel < 1e-4,
                "{name}: step {} {key} {} vs cpu {} (relative {rel:.2e})",
                step + 1,
                g[i],
                w[i]
            );
        }
    }
    eprintln!(
        "{name}: 6 distillation steps, largest relative difference from cpu: loss {:.1e}, kd {:.1e}, grad norm {:.1e}",
        worst[0], worst[1], worst[2]
    );
}

#[test]
#[cfg_attr(not(feature = "wgpu"), ignore = "built without --features wgpu")]
fn wgpu_distills_like_cpu() {
    distills_like_cpu("wgpu", &["--backend", "wgpu"]);
}

#[test]
#[cfg_attr(
    not(feature = "tch"),
    ignore = "built without --features tch (source scripts/tch_env.sh)"
)]
fn libtorch_distills_like_cpu() {
    distills_like_cpu("tch", &["--backend", "tch", "--device", "cpu"]);
}
