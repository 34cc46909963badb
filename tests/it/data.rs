use ember_data::{DatasetManifest, Split, TokenDataset, load_tokenizer};

use crate::{ember_ok, python, root, small_dataset};

#[test]
fn prepared_dataset_round_trips_through_the_tokenizer() {
    let ds = small_dataset();
    let m = DatasetManifest::load(ds).unwrap();
    assert_eq!(m.seq_len, 32);
    assert_eq!(m.vocab_size, 512);
    let train = TokenDataset::open(ds, Split::Train).unwrap();
    let valid = TokenDataset::open(ds, Split::Validation).unwrap();
    assert_eq!(train.len(), m.rows(Split::Train));
    assert!(
        valid.len() > 0 && valid.len() < train.len() / 5,
        "validation {} train {}",
        valid.len(),
        train.len()
    );
    // every token of the excerpt lands in exactly one split (minus the tail that fills no row)
    let tok = load_tokenizer(&ds.join("tokenizer.json")).unwrap();
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/moby_dick_excerpt.txt")).unwrap();
    let whole = tok.encode(text.as_str(), false).unwrap().get_ids().len() as u64 + 1; // + EOS
    let total = m.train_tokens + m.validation_tokens + m.dropped_tokens;
    // passage-wise tokenization may merge differently at passage boundaries: allow 1%
    assert!(
        (total as f64 - whole as f64).abs() / (whole as f64) < 0.01,
        "{total} vs {whole}"
    );
    // the first training row decodes back into the text
    let ids: Vec<u32> = train.row(0).iter().map(|&t| t as u32).collect();
    let decoded = tok.decode(&ids, false).unwrap();
    assert!(text.contains(&decoded[..40]), "{decoded:?}");
    // a unigram model is a weak baseline: far above 1, below the vocabulary size
    assert!(
        m.unigram.validation_perplexity > 50.0 && m.unigram.validation_perplexity < 512.0,
        "{:?}",
        m.unigram
    );
}

#[test]
fn prepare_is_deterministic_for_a_seed_and_changes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let ds = small_dataset();
    let corpus = root().join("tests/fixtures/moby_dick_excerpt.txt");
    let tok = ds.join("tokenizer.json");
    let prep = |out: &str, seed: &str| {
        let args = [
            "data",
            "prepare",
            corpus.to_str().unwrap(),
            "--tokenizer",
            tok.to_str().unwrap(),
            "--out",
            out,
            "--seq-len",
            "32",
            "--seed",
            seed,
            "--shard-rows",
            "100",
            "--val-fraction",
            "0.2",
            "--passage-bytes",
            "1024",
        ];
        ember_ok(dir.path(), &args);
    };
    prep("a", "1");
    prep("b", "1");
    prep("c", "2");
    let read = |d: &str, f: &str| std::fs::read(dir.path().join(d).join(f)).unwrap();
    assert_eq!(
        read("a", "train-00000.arrow"),
        read("b", "train-00000.arrow")
    );
    assert_eq!(
        read("a", "validation-00000.arrow"),
        read("b", "validation-00000.arrow")
    );
    assert_ne!(
        read("a", "validation-00000.arrow"),
        read("c", "validation-00000.arrow")
    );
    let m = DatasetManifest::load(&dir.path().join("a")).unwrap();
    assert!(
        m.splits["train"].len() > 1,
        "100-row shards: expected several, got {:?}",
        m.splits["train"]
    );
    assert!(
        m.splits["train"][..m.splits["train"].len() - 1]
            .iter()
            .all(|s| s.rows == 100)
    );
    assert!(
        !dir.path().join("a").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp"))
    );
}

#[test]
fn pyarrow_reads_a_token_shard() {
    let ds = small_dataset();
    let train = TokenDataset::open(ds, Split::Train).unwrap();
    let script = r#"
import sys, json, pyarrow.ipc as ipc
t = ipc.open_file(sys.argv[1]).read_all()
md = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
print(json.dumps({"rows": t.num_rows, "type": str(t.schema.field("input_ids").type), "first": t.column("input_ids")[0].as_py()[:8], "meta": md}))
"#;
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(ds.join("train-00000.arrow"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["type"], "fixed_size_list<item: int32 not null>[32]");
    assert_eq!(v["meta"]["ember.format"], "ember-tokens");
    assert_eq!(v["meta"]["ember.split"], "train");
    let first: Vec<i64> = v["first"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let ours: Vec<i64> = train.row(0)[..8].iter().map(|&t| t as i64).collect();
    assert_eq!(first, ours);
}

#[test]
fn jsonl_input_uses_the_text_field_and_appends_eos_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let tok = small_dataset().join("tokenizer.json");
    let lines: Vec<String> = (0..200)
        .map(|i| {
            serde_json::json!({"id": i, "body": format!("Record {i}: the whale swam north.")})
                .to_string()
        })
        .collect();
    std::fs::write(dir.path().join("docs.jsonl"), lines.join("\n")).unwrap();
    let args = [
        "data",
        "prepare",
        "docs.jsonl",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--out",
        "ds",
        "--seq-len",
        "16",
        "--text-field",
        "body",
        "--val-fraction",
        "0",
    ];
    ember_ok(dir.path(), &args);
    let train = TokenDataset::open(&dir.path().join("ds"), Split::Train).unwrap();
    let eos = train.manifest.eos_token_id as i32;
    let all: Vec<i32> = (0..train.len())
        .flat_map(|r| train.row(r).to_vec())
        .collect();
    let n_eos = all.iter().filter(|&&t| t == eos).count();
    // one EOS per record; the last few records may sit in the dropped tail
    assert!((195..=200).contains(&n_eos), "{n_eos}");
}
