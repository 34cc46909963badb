//! Instruction datasets: chat-template rows with prompt-masked labels, fine-tuning from a
//! checkpoint, and held-out answer loss / exact match.

use std::path::Path;

use ember_data::{Split, TokenDataset, load_tokenizer};

use crate::{SMALL_STUDENT, ember_ok, python, root, small_dataset};

/// The first `n` records of datasets/logistics/<file>.
fn head(dir: &Path, file: &str, n: usize) -> std::path::PathBuf {
    let text = std::fs::read_to_string(root().join("datasets/logistics").join(file)).unwrap();
    let out = dir.join(file);
    let lines: Vec<&str> = text.lines().take(n).collect();
    std::fs::write(&out, lines.join("\n") + "\n").unwrap();
    out
}

#[test]
fn chat_rows_mask_the_prompt_and_padding_and_fine_tuning_lowers_the_answer_loss() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tok = small_dataset().join("tokenizer.json");
    let train = head(d, "train.jsonl", 64);
    let test = head(d, "test.jsonl", 8);
    let prepare = |records: &Path, out: &str| {
        ember_ok(
            d,
            &[
                "data",
                "prepare-chat",
                "--train",
                records.to_str().unwrap(),
                "--validation",
                test.to_str().unwrap(),
                "--tokenizer",
                tok.to_str().unwrap(),
                "--out",
                out,
                "--seq-len",
                "512",
            ],
        )
    };
    let out = prepare(&train, "sft");
    assert!(out.contains("64 train + 8 validation records"), "{out}");

    // rows: prompt, answer + EOS, padding; labels carry exactly the answer + EOS
    let ds = TokenDataset::open(&d.join("sft"), Split::Train).unwrap();
    let tokenizer = load_tokenizer(&tok).unwrap();
    let eos = ds.manifest.eos_token_id as i32;
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&train)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let (ids, labels) = (ds.row(0), ds.labels(0).unwrap());
    let kept: Vec<u32> = labels
        .iter()
        .filter(|&&l| l >= 0)
        .map(|&l| l as u32)
        .collect();
    assert_eq!(
        *kept.last().unwrap() as i32,
        eos,
        "the answer ends with EOS"
    );
    let answer = tokenizer.decode(&kept[..kept.len() - 1], false).unwrap();
    assert_eq!(answer, first["answer"].as_str().unwrap());
    let prompt_len = labels.iter().take_while(|&&l| l < 0).count();
    let prompt = tokenizer
        .decode(
            &ids[..prompt_len]
                .iter()
                .map(|&t| t as u32)
                .collect::<Vec<_>>(),
            false,
        )
        .unwrap();
    assert!(
        prompt.starts_with("### Instruction:\n") && prompt.ends_with("### Response:\n"),
        "{prompt:?}"
    );
    assert!(prompt.contains(first["instruction"].as_str().unwrap()));
    let end = prompt_len + kept.len();
    assert!(ids[end..].iter().all(|&t| t == eos) && labels[end..].iter().all(|&l| l == -100));

    // pyarrow reads both columns
    let shard = d.join("sft/train-00000.arrow");
    let code = "import sys, pyarrow.ipc as ipc\nt = ipc.open_file(sys.argv[1]).read_all()\nprint(t.column_names, t.num_rows, sum(1 for x in t.column('labels')[0].as_py() if x >= 0))";
    let py = std::process::Command::new(python())
        .args(["-c", code, shard.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&py.stdout);
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    assert_eq!(
        text.trim(),
        format!("['input_ids', 'labels'] 64 {}", kept.len())
    );

    // a small base model, then fine-tuned from it on the answers only
    let mut base_args = vec![
        "train",
        "--dataset",
        small_dataset().to_str().unwrap(),
        "--out",
        "base",
        "--max-steps",
        "10",
        "--set",
        "train.warmup_steps=2",
    ];
    base_args.extend(SMALL_STUDENT);
    ember_ok(d, &base_args);
    let eval = |model: &str, name: &str| -> serde_json::Value {
        let report = d.join(name);
        ember_ok(
            d,
            &[
                "eval-chat",
                "--model",
                model,
                "--data",
                test.to_str().unwrap(),
                "--max-new-tokens",
                "24",
                "--out",
                report.to_str().unwrap(),
            ],
        );
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
    };
    let before = eval("base/model", "before.json");
    ember_ok(
        d,
        &[
            "train",
            "--dataset",
            "sft",
            "--out",
            "tuned",
            "--max-steps",
            "40",
            "--set",
            "train.init_from=\"base/model\"",
            "--set",
            "train.warmup_steps=2",
            "--set",
            "train.batch_size=8",
            "--set",
            "train.lr=3e-3",
        ],
    );
    let after = eval("tuned/model", "after.json");
    let (b, a) = (
        before["answer_loss"].as_f64().unwrap(),
        after["answer_loss"].as_f64().unwrap(),
    );
    eprintln!("answer loss before {b:.3}, after 40 fine-tuning steps {a:.3}");
    assert!(
        a < b - 0.5,
        "fine-tuning on the answers must lower their loss: {b} -> {a}"
    );
    assert_eq!(after["overall"]["records"], 8);
    assert!(after["per_category"].as_object().unwrap().len() >= 2);
    // offline distillation on instruction data takes its targets from the labels column, by
    // each recorded row's index: logits recorded on this dataset distil; on other rows they are refused
    ember_ok(
        d,
        &[
            "record",
            "--teacher",
            "tuned/model",
            "--data",
            "sft",
            "--split",
            "train",
            "--top-k",
            "8",
            "--out",
            "lg",
        ],
    );
    let recipe = "[teacher]\nlogits = \"lg\"\n[distill]\nce_weight = 0.5\n";
    std::fs::write(d.join("kd.toml"), recipe).unwrap();
    let kd = [
        "distill",
        "--config",
        "kd.toml",
        "--dataset",
        "sft",
        "--out",
        "kd",
        "--max-steps",
        "10",
        "--set",
        "train.init_from=\"base/model\"",
        "--set",
        "train.warmup_steps=2",
        "--set",
        "train.batch_size=8",
    ];
    ember_ok(d, &kd);
    let kd_eval = eval("kd/model", "kd.json");
    assert!(
        kd_eval["answer_loss"].as_f64().unwrap() < b,
        "offline KD on the answers lowers their loss"
    );
    let other = head(d, "test.jsonl", 64); // other records, same tokenizer and shape
    prepare(&other, "sft2");
    let mut wrong = kd.to_vec();
    wrong[4] = "sft2";
    wrong[6] = "kd2";
    let err = crate::ember_err(d, &wrong);
    assert!(err.contains("does not hold the tokens"), "{err}");

    // the resolved recipe records where the weights came from
    let recipe = std::fs::read_to_string(d.join("tuned/train_config.toml")).unwrap();
    assert!(recipe.contains("init_from = \"base/model\""), "{recipe}");
}
