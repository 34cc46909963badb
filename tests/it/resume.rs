//! Nothing already written is lost: a failed `data prepare` keeps the old dataset, a
//! re-prepare leaves no stale shards; resuming refuses a damaged state.json and a changed recipe.

use std::collections::BTreeSet;
use std::path::Path;

use crate::{ember_err, ember_ok, root, small_dataset};

fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_failed_prepare_keeps_the_old_dataset_and_a_new_one_leaves_no_stale_shards() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = root().join("tests/fixtures/moby_dick_excerpt.txt");
    let tok = small_dataset().join("tokenizer.json");
    let prepare = |seq: &str, input: &str| {
        vec![
            "data".to_string(),
            "prepare".into(),
            input.into(),
            "--tokenizer".into(),
            tok.to_str().unwrap().into(),
            "--out".into(),
            "ds".into(),
            "--seq-len".into(),
            seq.into(),
            "--val-fraction".into(),
            "0.1".into(),
            "--passage-bytes".into(),
            "1024".into(),
            "--shard-rows".into(),
            "8".into(),
        ]
    };
    let run_ok = |a: Vec<String>| {
        ember_ok(
            dir.path(),
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    run_ok(prepare("16", corpus.to_str().unwrap()));
    let ds = dir.path().join("ds");
    let before = files(&ds);
    let manifest = std::fs::read(ds.join("dataset.json")).unwrap();
    assert!(
        before.iter().filter(|f| f.ends_with(".arrow")).count() > 4,
        "{before:?}"
    );

    // a prepare that fails (a missing input) leaves the old dataset whole
    let a = prepare("16", "does-not-exist.txt");
    let err = ember_err(
        dir.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(err.contains("does-not-exist.txt"), "{err}");
    assert_eq!(files(&ds), before);
    assert_eq!(std::fs::read(ds.join("dataset.json")).unwrap(), manifest);
    // nor does one that fails midway, after tokenizing has begun (a bad JSONL line)
    std::fs::create_dir_all(dir.path().join("inputs")).unwrap();
    std::fs::write(
        dir.path().join("inputs/bad.jsonl"),
        format!("{{\"text\": {:?}}}\n{{\"body\": 1}}\n", "x ".repeat(3000)),
    )
    .unwrap();
    let a = prepare("16", "inputs/bad.jsonl");
    let err = ember_err(
        dir.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(err.contains("bad.jsonl"), "{err}");
    assert_eq!(files(&ds), before);
    assert_eq!(std::fs::read(ds.join("dataset.json")).unwrap(), manifest);
    // and no staging directory is left behind
    let top = || files(dir.path());
    assert_eq!(
        top(),
        BTreeSet::from(["ds".to_string(), "inputs".to_string()])
    );

    // a successful re-prepare with fewer shards: exactly the new dataset's files remain
    run_ok(prepare("64", corpus.to_str().unwrap()));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ds.join("dataset.json")).unwrap()).unwrap();
    let mut want: BTreeSet<String> = ["dataset.json", "tokenizer.json"].map(String::from).into();
    for split in m["splits"].as_object().unwrap().values() {
        for shard in split.as_array().unwrap() {
            want.insert(shard["file"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(files(&ds), want);
    assert!(want.len() < before.len(), "{want:?} vs {before:?}");
    assert_eq!(
        top(),
        BTreeSet::from(["ds".to_string(), "inputs".to_string()])
    );

    // a directory that is not a dataset is never replaced
    std::fs::create_dir_all(dir.path().join("notes")).unwrap();
    std::fs::write(dir.path().join("notes/todo.txt"), "keep me").unwrap();
    let mut a = prepare("16", corpus.to_str().unwrap());
    a[6] = "notes".into();
    let err = ember_err(
        dir.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        err.contains("notes") && err.contains("not a prepared dataset"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("notes/todo.txt")).unwrap(),
        "keep me"
    );
}

fn micro<'a>(ds: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = crate::train::micro_args(ds, "run", "6");
    v.extend([
        "--set",
        "model.num_hidden_layers=1",
        "--set",
        "train.batch_size=4",
        "--set",
        "train.checkpoint_every=3",
        "--set",
        "train.log_every=10",
        "--set",
        "train.warmup_steps=1",
    ]);
    v.extend_from_slice(extra);
    v
}

#[test]
fn resume_refuses_a_damaged_state_json_and_a_changed_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let ds = small_dataset().to_str().unwrap().to_string();
    ember_ok(dir.path(), &micro(&ds, &[]));
    let state = dir.path().join("run/checkpoints/step-00000006/state.json");
    let good = std::fs::read(&state).unwrap();

    std::fs::write(&state, b"{ not json").unwrap();
    let err = ember_err(dir.path(), &micro(&ds, &[]));
    assert!(
        err.contains("step-00000006/state.json") && err.contains("damaged"),
        "{err}"
    );
    std::fs::write(&state, br#"{"step": 3, "tokens": 0}"#).unwrap();
    let err = ember_err(dir.path(), &micro(&ds, &[]));
    assert!(
        err.contains("state.json") && err.contains("says step 3"),
        "{err}"
    );
    std::fs::write(&state, &good).unwrap();

    // another learning rate: refused, naming the key and both values; the recipe file is kept
    let recipe = std::fs::read(dir.path().join("run/train_config.toml")).unwrap();
    let err = ember_err(dir.path(), &micro(&ds, &["--set", "train.lr=0.5"]));
    assert!(err.contains("train.lr: 0.01 -> 0.5"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("run/train_config.toml")).unwrap(),
        recipe
    );
    // logging settings may change, and the change is reported
    let out = crate::ember(dir.path(), &micro(&ds, &["--set", "train.log_every=2"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("changed recipe: train.log_every: 10 -> 2"),
        "{stderr}"
    );
}

#[test]
fn a_recording_resumed_with_retrained_teacher_weights_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ds = small_dataset().to_str().unwrap().to_string();
    let teacher = dir.path().join("teacher");
    std::fs::create_dir_all(&teacher).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(crate::teacher::fixture("llama").join(f), teacher.join(f)).unwrap();
    }
    std::fs::copy(
        small_dataset().join("tokenizer.json"),
        teacher.join("tokenizer.json"),
    )
    .unwrap();
    let record = |rows: &str| {
        vec![
            "record".to_string(),
            "--teacher".into(),
            teacher.to_str().unwrap().into(),
            "--data".into(),
            ds.clone(),
            "--top-k".into(),
            "4".into(),
            "--out".into(),
            "rec".into(),
            "--max-rows".into(),
            rows.into(),
            "--shard-rows".into(),
            "8".into(),
            "--batch-size".into(),
            "4".into(),
        ]
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let first = record("8");
    ember_ok(dir.path(), &args(&first));
    // retrained in place: same config, same shapes, other values (one byte of every 4 KiB flipped)
    let path = teacher.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for i in (header..bytes.len()).step_by(4096) {
        bytes[i] ^= 0x01;
    }
    std::fs::write(&path, bytes).unwrap();
    let more = record("24");
    let err = ember_err(dir.path(), &args(&more));
    assert!(
        err.contains("other weights of teacher teacher") && err.contains("retrained"),
        "{err}"
    );
}

#[test]
fn the_student_loader_checks_before_allocating_and_reads_sharded_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let ds = small_dataset().to_str().unwrap().to_string();
    let mut args = micro(&ds, &[]);
    args[6] = "2";
    ember_ok(dir.path(), &args);
    let model = dir.path().join("run/model");
    let eval = |m: &Path| {
        crate::ember(
            dir.path(),
            &["eval", "--model", m.to_str().unwrap(), "--dataset", &ds],
        )
    };
    let loss = |m: &Path| -> f64 {
        let out = eval(m);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(m.join("eval.json")).unwrap()).unwrap();
        v["loss"].as_f64().unwrap()
    };
    let want = loss(&model);

    let variant = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["model.safetensors", "tokenizer.json"] {
            std::fs::copy(model.join(f), d.join(f)).unwrap();
        }
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
        edit(&mut cfg);
        std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
        d
    };
    // a config claiming 10^9 layers fails on the first missing one, without allocating
    let huge = variant("huge", &|c| {
        c["num_hidden_layers"] = 1_000_000_000u64.into()
    });
    let out = eval(&huge);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("missing tensor model.layers.1.self_attn.q_proj.weight"),
        "{err}"
    );
    // a negative epsilon is refused, naming it
    let eps = variant("eps", &|c| c["rms_norm_eps"] = (-1.0).into());
    let out = eval(&eps);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("rms_norm_eps -1"), "{err}");

    // the same weights in two shards with an index give the same loss
    let sharded = variant("sharded", &|_| {});
    std::fs::remove_file(sharded.join("model.safetensors")).unwrap();
    let bytes = std::fs::read(model.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (s, chunk) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", s + 1);
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = chunk
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        for n in chunk {
            weight_map.insert(n.clone(), file.clone().into());
        }
        safetensors::serialize_to_file(views, None, &sharded.join(&file)).unwrap();
    }
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    let got = loss(&sharded);
    assert!((got - want).abs() < 1e-9, "sharded {got} vs {want}");
}
