//! Teacher parity: Ember's forward pass against transformers' logits for every
//! architecture (fixtures built by tests/fixtures/teachers/make_fixtures.py).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use ember_teacher::{Teacher, load_teacher};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::root;

pub const ARCHS: [&str; 6] = [
    "llama",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "mixtral",
    "deepseek_v3",
];

pub fn fixture(arch: &str) -> PathBuf {
    root().join("tests/fixtures/teachers").join(arch)
}

/// (input_ids [2, 16], logits [2, 16, 512]) computed by transformers in f32.
fn reference(arch: &str) -> (Vec<i64>, Vec<f32>) {
    let bytes = std::fs::read(fixture(arch).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let ids: Vec<i64> = ids
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let logits = st.tensor("logits").unwrap();
    assert_eq!(logits.shape(), [2, 16, 512]);
    let logits = logits
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (ids, logits)
}

fn forward(
    teacher: &Teacher,
    ids: &[i64],
    b: usize,
    t: usize,
    pad: Option<Vec<bool>>,
    device: &Device,
) -> Vec<f32> {
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [b, t]), device);
    let pad = pad.map(|p| Tensor::<2, Bool>::from_data(TensorData::new(p, [b, t]), device));
    teacher
        .forward(ids, pad.as_ref())
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap()
}

/// Max |a - b| over positions `0..len` of row `row` (both `[rows, t, 512]` layouts).
fn row_diff(
    a: &[f32],
    a_t: usize,
    b: &[f32],
    b_t: usize,
    row: usize,
    brow: usize,
    len: usize,
) -> f32 {
    (0..len * 512)
        .map(|i| (a[row * a_t * 512 + i] - b[brow * b_t * 512 + i]).abs())
        .fold(0.0, f32::max)
}

#[test]
fn every_architecture_matches_transformers_within_1e_4() {
    let device = Device::flex();
    let mut table = Vec::new();
    for arch in ARCHS {
        let teacher = load_teacher(&fixture(arch), &device, DType::F32)
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        let (ids, want) = reference(arch);
        // full batch [2, 16]
        let got = forward(&teacher, &ids, 2, 16, None, &device);
        let full = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        // shorter sequences: prefixes of row 1
        let mut prefix = 0.0f32;
        for len in [1usize, 5, 11] {
            let got = forward(&teacher, &ids[16..16 + len], 1, len, None, &device);
            prefix = prefix.max(row_diff(&got, len, &want, 16, 0, 1, len));
        }
        // batch with right padding: row 0 whole, row 1 cut to 9 tokens and padded with id 0
        let mut padded = ids.clone();
        padded[16 + 9..].iter_mut().for_each(|x| *x = 0);
        let mask: Vec<bool> = (0..32).map(|i| i >= 16 + 9).collect();
        let got = forward(&teacher, &padded, 2, 16, Some(mask), &device);
        let pad =
            row_diff(&got, 16, &want, 16, 0, 0, 16).max(row_diff(&got, 16, &want, 16, 1, 1, 9));
        table.push(format!(
            "{arch:<12} full {full:.2e}  prefixes {prefix:.2e}  padded {pad:.2e}"
        ));
        for (what, d) in [
            ("full batch", full),
            ("prefixes", prefix),
            ("padded batch", pad),
        ] {
            assert!(
                d < 1e-4,
                "{arch} {what}: max abs diff {d}\n{}",
                table.join("\n")
            );
        }
    }
    eprintln!(
        "teacher parity (max abs diff vs transformers f32):\n{}",
        table.join("\n")
    );
}

/// Rewrite `src`'s weights into `dst` in `dtype`, split over `shards` files (with an index when > 1).
pub fn rewrite_checkpoint(src: &Path, dst: &Path, dtype: Dtype, shards: usize) {
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let converted: Vec<(String, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let v = st.tensor(n).unwrap();
            let vals: Vec<f32> = v
                .data()
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect();
            let out: Vec<u8> = match dtype {
                Dtype::F32 => vals.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Dtype::F16 => vals
                    .iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
                Dtype::BF16 => v.data().to_vec(),
                _ => unreachable!(),
            };
            (n.clone(), v.shape().to_vec(), out)
        })
        .collect();
    let per = converted.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (s, chunk) in converted.chunks(per).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", s + 1)
        };
        let views: Vec<(String, TensorView<'_>)> = chunk
            .iter()
            .map(|(n, shape, b)| (n.clone(), TensorView::new(dtype, shape.clone(), b).unwrap()))
            .collect();
        for (n, _, _) in chunk {
            weight_map.insert(n.clone(), file.clone().into());
        }
        safetensors::serialize_to_file(
            views,
            Some(HashMap::from([("format".to_string(), "pt".to_string())])),
            &dst.join(&file),
        )
        .unwrap();
    }
    if shards > 1 {
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dst.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
}

#[test]
fn sharded_f32_and_f16_checkpoints_load_to_the_same_logits() {
    let device = Device::flex();
    let (ids, want) = reference("qwen3_moe");
    for (dtype, shards, tol) in [
        (Dtype::F32, 3, 1e-4f32),
        (Dtype::F16, 1, 1e-4),
        (Dtype::BF16, 2, 1e-4),
    ] {
        let dir = tempfile::tempdir().unwrap();
        rewrite_checkpoint(&fixture("qwen3_moe"), dir.path(), dtype, shards);
        let teacher = load_teacher(dir.path(), &device, DType::F32).unwrap();
        let got = forward(&teacher, &ids, 2, 16, None, &device);
        let d = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        // bf16 -> f16 is exact for these small weights, so every variant matches
        assert!(d < tol, "{dtype:?} in {shards} shards: {d}");
    }
}

#[test]
fn bf16_compute_stays_close_to_f32() {
    let device = Device::flex();
    let (ids, want) = reference("llama");
    let teacher = load_teacher(&fixture("llama"), &device, DType::BF16).unwrap();
    let got = forward(&teacher, &ids, 2, 16, None, &device);
    let d = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // transformers' own bf16 forward differs from f32 by 0.025 on this fixture (meta.json)
    assert!(d > 0.0 && d < 0.1, "bf16 compute: {d}");
}

#[test]
fn broken_checkpoints_name_the_tensor_or_shard() {
    let device = Device::flex();
    // a shard listed in the index is missing
    let dir = tempfile::tempdir().unwrap();
    rewrite_checkpoint(&fixture("llama"), dir.path(), Dtype::BF16, 2);
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = load_teacher(dir.path(), &device, DType::F32)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("model-00002-of-00002.safetensors") && err.contains("does not exist"),
        "{err}"
    );

    // config says 3 layers, checkpoint has 2: the first missing tensor is named
    let dir = tempfile::tempdir().unwrap();
    rewrite_checkpoint(&fixture("llama"), dir.path(), Dtype::BF16, 1);
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["num_hidden_layers"] = 3.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = load_teacher(dir.path(), &device, DType::F32)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("missing tensor model.layers.2.self_attn.q_proj.weight")
            && err.contains("[64, 64]"),
        "{err}"
    );

    // wrong intermediate size: the mis-shaped tensor and both shapes are named
    cfg["num_hidden_layers"] = 2.into();
    cfg["intermediate_size"] = 96.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = load_teacher(dir.path(), &device, DType::F32)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("model.layers.0.mlp.gate_proj.weight")
            && err.contains("[128, 64]")
            && err.contains("[96, 64]"),
        "{err}"
    );

    // unsupported architecture
    cfg["model_type"] = "gpt2".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = load_teacher(dir.path(), &device, DType::F32)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("gpt2") && err.contains("deepseek_v3"), "{err}");
}

/// The teacher's float32 CPU matmuls through OpenBLAS (the default when libopenblas.so.0 is
/// installed, as scripts/test.sh does) record the same top-k as Burn's own kernels
/// (`EMBER_BLAS=0`), on a dense, a softmax-MoE and a sparse-attention MoE teacher.
#[test]
fn openblas_and_burn_matmuls_record_the_same_logits() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ds = crate::small_dataset().to_str().unwrap().to_string();
    for arch in ["llama", "qwen3_moe", "deepseek_v32"] {
        let teacher = crate::record::fixture_teacher_dir(d, arch);
        let mut rows = Vec::new();
        for (blas, expect) in [
            ("", "matmuls through libopenblas"),
            ("0", "matmuls in Burn"),
        ] {
            let out_dir = format!("{arch}-blas{blas}");
            let mut args = crate::record::record_args(teacher.to_str().unwrap(), &out_dir, &ds);
            args[12] = "8"; // --max-rows 8
            let out = Command::new(env!("CARGO_BIN_EXE_ember"))
                .args(&args)
                .current_dir(d)
                .env("EMBER_BLAS", blas)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{stderr}");
            assert!(
                stderr.contains(expect),
                "{arch} EMBER_BLAS={blas:?}: expected {expect:?} (is libopenblas0 installed?):\n{stderr}"
            );
            let (_, r) =
                ember_data::read_logits_shard(&d.join(&out_dir).join("train-00000.arrow")).unwrap();
            rows.push(r);
        }
        crate::record::assert_same_topk(&rows[0], &rows[1], 1e-5, arch);
    }
}
