//! NaN and infinity stop every stage with an error naming where: training (step), recording
//! (row), evaluation; nothing already written is lost.

use std::path::Path;

use crate::teacher::fixture;
use crate::{ember_err, ember_ok, small_dataset};

/// `src/model.safetensors` rewritten into `dst` with every value of `key` (bf16) set to NaN.
fn with_nan_tensor(src: &Path, dst: &Path, key: &str) {
    std::fs::create_dir_all(dst).unwrap();
    crate::rewrite_safetensors(
        &src.join("model.safetensors"),
        &dst.join("model.safetensors"),
        |tensors| {
            let t = tensors.iter_mut().find(|(n, ..)| n == key).expect(key);
            t.3 = match t.1 {
                safetensors::Dtype::BF16 => (0..t.3.len() / 2)
                    .flat_map(|_| half::bf16::NAN.to_le_bytes())
                    .collect(),
                safetensors::Dtype::F32 => (0..t.3.len() / 4)
                    .flat_map(|_| f32::NAN.to_le_bytes())
                    .collect(),
                other => panic!("{key}: {other:?}"),
            };
        },
    );
}

fn micro(ds: &str, out: &str, steps: &str, lr: &str) -> Vec<String> {
    let lr = format!("train.lr={lr}");
    let mut args = crate::train::micro_args(ds, out, steps);
    args.extend([
        "--set",
        "train.warmup_steps=1",
        "--set",
        &lr,
        "--set",
        "train.min_lr=1e-4",
        "--set",
        "train.checkpoint_every=1",
        "--set",
        "train.keep_checkpoints=10",
        "--set",
        "train.grad_clip=0",
    ]);
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ds = small_dataset().to_str().unwrap().to_string();
    let args = micro(&ds, "run", "40", "1e30");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = ember_err(dir.path(), &args);
    assert!(err.contains("non-finite") && err.contains("step "), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{err}"));
    let step: usize = line
        .split("step ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no step in {err}"));
    assert!(step < 40, "{err}");
    // no model and no summary from a failed run; every checkpoint predates the bad step
    assert!(!dir.path().join("run/model").exists());
    assert!(!dir.path().join("run/summary.json").exists());
    let mut saved: Vec<usize> = std::fs::read_dir(dir.path().join("run/checkpoints"))
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_prefix("step-")?
                .parse()
                .ok()
        })
        .collect();
    saved.sort();
    assert!(
        !saved.is_empty() && saved.iter().all(|&s| s < step),
        "{saved:?} vs step {step}"
    );
    // and the run resumes from it (stopping again at the same step, the same way)
    let again = ember_err(dir.path(), &args);
    assert!(
        again.contains("resuming from") && again.contains(&format!("step {step}:")),
        "{again}"
    );
    // metrics hold only finite training losses
    let metrics = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    for line in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["split"] == "train" {
            assert!(v["loss"].as_f64().is_some_and(f64::is_finite), "{line}");
        }
    }
}

#[test]
fn a_nan_teacher_is_refused_naming_the_row_and_a_nan_student_fails_eval() {
    let dir = tempfile::tempdir().unwrap();
    let ds = small_dataset().to_str().unwrap().to_string();
    // teacher: the llama fixture with a NaN final norm
    let teacher = dir.path().join("nan-teacher");
    with_nan_tensor(&fixture("llama"), &teacher, "model.norm.weight");
    std::fs::copy(
        fixture("llama").join("config.json"),
        teacher.join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        small_dataset().join("tokenizer.json"),
        teacher.join("tokenizer.json"),
    )
    .unwrap();
    let err = ember_err(
        dir.path(),
        &[
            "record",
            "--teacher",
            teacher.to_str().unwrap(),
            "--data",
            &ds,
            "--top-k",
            "4",
            "--out",
            "rec",
            "--max-rows",
            "8",
            "--batch-size",
            "4",
        ],
    );
    assert!(
        err.contains("non-finite") && err.contains("row 0") && err.contains("nan-teacher"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(dir.path().join("rec"))
            .map(|d| d
                .filter_map(Result::ok)
                .all(|e| !e.file_name().to_string_lossy().ends_with(".arrow")))
            .unwrap_or(true),
        "no shard from a NaN teacher"
    );

    // student: a trained micro model with one NaN weight matrix; eval fails, writes nothing
    let args = micro(&ds, "run", "2", "1e-2");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ember_ok(dir.path(), &args);
    let model = dir.path().join("run/model");
    let nan_model = dir.path().join("nan-model");
    with_nan_tensor(&model, &nan_model, "model.norm.weight");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(model.join(f), nan_model.join(f)).unwrap();
    }
    let err = ember_err(
        dir.path(),
        &[
            "eval",
            "--model",
            nan_model.to_str().unwrap(),
            "--dataset",
            &ds,
        ],
    );
    assert!(
        err.contains("not finite") && err.contains("nan-model"),
        "{err}"
    );
    assert!(!nan_model.join("eval.json").exists());
}

#[test]
fn non_finite_steps_are_skipped_up_to_the_recipe_bound_then_stop() {
    use ember_train::NonFiniteGuard;
    let guard = NonFiniteGuard {
        first_step: 10,
        max_skips: 2,
        ..NonFiniteGuard::default()
    };
    assert!(guard.report(0, "gradient norm is NaN".into()));
    assert!(
        guard.report(0, "training loss is NaN".into()),
        "same step counts once"
    );
    assert!(guard.report(3, "gradient norm is inf".into()));
    assert!(guard.stopped.lock().unwrap().is_none());
    assert!(!guard.report(5, "gradient norm is NaN".into()));
    let why = guard.stopped.lock().unwrap().clone().unwrap();
    assert!(
        why.starts_with("step 16: gradient norm is NaN after 2 skipped steps"),
        "{why}"
    );
    assert!(guard.interrupter.should_stop());
    let skipped: Vec<usize> = guard
        .skipped
        .lock()
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(skipped, [11, 14]);
}
