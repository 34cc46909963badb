//! Bad input gets a clear error naming the file, key or value at fault.

use crate::{ember_err, ember_ok, small_dataset};

#[test]
fn missing_tokenizer_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "hello world\n").unwrap();
    let err = ember_err(
        dir.path(),
        &[
            "data",
            "prepare",
            "a.txt",
            "--tokenizer",
            "nope/tokenizer.json",
            "--out",
            "ds",
        ],
    );
    assert!(
        err.contains("nope/tokenizer.json") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn unknown_config_field_is_rejected_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let ds = small_dataset();
    std::fs::write(
        dir.path().join("bad.toml"),
        format!(
            "[data]\ndataset = {:?}\n[train]\nlearning_rate = 0.1\n",
            ds.display().to_string()
        ),
    )
    .unwrap();
    let err = ember_err(dir.path(), &["train", "--config", "bad.toml"]);
    assert!(
        err.contains("bad.toml") && err.contains("learning_rate"),
        "{err}"
    );
}

#[test]
fn model_vocab_smaller_than_the_tokenizer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ds = small_dataset().to_str().unwrap().to_string();
    let err = ember_err(
        dir.path(),
        &[
            "train",
            "--dataset",
            &ds,
            "--out",
            "run",
            "--set",
            "model.vocab_size=256",
            "--max-steps",
            "2",
            "--set",
            "train.warmup_steps=1",
        ],
    );
    assert!(
        err.contains("vocabulary mismatch") && err.contains("512") && err.contains("256"),
        "{err}"
    );
}

#[test]
fn corrupt_safetensors_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let ds = small_dataset().to_str().unwrap().to_string();
    ember_ok(
        dir.path(),
        &[
            "train",
            "--dataset",
            &ds,
            "--out",
            "run",
            "--max-steps",
            "2",
            "--set",
            "train.warmup_steps=1",
            "--set",
            "train.batch_size=4",
        ],
    );
    let weights = dir.path().join("run/model/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = ember_err(
        dir.path(),
        &["generate", "--model", "run/model", "--max-new-tokens", "2"],
    );
    assert!(
        err.contains("model.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
}

#[test]
fn unknown_preset_lists_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    let ds = small_dataset().to_str().unwrap().to_string();
    let err = ember_err(
        dir.path(),
        &[
            "train",
            "--dataset",
            &ds,
            "--out",
            "run",
            "--set",
            "model.preset=huge",
        ],
    );
    assert!(err.contains("huge") && err.contains("mobile"), "{err}");
}
