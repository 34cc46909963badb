//! The compact logits formats (v2, v3) against full precision (v1), `ember logits convert`, and
//! the export to DistillKit's capture format checked by an independent decoder.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use ember_data::{LogitsCodec, LogitsManifest, read_logits_shard};

use crate::record::{record_args, teacher_dir};
use crate::{ember_err, ember_ok, python, small_dataset};

/// Run the reference python with `args`; its stdout as JSON.
fn run_python<S: AsRef<OsStr>>(args: &[S]) -> serde_json::Value {
    let out = Command::new(python()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `ember record` of the test teacher into `out` with `extra` arguments; its manifest. A
/// compact recording reports its encoding error.
fn record(
    dir: &std::path::Path,
    teacher: &str,
    ds: &str,
    out: &str,
    extra: &[&str],
) -> LogitsManifest {
    let mut args = record_args(teacher, out, ds);
    args.extend(extra);
    let text = ember_ok(dir, &args);
    assert!(
        extra.is_empty() || text.contains("KL(decoded || full precision) mean"),
        "{text}"
    );
    LogitsManifest::load(&dir.join(out)).unwrap()
}

/// Shift-free gap error: per position, (got - want) minus its value at the top entry.
/// `ember logits convert` of the v1 recording `full` into `converted` with `args` gives the
/// same rows as the recording `recorded`, made directly with those settings; returns the
/// command's output.
fn convert_gives_the_recorded_shard(dir: &Path, args: &[&str], recorded: &str) -> String {
    let mut all = vec!["logits", "convert", "--from", "full", "--out", "converted"];
    all.extend(args);
    let out = ember_ok(dir, &all);
    let (_, a) = read_logits_shard(&dir.join("converted/train-00001.arrow")).unwrap();
    let (_, b) = read_logits_shard(&dir.join(recorded).join("train-00001.arrow")).unwrap();
    assert_eq!(a, b, "converted vs recorded {recorded}");
    out
}

fn assert_within_grid(full: &[f32], got: &[f32], k: usize, step: f64) {
    for (f, g) in full.chunks_exact(k).zip(got.chunks_exact(k)) {
        let shift = (g[0] - f[0]) as f64;
        assert!(shift.abs() < step, "renormalisation shift {shift}");
        for j in 0..k {
            let e = (g[j] - f[j]) as f64 - shift;
            assert!(e.abs() <= step / 2.0 + 1e-5, "gap error {e} at rank {j}");
        }
        let tail = |l: &[f32]| 1.0 - l.iter().map(|&x| (x as f64).exp()).sum::<f64>();
        let (tf, tg) = (tail(f).max(0.0), tail(g));
        assert!(
            (tf - tg).abs() <= tf * tf.max(1e-30).ln().abs() * 2f64.powi(-10) + 2e-6,
            "tail {tg} vs {tf}"
        );
    }
}

#[test]
fn compact_recordings_decode_within_their_grid_at_a_fraction_of_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = teacher_dir(dir.path());
    let ds = small_dataset().to_str().unwrap().to_string();
    let teacher = teacher.to_str().unwrap();
    let full = record(dir.path(), teacher, &ds, "full", &[]);
    let compact = record(
        dir.path(),
        teacher,
        &ds,
        "compact",
        &["--format", "v2", "--logprob-step", "0.03125"],
    );
    assert_eq!((full.format_version, compact.format_version), (1, 2));
    let LogitsCodec::Compact(codec) = compact.meta.codec else {
        panic!("{:?}", compact.meta.codec)
    };
    assert_eq!((codec.mass, codec.step), (1.0, 0.03125));
    // 8 entries of 2-byte ids and ~1-byte gaps, zstd-compressed, against 4 + 8 x 8 bytes
    assert!(
        compact.bytes_per_token < full.bytes_per_token / 2.5,
        "{} vs {}",
        compact.bytes_per_token,
        full.bytes_per_token
    );
    let err = &compact.details["codec_error_this_run"];
    assert_eq!(err["positions"], 40 * 32);
    assert!(err["kl_mean"].as_f64().unwrap() < 1e-4, "{err}");
    for shard in ["train-00000.arrow", "train-00002.arrow"] {
        let (_, f) = read_logits_shard(&dir.path().join("full").join(shard)).unwrap();
        let (m, c) = read_logits_shard(&dir.path().join("compact").join(shard)).unwrap();
        assert_eq!(m.codec, compact.meta.codec);
        for (a, b) in f.iter().zip(&c) {
            assert_eq!(
                (a.row_index, &a.input_ids, &a.topk_ids),
                (b.row_index, &b.input_ids, &b.topk_ids)
            );
            assert_within_grid(&a.topk_logprobs, &b.topk_logprobs, 8, 0.03125);
        }
    }

    // converting the v1 recording gives the same shards; adaptive k keeps fewer entries
    let conv = convert_gives_the_recorded_shard(
        dir.path(),
        &["--format", "v2", "--logprob-step", "0.03125"],
        "compact",
    );
    assert!(conv.contains("format v2"), "{conv}");
    // a threshold that three entries reach at some positions and not at others
    let (_, full_rows) = read_logits_shard(&dir.path().join("full/train-00000.arrow")).unwrap();
    let mut m3: Vec<f64> = full_rows
        .iter()
        .flat_map(|r| {
            r.topk_logprobs
                .chunks_exact(8)
                .map(|p| p[..3].iter().map(|&l| (l as f64).exp()).sum::<f64>())
        })
        .collect();
    m3.sort_by(f64::total_cmp);
    let threshold = format!("{}", m3[m3.len() / 2]);
    ember_ok(
        dir.path(),
        &[
            "logits", "convert", "--from", "full", "--out", "adaptive", "--format", "v2", "--mass",
            &threshold, "--top-k", "6",
        ],
    );
    let adaptive = LogitsManifest::load(&dir.path().join("adaptive")).unwrap();
    let e = &adaptive.details["codec_error"];
    let mean = e["mean_entries"].as_f64().unwrap();
    assert!(mean > 2.0 && mean < 6.0, "{e}");
    let mass_threshold: f64 = threshold.parse::<f32>().unwrap() as f64;
    let (_, rows) = read_logits_shard(&dir.path().join("adaptive/train-00000.arrow")).unwrap();
    for (r, f) in rows.iter().zip(&full_rows) {
        for (p, (ids, lps)) in r
            .topk_ids
            .chunks_exact(6)
            .zip(r.topk_logprobs.chunks_exact(6))
            .enumerate()
        {
            let n = ids.iter().take_while(|&&i| i >= 0).count();
            assert!(
                ids[n..].iter().all(|&i| i == -1)
                    && lps[n..].iter().all(|&l| l == f32::NEG_INFINITY)
            );
            assert_eq!(ids[..n], f.topk_ids[p * 8..p * 8 + n]);
            // kept entries reach half the mass, one fewer would not
            let mass = |m: usize| {
                f.topk_logprobs[p * 8..p * 8 + m]
                    .iter()
                    .map(|&l| (l as f64).exp())
                    .sum::<f64>()
            };
            assert!(
                n == 6 || mass(n) >= mass_threshold - 1e-6,
                "position {p}: {n} entries, mass {}",
                mass(n)
            );
            assert!(n == 1 || mass(n - 1) < mass_threshold + 1e-6);
        }
    }

    // pyarrow reads the compressed v2 shard; its byte-plane ids are the v1 ids
    let script = r#"
import sys, json, numpy as np, pyarrow.ipc as ipc
c = ipc.open_file(sys.argv[1]).read_all(); f = ipc.open_file(sys.argv[2]).read_all()
md = {k.decode(): v.decode() for k, v in c.schema.metadata.items()}
ok = True
for r in range(c.num_rows):
    total = int(np.array(c.column("counts")[r].as_py()).sum())
    planes = np.frombuffer(c.column("ids")[r].as_py(), dtype=np.uint8).reshape(2, total).astype(np.int64)
    ids = (planes[0] | planes[1] << 8).tolist()
    ok &= ids == [i for pos in f.column("topk_ids")[r].as_py() for i in pos]
print(json.dumps({"version": md["ember.format_version"], "codec": json.loads(md["ember.codec"]),
                  "columns": c.schema.names, "ids_equal": bool(ok),
                  "tail_type": str(c.schema.field("tail_log").type)}))
"#;
    let v = run_python(&[
        OsStr::new("-c"),
        OsStr::new(script),
        dir.path().join("compact/train-00000.arrow").as_os_str(),
        dir.path().join("full/train-00000.arrow").as_os_str(),
    ]);
    assert_eq!(v["version"], "2");
    assert_eq!(v["codec"]["compression"], "zstd");
    assert_eq!(v["ids_equal"], true, "{v}");
    assert_eq!(
        v["columns"],
        serde_json::json!([
            "row_index",
            "input_ids",
            "counts",
            "tail_log",
            "ids",
            "gaps"
        ])
    );

    // a truncated shard is an error naming it, and resuming with other settings is refused
    let shard = dir.path().join("compact/train-00001.arrow");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let err = ember_err(
        dir.path(),
        &[
            "logits", "convert", "--from", "compact", "--out", "again", "--format", "v1",
        ],
    );
    assert!(err.contains("train-00001.arrow"), "{err}");
    std::fs::write(&shard, &bytes).unwrap();
    let mut other = record_args(teacher, "compact", &ds);
    other.extend(["--format", "v2", "--logprob-step", "0.0625"]);
    let err = ember_err(dir.path(), &other);
    assert!(err.contains("other settings"), "{err}");
}

#[test]
fn rans_coded_recordings_decode_to_the_compact_values_in_fewer_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = teacher_dir(dir.path());
    let ds = small_dataset().to_str().unwrap().to_string();
    let teacher = teacher.to_str().unwrap();
    let m2 = record(dir.path(), teacher, &ds, "v2", &["--format", "v2"]);
    let m3 = record(dir.path(), teacher, &ds, "v3", &["--format", "v3"]);
    assert_eq!((m2.format_version, m3.format_version), (2, 3));
    let LogitsCodec::Compact(codec) = m3.meta.codec else {
        panic!("{:?}", m3.meta.codec)
    };
    assert_eq!(codec.coder, ember_data::EntryCoder::Rans);
    // the same encoding error (the same grid), fewer bytes
    assert_eq!(
        m2.details["codec_error_this_run"],
        m3.details["codec_error_this_run"]
    );
    assert!(
        m3.bytes_per_token < m2.bytes_per_token,
        "{} vs {}",
        m3.bytes_per_token,
        m2.bytes_per_token
    );
    for shard in ["train-00000.arrow", "train-00002.arrow"] {
        let (_, a) = read_logits_shard(&dir.path().join("v2").join(shard)).unwrap();
        let (_, b) = read_logits_shard(&dir.path().join("v3").join(shard)).unwrap();
        assert_eq!(a, b, "v3 decodes to exactly the v2 values");
    }
    // converting a v1 recording gives the same shards
    record(dir.path(), teacher, &ds, "full", &[]);
    convert_gives_the_recorded_shard(dir.path(), &["--format", "v3"], "v3");
    // pyarrow reads the shard: the streams per row, the tables in the first row only
    let script = r#"
import sys, json, pyarrow.ipc as ipc
c = ipc.open_file(sys.argv[1]).read_all()
md = {k.decode(): v.decode() for k, v in c.schema.metadata.items()}
tables = [len(x.as_py()) for x in c.column("tables")]
print(json.dumps({"version": md["ember.format_version"], "codec": json.loads(md["ember.codec"]),
                  "columns": c.schema.names, "first_table": tables[0], "other_tables": sum(tables[1:]),
                  "streams": [len(x.as_py()) % 4 for x in c.column("coded")]}))
"#;
    let v = run_python(&[
        OsStr::new("-c"),
        OsStr::new(script),
        dir.path().join("v3/train-00000.arrow").as_os_str(),
    ]);
    assert_eq!(v["version"], "3");
    assert_eq!(v["codec"]["coder"], "rans");
    assert_eq!(
        v["columns"],
        serde_json::json!([
            "row_index",
            "input_ids",
            "counts",
            "tail_log",
            "coded",
            "tables"
        ])
    );
    assert!(
        v["first_table"].as_u64().unwrap() > 0 && v["other_tables"] == 0,
        "{v}"
    );
    assert!(
        v["streams"].as_array().unwrap().iter().all(|x| x == 0),
        "whole 32-bit words: {v}"
    );
}

#[test]
fn distillkit_exports_lose_no_more_than_distillkit_quantization() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = teacher_dir(dir.path());
    let ds = small_dataset().to_str().unwrap().to_string();
    let mut args = record_args(teacher.to_str().unwrap(), "full", &ds);
    args[10] = "6"; // --max-rows 6
    ember_ok(dir.path(), &args);
    let check = crate::root().join("tests/python/check_distillkit_export.py");
    let custom = dir.path().join("custom.yaml");
    // delta encoding and two residual bins, the knobs the presets leave off
    std::fs::write(
        &custom,
        "d: 512\nk: 8\nexact_k: 2\nexact_dtype: bfloat16\npolynomial_terms: [0, 1, 2, sqrt]\nterm_dtype: float32\n\
         residual_bins:\n- {scale_dtype: float16, element_bits: 8, num_elements: 4}\n- {scale_dtype: float16, element_bits: 2, num_elements: 2}\n\
         delta_encoding: true\nerror_diffusion: false\n",
    )
    .unwrap();
    for (name, extra) in [
        ("lossless", vec!["--preset", "lossless"]),
        ("recommended", vec!["--preset", "recommended"]),
        ("budget", vec!["--preset", "budget"]),
        ("custom", vec!["--config", custom.to_str().unwrap()]),
    ] {
        let cap = format!("cap-{name}");
        let mut a = vec![
            "logits",
            "export-distillkit",
            "--from",
            "full",
            "--out",
            &cap,
            "--rows-per-file",
            "4",
        ];
        a.extend(extra);
        let text = ember_ok(dir.path(), &a);
        assert!(
            text.contains("exported 6 rows (192 positions, 0 padded) into 2 Parquet files"),
            "{text}"
        );
        let v = run_python(&[
            check.clone(),
            dir.path().join("full"),
            dir.path().join(&cap),
        ]);
        assert_eq!(
            (v["positions"].as_u64(), v["ids_equal"].as_bool()),
            (Some(192), Some(true)),
            "{name}: {v}"
        );
        let (ours, reference) = (
            v["worst_export"].as_f64().unwrap(),
            v["worst_reference"].as_f64().unwrap(),
        );
        assert!(
            ours <= reference * 1.01 + 1e-5,
            "{name}: export error {ours} vs DistillKit's own {reference}"
        );
        if name == "lossless" {
            assert_eq!(ours, 0.0);
        } else {
            assert!(
                reference > 1e-4,
                "{name}: a lossy config that loses nothing? {reference}"
            );
        }
        // and back: Ember's importer reads what it exported
        let tok = teacher.join("tokenizer.json");
        let back = format!("back-{name}");
        ember_ok(
            dir.path(),
            &[
                "import",
                "distillkit",
                "--capture",
                &cap,
                "--tokenizer",
                tok.to_str().unwrap(),
                "--seq-len",
                "32",
                "--out",
                &back,
            ],
        );
        let (_, orig) = read_logits_shard(&dir.path().join("full/train-00000.arrow")).unwrap();
        let (_, got) =
            read_logits_shard(&dir.path().join(&back).join("train-00000.arrow")).unwrap();
        assert_eq!(got.len(), 6);
        let mut worst = 0f64;
        for (a, b) in orig.iter().zip(&got) {
            assert_eq!((&a.input_ids, &a.topk_ids), (&b.input_ids, &b.topk_ids));
            for (x, y) in a.topk_logprobs.iter().zip(&b.topk_logprobs) {
                worst = worst.max((x - y).abs() as f64);
            }
        }
        assert!(
            worst <= ours + 1e-5,
            "{name}: round trip {worst} vs decoded {ours}"
        );
    }
    let err = ember_err(
        dir.path(),
        &[
            "logits",
            "export-distillkit",
            "--from",
            "full",
            "--out",
            "x",
            "--top-k",
            "9",
        ],
    );
    assert!(err.contains("1..=8"), "{err}");
}
