//! Recording teacher logits: local teachers, resumption, vocabulary checks, and remote
//! teachers behind a real HTTP server (`ember serve`) speaking vLLM's and SGLang's protocols.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use burn::prelude::*;
use burn::tensor::DType;
use ember_data::{LogitsManifest, LogitsRow, read_logits_shard};
use ember_teacher::load_teacher;

use crate::teacher::fixture;
use crate::{ChildGuard, ember_err, ember_ok, python, small_dataset, spawn_server};

/// A teacher directory: the llama fixture plus the test dataset's tokenizer (both 512 ids).
pub fn teacher_dir(parent: &Path) -> PathBuf {
    fixture_teacher_dir(parent, "llama")
}

/// `ember record` from the served teacher `url` over `protocol`: top-8 of the first `rows` rows.
pub fn remote_record_args<'a>(
    protocol: &'a str,
    url: &'a str,
    ds: &'a str,
    out: &'a str,
    rows: &'a str,
) -> Vec<&'a str> {
    vec![
        "record",
        "--remote",
        protocol,
        "--url",
        url,
        "--model",
        "teacher",
        "--data",
        ds,
        "--top-k",
        "8",
        "--out",
        out,
        "--max-rows",
        rows,
        "--remote-vocab-size",
        "512",
    ]
}

/// Two recordings of the same rows: same inputs and top-k ids, log-probabilities within `tol`.
pub fn assert_same_topk(a: &[LogitsRow], b: &[LogitsRow], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: row counts");
    for (l, r) in a.iter().zip(b) {
        assert_eq!(l.input_ids, r.input_ids, "{what} row {}", l.row_index);
        assert_eq!(l.topk_ids, r.topk_ids, "{what} row {}", l.row_index);
        let d = l
            .topk_logprobs
            .iter()
            .zip(&r.topk_logprobs)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            d < tol,
            "{what} row {}: log-probabilities differ by {d}",
            l.row_index
        );
    }
}

/// The teacher fixture `arch` with the small dataset's tokenizer, in `<parent>/<arch>-teacher`.
pub fn fixture_teacher_dir(parent: &Path, arch: &str) -> PathBuf {
    let dir = parent.join(format!("{arch}-teacher"));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(arch).join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(
        small_dataset().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    dir
}

pub fn record_args<'a>(teacher: &'a str, out: &'a str, ds: &'a str) -> Vec<&'a str> {
    vec![
        "record",
        "--teacher",
        teacher,
        "--data",
        ds,
        "--top-k",
        "8",
        "--out",
        out,
        "--max-rows",
        "40",
        "--shard-rows",
        "16",
        "--batch-size",
        "4",
    ]
}

#[test]
fn local_recording_matches_the_teacher_and_reads_in_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = teacher_dir(dir.path());
    let ds = small_dataset().to_str().unwrap().to_string();
    let out = ember_ok(
        dir.path(),
        &record_args(teacher.to_str().unwrap(), "logits", &ds),
    );
    assert!(out.contains("bytes/token"), "{out}");
    let m = LogitsManifest::load(&dir.path().join("logits")).unwrap();
    assert_eq!(m.positions, 40 * 32);
    assert_eq!(
        m.shards.iter().map(|s| s.rows).collect::<Vec<_>>(),
        vec![16, 16, 8]
    );
    // 8 ids (4 B) + 8 logprobs (4 B) per position, plus the row's input id and Arrow framing
    assert!(
        m.bytes_per_token > 68.0 && m.bytes_per_token < 80.0,
        "{}",
        m.bytes_per_token
    );

    // recorded values are the teacher's own log-softmax top-k
    let (meta, rows) = read_logits_shard(&dir.path().join("logits/train-00001.arrow")).unwrap();
    assert_eq!(
        (meta.k, meta.seq_len, meta.vocab_size, meta.source.as_str()),
        (8, 32, 512, "local")
    );
    let row = &rows[3];
    assert_eq!(row.row_index, 19);
    let device = Device::flex();
    let t = load_teacher(&teacher, &device, DType::F32).unwrap();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(row.input_ids.clone(), [1, 32]), &device);
    let logits: Vec<f32> = t
        .forward(ids, None)
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    for p in [0usize, 17, 31] {
        let l = &logits[p * 512..(p + 1) * 512];
        let lse = l.iter().map(|x| x.exp()).sum::<f32>().ln();
        let mut order: Vec<usize> = (0..512).collect();
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        for j in 0..8 {
            assert_eq!(
                row.topk_ids[p * 8 + j],
                order[j] as i32,
                "position {p} rank {j}"
            );
            assert!((row.topk_logprobs[p * 8 + j] - (l[order[j]] - lse)).abs() < 1e-4);
        }
    }

    let script = r#"
import sys, json, math, pyarrow.ipc as ipc
t = ipc.open_file(sys.argv[1]).read_all()
md = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
lp = t.column("topk_logprobs").to_pylist()
tail = [1 - sum(math.exp(x) for x in pos) for row in lp for pos in row]
desc = all(pos[i] >= pos[i + 1] for row in lp for pos in row for i in range(len(pos) - 1))
print(json.dumps({"rows": t.num_rows, "types": [str(f.type) for f in t.schema], "k": md["ember.k"],
                  "min_tail": min(tail), "max_tail": max(tail), "sorted": desc}))
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(dir.path().join("logits/train-00000.arrow"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows"], 16);
    assert_eq!(v["k"], "8");
    assert_eq!(
        v["types"][2],
        "fixed_size_list<item: fixed_size_list<item: int32 not null>[8] not null>[32]"
    );
    assert_eq!(v["sorted"], true);
    // the tail mass outside the top 8 of 512 is a probability
    assert!(
        v["min_tail"].as_f64().unwrap() > -1e-5 && v["max_tail"].as_f64().unwrap() < 1.0,
        "{v}"
    );
}

#[test]
fn an_interrupted_recording_resumes_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = teacher_dir(dir.path());
    let ds = small_dataset().to_str().unwrap().to_string();
    let args = record_args(teacher.to_str().unwrap(), "logits", &ds);
    ember_ok(dir.path(), &args);
    let shard = |i: usize| dir.path().join(format!("logits/train-{i:05}.arrow"));
    let before: Vec<Vec<u8>> = (0..3).map(|i| std::fs::read(shard(i)).unwrap()).collect();
    // as after a kill during shard 1: shard 0 complete, shard 1 half-written, no manifest
    std::fs::remove_file(shard(1)).unwrap();
    std::fs::remove_file(shard(2)).unwrap();
    std::fs::write(dir.path().join("logits/train-00001.arrow.tmp"), b"partial").unwrap();
    std::fs::remove_file(dir.path().join("logits/logits.json")).unwrap();
    ember_ok(dir.path(), &args);
    let after: Vec<Vec<u8>> = (0..3).map(|i| std::fs::read(shard(i)).unwrap()).collect();
    assert!(
        before == after,
        "resumed shards differ from an uninterrupted recording"
    );
    let m = LogitsManifest::load(&dir.path().join("logits")).unwrap();
    assert_eq!(
        m.details["recorded_positions_this_run"],
        24 * 32,
        "only the missing rows were recomputed"
    );
    let rows: Vec<u64> = (0..3)
        .flat_map(|i| {
            read_logits_shard(&shard(i))
                .unwrap()
                .1
                .into_iter()
                .map(|r| r.row_index)
        })
        .collect();
    assert_eq!(rows, (0..40).collect::<Vec<_>>());

    // other settings in the same directory are refused, not mixed in
    let mut k4 = args.clone();
    k4[6] = "4";
    let err = ember_err(dir.path(), &k4);
    assert!(
        err.contains("train-00000.arrow") && err.contains("other settings"),
        "{err}"
    );
    // each setting that must be positive is named; a NaN temperature is refused too
    for (flag, value, named) in [
        ("--top-k", "0", "top-k: must be positive"),
        ("--batch-size", "0", "batch size: must be positive"),
        ("--temperature", "0", "temperature: must be positive"),
        ("--temperature", "NaN", "temperature: must be positive"),
    ] {
        let mut bad = args.clone();
        match bad.iter().position(|a| *a == flag) {
            Some(i) => bad[i + 1] = value,
            None => bad.extend([flag, value]),
        }
        let err = ember_err(dir.path(), &bad);
        assert!(err.contains(named), "{flag} {value}: {err}");
    }
}

#[test]
fn a_teacher_with_another_tokenizer_or_a_smaller_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = teacher_dir(dir.path());
    let ds = small_dataset().to_str().unwrap().to_string();
    // another tokenizer: trained on other text
    let other = dir.path().join("other.txt");
    std::fs::write(
        &other,
        "completely different text about ships and whales and rope ".repeat(200),
    )
    .unwrap();
    ember_ok(
        dir.path(),
        &[
            "tokenizer",
            "train",
            other.to_str().unwrap(),
            "--out",
            teacher.join("tokenizer.json").to_str().unwrap(),
            "--vocab-size",
            "300",
        ],
    );
    let err = ember_err(
        dir.path(),
        &record_args(teacher.to_str().unwrap(), "logits", &ds),
    );
    assert!(
        err.contains("tokenizer mismatch")
            && err.contains("llama-teacher")
            && err.contains("prepare"),
        "{err}"
    );
    assert!(
        !dir.path().join("logits").exists()
            || std::fs::read_dir(dir.path().join("logits"))
                .unwrap()
                .count()
                == 0
    );
}

/// Start `ember serve` on a free loopback port; returns the guard and the base URL.
pub fn start_server(model: &Path, extra: &[&str]) -> (ChildGuard, String) {
    spawn_server(
        Command::new(env!("CARGO_BIN_EXE_ember"))
            .args([
                "serve",
                "--model",
                model.to_str().unwrap(),
                "--addr",
                "127.0.0.1:0",
                "--served-model-name",
                "teacher",
            ])
            .args(extra)
            .stderr(Stdio::inherit()),
    )
}

#[test]
fn remote_recording_over_vllm_and_sglang_protocols_matches_local() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = teacher_dir(dir.path());
    let ds = small_dataset().to_str().unwrap().to_string();
    let mut local = record_args(teacher.to_str().unwrap(), "local", &ds);
    local[12] = "8"; // --max-rows 8
    ember_ok(dir.path(), &local);
    let (_server, url) = start_server(&teacher, &[]);
    for protocol in ["vllm", "sglang"] {
        let out = format!("remote-{protocol}");
        ember_ok(
            dir.path(),
            &remote_record_args(protocol, &url, &ds, &out, "8"),
        );
        let (lm, lrows) = read_logits_shard(&dir.path().join("local/train-00000.arrow")).unwrap();
        let (rm, rrows) =
            read_logits_shard(&dir.path().join(&out).join("train-00000.arrow")).unwrap();
        assert_eq!(rm.source, protocol);
        assert_eq!(
            (rm.k, rm.seq_len, rm.tokenizer_sha256.clone()),
            (lm.k, lm.seq_len, lm.tokenizer_sha256.clone())
        );
        assert_same_topk(&lrows, &rrows, 1e-4, protocol);
    }
    // a remote teacher whose vocabulary is smaller than the tokenizer is refused
    let err = ember_err(
        dir.path(),
        &[
            "record",
            "--remote",
            "vllm",
            "--url",
            &url,
            "--model",
            "teacher",
            "--data",
            &ds,
            "--out",
            "x",
            "--remote-vocab-size",
            "256",
        ],
    );
    assert!(err.contains("256") && err.contains("512"), "{err}");
}

#[test]
fn the_server_answers_bad_requests_with_4xx_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = teacher_dir(dir.path());
    let (_server, url) = start_server(&teacher, &["--max-logprobs", "5"]);
    let post = |path: &str, body: &str| match ureq::post(&format!("{url}{path}"))
        .set("Content-Type", "application/json")
        .send_string(body)
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    };
    let cases = [
        ("/v1/completions", "{not json", 400, "not valid JSON"),
        (
            "/v1/completions",
            r#"{"prompt": [1, 2], "prompt_logprobs": 9}"#,
            400,
            "greater than max allowed: 5",
        ),
        (
            "/v1/completions",
            r#"{"prompt": [1, 99999]}"#,
            400,
            "outside the vocabulary",
        ),
        (
            "/v1/completions",
            r#"{"prompt": [1, 2], "max_tokens": 0}"#,
            400,
            "max_tokens must be at least 1",
        ),
        (
            "/v1/completions",
            r#"{"model": "other", "prompt": [1]}"#,
            404,
            "does not exist",
        ),
        (
            "/generate",
            r#"{"input_ids": "x", "top_logprobs_num": 2}"#,
            400,
            "`input_ids`: invalid type: string",
        ),
        ("/nope", "{}", 404, "no route"),
    ];
    for (path, body, code, needle) in cases {
        let (status, text) = post(path, body);
        assert_eq!(status, code, "{path} {body}: {text}");
        assert!(text.contains(needle), "{path} {body}: {text}");
    }
    // still serving, and greedy completion is deterministic
    let (status, text) = post(
        "/v1/completions",
        r#"{"prompt": [1, 17, 42], "max_tokens": 3, "temperature": 0, "logprobs": 2}"#,
    );
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["choices"][0]["token_ids"].as_array().unwrap().len(), 3);
    assert_eq!(
        v["choices"][0]["logprobs"]["top_logprobs"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn distillkit_captures_import_exactly_when_lossless_and_as_decoded_when_lossy() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = teacher_dir(dir.path());
    let ds = small_dataset().to_str().unwrap().to_string();
    let mut args = record_args(teacher.to_str().unwrap(), "local", &ds);
    args[12] = "6"; // --max-rows 6
    ember_ok(dir.path(), &args);
    let shard = dir.path().join("local/train-00000.arrow");
    let (_, original) = read_logits_shard(&shard).unwrap();
    let script = crate::root().join("tests/python/make_distillkit_capture.py");
    for mode in ["lossless", "lossy"] {
        let capture = dir.path().join(format!("capture-{mode}"));
        let out = Command::new(python())
            .arg(&script)
            .arg(&shard)
            .arg(&capture)
            .arg(mode)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let imported = format!("imported-{mode}");
        let tok = teacher.join("tokenizer.json");
        let text = ember_ok(
            dir.path(),
            &[
                "import",
                "distillkit",
                "--capture",
                capture.to_str().unwrap(),
                "--tokenizer",
                tok.to_str().unwrap(),
                "--seq-len",
                "16",
                "--out",
                &imported,
            ],
        );
        assert!(
            text.contains("imported 192 positions (12 rows of 16, k=8)"),
            "{text}"
        );
        let m = LogitsManifest::load(&dir.path().join(&imported)).unwrap();
        assert_eq!(m.meta.source, "distillkit");
        let (_, rows) =
            read_logits_shard(&dir.path().join(&imported).join("train-00000.arrow")).unwrap();
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(capture.join("expected.json")).unwrap()).unwrap();
        let mut worst_vs_decoder = 0.0f64;
        let mut worst_vs_original = 0.0f64;
        for (i, row) in rows.iter().enumerate() {
            // imported row i is window i % 2 of capture row i / 2 (32 positions -> two windows of 16)
            let (src, off) = (&original[i / 2], (i % 2) * 16);
            assert_eq!(row.input_ids, src.input_ids[off..off + 16]);
            assert_eq!(
                row.topk_ids,
                src.topk_ids[off * 8..(off + 16) * 8],
                "row {i}"
            );
            for p in 0..16 {
                for j in 0..8 {
                    let got = row.topk_logprobs[p * 8 + j] as f64;
                    let dec = expected["logprobs"][i / 2][off + p][j].as_f64().unwrap();
                    worst_vs_decoder = worst_vs_decoder.max((got - dec).abs());
                    worst_vs_original = worst_vs_original
                        .max((got - src.topk_logprobs[(off + p) * 8 + j] as f64).abs());
                }
            }
        }
        assert!(
            worst_vs_decoder < 1e-4,
            "{mode}: vs reference decoder {worst_vs_decoder}"
        );
        if mode == "lossless" {
            assert_eq!(worst_vs_original, 0.0, "lossless import must be exact");
        } else {
            assert!(
                worst_vs_original > 1e-4 && worst_vs_original < 0.5,
                "lossy error {worst_vs_original}"
            );
        }
    }
}

#[test]
fn the_server_keeps_answering_concurrent_clients() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = teacher_dir(dir.path());
    let (_server, url) = start_server(&teacher, &[]);
    let start = std::time::Instant::now();
    let (clients, per_client) = (4i64, 8i64);
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                (0..per_client)
                    .map(|i| {
                        let prompt: Vec<i64> = (0..32).map(|j| (j * 7 + i * 13 + c * 31) % 512).collect();
                        let body = serde_json::json!({"prompt": prompt, "max_tokens": 1, "prompt_logprobs": 5});
                        match ureq::post(&format!("{url}/v1/completions")).send_json(body) {
                            Ok(r) => {
                                let v: serde_json::Value = r.into_json().unwrap();
                                v["choices"][0]["prompt_logprobs"].as_array().map(|a| a.len()).unwrap_or(0)
                            }
                            Err(e) => panic!("client {c} request {i}: {e}"),
                        }
                    })
                    .collect::<Vec<usize>>()
            })
        })
        .collect();
    let lens: Vec<usize> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(lens.len() as i64, clients * per_client);
    assert!(
        lens.iter().all(|&n| n == 32),
        "every answer carries 32 prompt positions: {lens:?}"
    );
    eprintln!(
        "{} requests from {clients} concurrent clients in {secs:.2}s: {:.1} requests/s",
        lens.len(),
        lens.len() as f64 / secs
    );
}
