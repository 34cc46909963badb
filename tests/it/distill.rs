//! Distillation end to end: a teacher trained by Ember with CE on the test corpus, its
//! logits recorded, a smaller student distilled offline and online.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::{ember_err, ember_ok, kill_when, small_dataset};

/// A teacher (d 64, 3 layers) trained 200 steps with CE, and its recorded logits (k 16)
/// for both splits. Built once per test binary.
pub fn teacher() -> &'static (PathBuf, PathBuf, PathBuf) {
    static T: OnceLock<(tempfile::TempDir, PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    let t = T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ds = small_dataset().to_str().unwrap().to_string();
        let args = [
            "train",
            "--dataset",
            &ds,
            "--out",
            "teacher",
            "--max-steps",
            "200",
            "--set",
            "model.hidden_size=64",
            "--set",
            "model.intermediate_size=192",
            "--set",
            "model.num_hidden_layers=3",
            "--set",
            "model.num_attention_heads=4",
            "--set",
            "model.num_key_value_heads=2",
            "--set",
            "model.head_dim=16",
            "--set",
            "train.batch_size=16",
            "--set",
            "train.warmup_steps=10",
            "--set",
            "train.lr=1e-2",
            "--set",
            "train.min_lr=1e-3",
            "--set",
            "train.eval_every=0",
            "--set",
            "train.log_every=50",
            "--set",
            "train.checkpoint_every=200",
        ];
        ember_ok(dir.path(), &args);
        let model = dir.path().join("teacher/model");
        for split in ["train", "validation"] {
            ember_ok(
                dir.path(),
                &[
                    "record",
                    "--teacher",
                    model.to_str().unwrap(),
                    "--data",
                    &ds,
                    "--split",
                    split,
                    "--top-k",
                    "16",
                    "--out",
                    &format!("logits-{split}"),
                    "--batch-size",
                    "8",
                ],
            );
        }
        let (l, v) = (
            dir.path().join("logits-train"),
            dir.path().join("logits-validation"),
        );
        (dir, model, l, v)
    });
    // leak-free: the TempDir lives in the static
    Box::leak(Box::new((t.1.clone(), t.2.clone(), t.3.clone())))
}

pub fn student_args<'a>(ds: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "--dataset",
        ds,
        "--out",
        out,
        "--max-steps",
        steps,
        "--set",
        "model.hidden_size=32",
        "--set",
        "model.intermediate_size=64",
        "--set",
        "model.num_hidden_layers=2",
        "--set",
        "model.num_attention_heads=2",
        "--set",
        "model.num_key_value_heads=1",
        "--set",
        "model.head_dim=16",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.warmup_steps=5",
        "--set",
        "train.lr=1e-2",
        "--set",
        "train.min_lr=1e-3",
        "--set",
        "train.eval_every=40",
        "--set",
        "train.log_every=10",
        "--set",
        "train.seed=3",
    ]
}

fn validation_rows(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "validation")
        .collect()
}

pub fn write_recipe(dir: &Path, teacher: &str) -> PathBuf {
    let path = dir.join("distill.toml");
    std::fs::write(&path, format!("[data]\ndataset = {:?}\n\n[teacher]\n{teacher}\n\n[distill]\nloss = {{ type = \"forward_kl\" }}\ntemperature = 1.0\nce_weight = 0.0\n", small_dataset().display().to_string())).unwrap();
    path
}

#[test]
fn offline_distillation_moves_the_student_towards_the_teacher() {
    let (_, logits, vlogits) = teacher();
    let dir = tempfile::tempdir().unwrap();
    let recipe = write_recipe(
        dir.path(),
        &format!(
            "logits = {:?}\nvalidation_logits = {:?}",
            logits.display().to_string(),
            vlogits.display().to_string()
        ),
    );
    let ds = small_dataset().to_str().unwrap().to_string();
    let mut args = vec!["distill", "--config", recipe.to_str().unwrap()];
    args.extend(student_args(&ds, "kd", "120"));
    let out = ember_ok(dir.path(), &args);
    assert!(out.contains("top-1 agreement"), "{out}");
    let rows = validation_rows(&dir.path().join("kd"));
    let (first, last) = (&rows[0], rows.last().unwrap());
    assert_eq!(first["step"], 0);
    let (kl0, kl1) = (
        first["kl_to_teacher"].as_f64().unwrap(),
        last["kl_to_teacher"].as_f64().unwrap(),
    );
    let (a0, a1) = (
        first["top1_agreement"].as_f64().unwrap(),
        last["top1_agreement"].as_f64().unwrap(),
    );
    eprintln!("KL {kl0:.3} -> {kl1:.3}, top-1 agreement {a0:.3} -> {a1:.3}");
    assert!(
        kl1 < 0.6 * kl0,
        "validation KL to the teacher {kl0} -> {kl1}"
    );
    assert!(a1 > a0 + 0.1, "top-1 agreement {a0} -> {a1}");
    // training metrics carry the distillation terms
    let train: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.path().join("kd/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|v: &serde_json::Value| v["split"] == "train")
            .collect();
    for key in ["kd_loss", "ce", "top1_agreement", "tokens_per_second"] {
        assert!(train[0][key].is_number(), "{key} missing in {}", train[0]);
    }
}

#[test]
fn online_distillation_runs_the_teacher_in_process() {
    let (model, _, _) = teacher();
    let dir = tempfile::tempdir().unwrap();
    let recipe = write_recipe(
        dir.path(),
        &format!("model = {:?}\ntop_k = 16", model.display().to_string()),
    );
    let ds = small_dataset().to_str().unwrap().to_string();
    let mut args = vec!["distill", "--config", recipe.to_str().unwrap()];
    args.extend(student_args(&ds, "kd", "40"));
    ember_ok(dir.path(), &args);
    let rows = validation_rows(&dir.path().join("kd"));
    let (kl0, kl1) = (
        rows[0]["kl_to_teacher"].as_f64().unwrap(),
        rows.last().unwrap()["kl_to_teacher"].as_f64().unwrap(),
    );
    assert!(kl1 < kl0, "online: validation KL {kl0} -> {kl1}");
}

#[test]
fn distilling_across_tokenizers_is_refused_with_the_fix() {
    let (_, logits, _) = teacher();
    let dir = tempfile::tempdir().unwrap();
    // the same logits, claimed to come from another tokenizer
    let copy = dir.path().join("logits");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(logits).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let mpath = copy.join("logits.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["meta"]["tokenizer_sha256"] = "0123456789abcdef0123456789abcdef".into();
    std::fs::write(&mpath, m.to_string()).unwrap();
    let recipe = write_recipe(
        dir.path(),
        &format!("logits = {:?}", copy.display().to_string()),
    );
    let ds = small_dataset().to_str().unwrap().to_string();
    let mut args = vec!["distill", "--config", recipe.to_str().unwrap()];
    args.extend(student_args(&ds, "kd", "8"));
    let err = ember_err(dir.path(), &args);
    assert!(
        err.contains("0123456789ab")
            && err.contains("share a tokenizer")
            && err.contains("ember data prepare"),
        "{err}"
    );
    // and `ember distill` without a teacher says what is missing
    let mut args = vec!["distill"];
    args.extend(student_args(&ds, "kd2", "8"));
    let err = ember_err(dir.path(), &args);
    assert!(err.contains("[teacher]"), "{err}");
}

#[test]
fn a_killed_offline_distillation_resumes_to_the_same_result() {
    let (_, logits, vlogits) = teacher();
    let dir = tempfile::tempdir().unwrap();
    let recipe = write_recipe(
        dir.path(),
        &format!(
            "logits = {:?}\nvalidation_logits = {:?}",
            logits.display().to_string(),
            vlogits.display().to_string()
        ),
    );
    let ds = small_dataset().to_str().unwrap().to_string();
    let run = |out: &'static str| {
        let mut args = vec!["distill", "--config", recipe.to_str().unwrap()];
        args.extend(student_args(&ds, out, "30"));
        args.extend([
            "--set",
            "train.checkpoint_every=5",
            "--set",
            "train.eval_every=0",
            "--set",
            "train.log_every=1",
        ]);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let straight = run("straight");
    ember_ok(
        dir.path(),
        &straight.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let killed = run("killed");
    let killed_args: Vec<&str> = killed.iter().map(String::as_str).collect();
    kill_when(
        dir.path(),
        &killed_args,
        &dir.path()
            .join("killed/checkpoints/step-00000005/state.json"),
        &dir.path().join("killed/summary.json"),
    );
    let out = ember_ok(
        dir.path(),
        &killed.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(out.contains("validation KL"), "{out}");
    let summary = |d: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.path().join(d).join("summary.json")).unwrap())
            .unwrap()
    };
    let (a, b) = (summary("straight"), summary("killed"));
    assert!(b["resumed_from_step"].as_u64().unwrap() >= 5);
    for key in [["validation", "loss"], ["validation_kd", "kl"]] {
        let (x, y) = (
            a[key[0]][key[1]].as_f64().unwrap(),
            b[key[0]][key[1]].as_f64().unwrap(),
        );
        assert!((x - y).abs() < 1e-5, "{key:?}: {x} vs resumed {y}");
    }
}
