//! Teachers as real checkpoints ship: RoPE scaling in every spelling, Kimi K2, GLM-4.5,
//! MiniMax-M2, FP8 blocks; every math-changing config field honoured or refused.
//! Fixtures and transformers' logits: tests/fixtures/teachers/make_shipped_fixtures.py.

use std::collections::HashMap;
use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use ember_teacher::{Teacher, load_teacher};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

use crate::teacher::fixture;

const V: usize = 512;

/// (input_ids [2, t], logits [2, t, 512], t) computed by transformers in f32.
pub(crate) fn reference(name: &str) -> (Vec<i64>, Vec<f32>, usize) {
    let bytes = std::fs::read(fixture(name).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let t = ids.shape()[1];
    let ids = ids
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let logits = st.tensor("logits").unwrap();
    assert_eq!(logits.shape(), [2, t, V]);
    let logits = logits
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (ids, logits, t)
}

pub(crate) fn forward(
    teacher: &Teacher,
    ids: &[i64],
    b: usize,
    t: usize,
    pad: Option<Vec<bool>>,
) -> Vec<f32> {
    let device = Device::flex();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [b, t]), &device);
    let pad = pad.map(|p| Tensor::<2, Bool>::from_data(TensorData::new(p, [b, t]), &device));
    teacher
        .forward(ids, pad.as_ref())
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap()
}

/// Max |a - b| over the first `len` positions of row `ra` of `a` (`[*, ta, V]`) and row `rb` of `b`.
pub(crate) fn diff(
    a: &[f32],
    ta: usize,
    ra: usize,
    b: &[f32],
    tb: usize,
    rb: usize,
    len: usize,
) -> f32 {
    (0..len * V)
        .map(|i| (a[ra * ta * V + i] - b[rb * tb * V + i]).abs())
        .fold(0.0, f32::max)
}

/// Full batch, prefixes of row 1, and a right-padded batch, against transformers.
pub(crate) fn parity(name: &str) -> (f32, f32, f32) {
    let teacher = load_teacher(&fixture(name), &Device::flex(), DType::F32)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let (ids, want, t) = reference(name);
    let got = forward(&teacher, &ids, 2, t, None);
    let full = diff(&got, t, 0, &want, t, 0, t).max(diff(&got, t, 1, &want, t, 1, t));
    // dynamic RoPE depends on the length of the pass, so only full-length passes compare
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(name).join("meta.json")).unwrap()).unwrap();
    let dynamic = meta["dynamic_rope_needs_full_length"]
        .as_bool()
        .unwrap_or(false);
    let mut prefix = 0.0f32;
    if !dynamic {
        for len in [1usize, 5, 11, t - 3] {
            let got = forward(&teacher, &ids[t..t + len], 1, len, None);
            prefix = prefix.max(diff(&got, len, 0, &want, t, 1, len));
        }
    }
    // row 1 cut to 13 tokens and padded with id 0
    let mut padded = ids.clone();
    padded[t + 13..].iter_mut().for_each(|x| *x = 0);
    let mask: Vec<bool> = (0..2 * t).map(|i| i >= t + 13).collect();
    let got = forward(&teacher, &padded, 2, t, Some(mask));
    let pad = diff(&got, t, 0, &want, t, 0, t).max(diff(&got, t, 1, &want, t, 1, 13));
    (full, prefix, pad)
}

const SHIPPED: [(&str, &str); 9] = [
    (
        "deepseek_v3_yarn",
        "YaRN, legacy `type` spelling, mscale = mscale_all_dim",
    ),
    (
        "kimi_k2",
        "kimi_k2, YaRN beta_fast = beta_slow, 3 kv heads of 4",
    ),
    ("deepseek_v3_fp8", "FP8 e4m3 blocks [16, 24], YaRN"),
    ("llama_llama3", "llama3 RoPE (rope_scaling + rope_type)"),
    ("llama_linear", "linear RoPE (rope_parameters)"),
    (
        "llama_dynamic",
        "dynamic NTK RoPE past max_position_embeddings",
    ),
    ("qwen2_yarn", "YaRN with the derived attention factor"),
    (
        "glm4_moe",
        "glm4_moe: partial RoPE 0.5 (default), bias, q/k norm, MTP layer",
    ),
    (
        "minimax_m2",
        "minimax_m2: rotary_dim, whole-projection q/k norm",
    ),
];

#[test]
fn shipped_checkpoints_match_transformers_within_1e_4() {
    let mut table = vec![format!(
        "{:<18} {:>9} {:>9} {:>9}  {}",
        "fixture", "full", "prefixes", "padded", "feature"
    )];
    let mut failures = Vec::new();
    for (name, what) in SHIPPED {
        let (full, prefix, pad) = parity(name);
        table.push(format!(
            "{name:<18} {full:>9.2e} {prefix:>9.2e} {pad:>9.2e}  {what}"
        ));
        if full.max(prefix).max(pad) >= 1e-4 {
            failures.push(name);
        }
    }
    eprintln!(
        "shipped-checkpoint parity (max abs logit diff vs transformers f32):\n{}",
        table.join("\n")
    );
    assert!(failures.is_empty(), "{failures:?}\n{}", table.join("\n"));
}

/// Copy fixture `name` to a temporary directory with `edit` applied to its config.json.
fn edited(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(f), dir.path().join(f)).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
    dir
}

pub(crate) enum Expect {
    /// Loads, and the logits differ from the unedited checkpoint's (the field is read).
    Changes,
    /// Loads, and the logits equal the unedited checkpoint's (transformers ignores it too).
    Same,
    /// Refused with an error containing this text.
    Refused(&'static str),
}

#[test]
fn every_math_field_is_honoured_or_refused() {
    use Expect::*;
    use serde_json::json;
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let set =
        |k: &'static str, v: serde_json::Value| -> Edit { Box::new(move |c| c[k] = v.clone()) };
    let cases: Vec<FieldCase> = vec![
        // RoPE: every type, both spellings, bad settings
        (
            "llama",
            "rope_scaling linear",
            set("rope_scaling", json!({"type": "linear", "factor": 2.0})),
            Changes,
        ),
        (
            "llama",
            "rope_parameters linear",
            set(
                "rope_parameters",
                json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
            ),
            Changes,
        ),
        (
            "llama",
            "rope_scaling longrope",
            set(
                "rope_scaling",
                json!({"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}),
            ),
            Refused("rope_type \"longrope\" is not supported"),
        ),
        (
            "llama",
            "rope_scaling unknown type",
            set(
                "rope_scaling",
                json!({"rope_type": "ntk-by-parts", "factor": 2.0}),
            ),
            Refused("rope_type \"ntk-by-parts\""),
        ),
        (
            "llama",
            "yarn without factor",
            set(
                "rope_scaling",
                json!({"type": "yarn", "original_max_position_embeddings": 8}),
            ),
            Refused("needs rope setting factor"),
        ),
        (
            "llama",
            "llama3 without low_freq_factor",
            set(
                "rope_scaling",
                json!({"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
            ),
            Refused("low_freq_factor"),
        ),
        (
            "llama",
            "unknown rope setting",
            set(
                "rope_scaling",
                json!({"type": "linear", "factor": 2.0, "alpha": 3}),
            ),
            Refused("rope setting alpha"),
        ),
        (
            "llama",
            "top-level rope_theta beside rope_parameters.rope_theta (transformers keeps the dict's)",
            set("rope_theta", json!(500.0)),
            Same,
        ),
        (
            "llama",
            "top-level rope_theta alone",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("rope_parameters");
                c["rope_theta"] = json!(500.0);
            }),
            Changes,
        ),
        (
            "llama",
            "partial_rotary_factor",
            set("partial_rotary_factor", json!(0.5)),
            Refused("partial_rotary_factor 0.5"),
        ),
        (
            "llama",
            "rotary_dim",
            set("rotary_dim", json!(8)),
            Refused("rotary_dim 8"),
        ),
        (
            "glm4_moe",
            "glm partial_rotary_factor 1.0",
            set("partial_rotary_factor", json!(1.0)),
            Changes,
        ),
        (
            "minimax_m2",
            "minimax rotary_dim 16",
            set("rotary_dim", json!(16)),
            Changes,
        ),
        (
            "deepseek_v3_yarn",
            "yarn mscale_all_dim 0 (no softmax correction)",
            set(
                "rope_scaling",
                json!({"type": "yarn", "factor": 40, "mscale": 1.0, "mscale_all_dim": 0, "original_max_position_embeddings": 8}),
            ),
            Changes,
        ),
        (
            "deepseek_v3_yarn",
            "yarn beta_fast",
            set(
                "rope_scaling",
                json!({"type": "yarn", "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 8, "beta_fast": 0.2, "beta_slow": 0.1}),
            ),
            Changes,
        ),
        (
            "llama",
            "partial_rotary_factor inside a legacy rope_scaling",
            set(
                "rope_scaling",
                json!({"type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}),
            ),
            Refused("partial_rotary_factor 0.5"),
        ),
        (
            "llama",
            "zero rope_theta",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("rope_parameters");
                c["rope_theta"] = json!(0.0);
            }),
            Refused("rope_theta = 0 must be a positive number"),
        ),
        (
            "llama",
            "zero linear factor",
            set("rope_scaling", json!({"type": "linear", "factor": 0})),
            Refused("factor = 0 must be a positive number"),
        ),
        (
            "llama",
            "llama3 with equal low and high frequency factors",
            set(
                "rope_scaling",
                json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 2.0, "original_max_position_embeddings": 8}),
            ),
            Refused("equals low_freq_factor"),
        ),
        // norms, activations, biases, embeddings
        (
            "llama",
            "rms_norm_eps",
            set("rms_norm_eps", json!(0.5)),
            Changes,
        ),
        (
            "llama",
            "negative rms_norm_eps",
            set("rms_norm_eps", json!(-1.0)),
            Refused("rms_norm_eps -1"),
        ),
        (
            "llama",
            "hidden_act gelu",
            set("hidden_act", json!("gelu")),
            Refused("hidden_act \"gelu\""),
        ),
        (
            "llama",
            "mlp_bias",
            set("mlp_bias", json!(true)),
            Refused("mlp_bias"),
        ),
        (
            "llama",
            "attention_bias without bias tensors",
            set("attention_bias", json!(true)),
            Refused("q_proj.bias"),
        ),
        (
            "llama",
            "tie_word_embeddings with lm_head stored (transformers keeps lm_head)",
            set("tie_word_embeddings", json!(true)),
            Same,
        ),
        (
            "llama",
            "use_qk_norm on a model without q/k norms",
            set("use_qk_norm", json!(true)),
            Refused("use_qk_norm true"),
        ),
        // sliding windows and layer types
        (
            "qwen2",
            "use_sliding_window, all layers sliding",
            Box::new(|c| {
                c["use_sliding_window"] = json!(true);
                c["sliding_window"] = json!(4);
                c["max_window_layers"] = json!(0);
                c["layer_types"] = json!(null);
            }),
            Changes,
        ),
        (
            "qwen2",
            "sliding_window without use_sliding_window",
            Box::new(|c| {
                c["sliding_window"] = json!(4);
                c["use_sliding_window"] = json!(false);
            }),
            Same,
        ),
        (
            "qwen3",
            "sliding_window, use_sliding_window absent (transformers: off)",
            Box::new(|c| {
                c["sliding_window"] = json!(4);
                c.as_object_mut().unwrap().remove("use_sliding_window");
            }),
            Same,
        ),
        (
            "qwen3",
            "layer_types marks layer 1 sliding",
            Box::new(|c| {
                c["use_sliding_window"] = json!(true);
                c["sliding_window"] = json!(4);
                c["layer_types"] = json!(["full_attention", "sliding_attention"]);
            }),
            Changes,
        ),
        (
            "qwen3",
            "layer_types unknown entry",
            set("layer_types", json!(["full_attention", "linear_attention"])),
            Refused("linear_attention"),
        ),
        (
            "mixtral",
            "mixtral sliding_window",
            set("sliding_window", json!(4)),
            Changes,
        ),
        // routers
        (
            "deepseek_v3",
            "routed_scaling_factor",
            set("routed_scaling_factor", json!(1.0)),
            Changes,
        ),
        (
            "deepseek_v3",
            "norm_topk_prob",
            set("norm_topk_prob", json!(false)),
            Changes,
        ),
        (
            "deepseek_v3",
            "rope_interleave",
            set("rope_interleave", json!(false)),
            Changes,
        ),
        (
            "deepseek_v3",
            "scoring_func softmax",
            set("scoring_func", json!("softmax")),
            Refused("scoring_func \"softmax\""),
        ),
        (
            "deepseek_v3",
            "topk_method greedy",
            set("topk_method", json!("greedy")),
            Refused("topk_method \"greedy\""),
        ),
        (
            "deepseek_v3",
            "moe_layer_freq 2",
            set("moe_layer_freq", json!(2)),
            Refused("moe_layer_freq 2"),
        ),
        (
            "deepseek_v3",
            "n_group not dividing experts",
            set("n_group", json!(3)),
            Refused("n_group 3"),
        ),
        (
            "deepseek_v3",
            "MLA ignores num_key_value_heads",
            set("num_key_value_heads", json!(3)),
            Same,
        ),
        (
            "qwen3_moe",
            "qwen3_moe norm_topk_prob",
            set("norm_topk_prob", json!(false)),
            Changes,
        ),
        (
            "glm4_moe",
            "glm routed_scaling_factor",
            set("routed_scaling_factor", json!(1.0)),
            Changes,
        ),
        (
            "minimax_m2",
            "minimax attn_type_list with linear attention",
            set("attn_type_list", json!([0, 1])),
            Refused("attn_type_list"),
        ),
        (
            "minimax_m2",
            "minimax qk_norm_type per_head",
            set("qk_norm_type", json!("per_head")),
            Refused("qk_norm_type \"per_head\""),
        ),
        (
            "minimax_m2",
            "minimax residual scaling",
            set("layernorm_mlp_beta", json!(0.5)),
            Refused("layernorm_mlp_beta 0.5"),
        ),
        (
            "minimax_m2",
            "minimax shared experts",
            set("shared_intermediate_size", json!(64)),
            Refused("shared_intermediate_size 64"),
        ),
        // quantization
        (
            "deepseek_v3",
            "gptq",
            set(
                "quantization_config",
                json!({"quant_method": "gptq", "bits": 4}),
            ),
            Refused("quant_method \"gptq\""),
        ),
        (
            "deepseek_v3",
            "awq",
            set("quantization_config", json!({"quant_method": "awq"})),
            Refused("quant_method \"awq\""),
        ),
        (
            "deepseek_v3",
            "compressed-tensors int4",
            set(
                "quantization_config",
                json!({"quant_method": "compressed-tensors"}),
            ),
            Refused("quant_method \"compressed-tensors\""),
        ),
        (
            "deepseek_v3",
            "mxfp4",
            set("quantization_config", json!({"quant_method": "mxfp4"})),
            Refused("quant_method \"mxfp4\""),
        ),
        (
            "deepseek_v3_fp8",
            "fp8 e5m2",
            Box::new(|c| c["quantization_config"]["fmt"] = json!("e5m2")),
            Refused("fmt \"e5m2\""),
        ),
        (
            "deepseek_v3_fp8",
            "fp8 without block size",
            Box::new(|c| c["quantization_config"]["weight_block_size"] = json!(null)),
            Refused("weight_block_size"),
        ),
        (
            "deepseek_v3_fp8",
            "fp8 weights without quantization_config",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("quantization_config");
            }),
            Refused("is F8_E4M3 but config.json has no quantization_config"),
        ),
        (
            "deepseek_v3_fp8",
            "fp8 block size other than the scales'",
            Box::new(|c| c["quantization_config"]["weight_block_size"] = json!([32, 32])),
            Refused("weight_scale_inv"),
        ),
    ];
    check_field_cases(&cases);
}

/// A config edit of a fixture and what it must do.
pub(crate) type FieldCase = (
    &'static str,
    &'static str,
    Box<dyn Fn(&mut serde_json::Value)>,
    Expect,
);

/// Load each edited fixture and check the outcome against transformers' behaviour.
pub(crate) fn check_field_cases(cases: &[FieldCase]) {
    use Expect::*;
    let device = Device::flex();
    let mut base: HashMap<&str, (Vec<f32>, Vec<i64>)> = HashMap::new();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (name, what, edit, expect) in cases {
        let (ids, t) = {
            let bytes = std::fs::read(fixture(name).join("reference.safetensors")).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let ids = st.tensor("input_ids").unwrap();
            let t = ids.shape()[1];
            let ids: Vec<i64> = ids
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (ids, t)
        };
        let (base_logits, _) = base.entry(name).or_insert_with(|| {
            let teacher = load_teacher(&fixture(name), &device, DType::F32).unwrap();
            (forward(&teacher, &ids, 2, t, None), ids.clone())
        });
        let dir = edited(name, edit);
        let outcome = match load_teacher(dir.path(), &device, DType::F32) {
            Ok(teacher) => {
                let got = forward(&teacher, &ids, 2, t, None);
                let d = got
                    .iter()
                    .zip(base_logits.iter())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                Ok(d)
            }
            Err(e) => Err(e.to_string()),
        };
        let ok = match (expect, &outcome) {
            (Changes, Ok(d)) => *d > 1e-3,
            (Same, Ok(d)) => *d < 1e-6,
            (Refused(text), Err(e)) => e.contains(text),
            _ => false,
        };
        report.push(format!(
            "{} {name:<16} {what}: {}",
            if ok { "ok  " } else { "FAIL" },
            match &outcome {
                Ok(d) => format!("loads, max logit change {d:.3e}"),
                Err(e) => format!("refused: {e}"),
            }
        ));
        if !ok {
            failures.push(*what);
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{failures:?}\n{}", report.join("\n"));
}

/// The FP8 fixture with `edit` applied to its tensors.
fn fp8_variant(edit: impl FnOnce(&mut Vec<crate::OwnedTensor>)) -> tempfile::TempDir {
    let src = fixture("deepseek_v3_fp8");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    crate::rewrite_safetensors(
        &src.join("model.safetensors"),
        &dir.path().join("model.safetensors"),
        edit,
    );
    dir
}

fn load_err(dir: &Path) -> String {
    match load_teacher(dir, &Device::flex(), DType::F32) {
        Ok(_) => panic!("{} must not load", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_fp8_checkpoints_name_the_tensor() {
    let key = "model.layers.0.self_attn.q_a_proj.weight";
    // missing scale
    let dir = fp8_variant(|t| t.retain(|(n, ..)| n != &format!("{key}_scale_inv")));
    let err = load_err(dir.path());
    assert!(
        err.contains(key)
            && err.contains("has no")
            && err.contains("_scale_inv")
            && err.contains("[2, 3]"),
        "{err}"
    );
    // scale of the wrong shape
    let dir = fp8_variant(|t| {
        let s = t
            .iter_mut()
            .find(|(n, ..)| n == &format!("{key}_scale_inv"))
            .unwrap();
        s.2 = vec![3, 2];
    });
    let err = load_err(dir.path());
    assert!(
        err.contains(&format!("{key}_scale_inv"))
            && err.contains("[3, 2]")
            && err.contains("[2, 3]"),
        "{err}"
    );
    // an FP8 tensor that is not a 2-D weight
    let dir = fp8_variant(|t| {
        let s = t
            .iter_mut()
            .find(|(n, ..)| n == "model.norm.weight")
            .unwrap();
        s.1 = safetensors::Dtype::F8_E4M3;
        s.3 = vec![0x38; s.3.len() / 2];
    });
    let err = load_err(dir.path());
    assert!(
        err.contains("model.norm.weight") && err.contains("2-D"),
        "{err}"
    );
}

#[test]
fn f8_e4m3_decodes_every_byte_like_torch() {
    use ember_teacher::f8_e4m3_to_f32 as f;
    // values from torch.tensor(range(256), dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    assert_eq!(f(0x00), 0.0);
    assert_eq!(f(0x01), 2f32.powi(-9)); // smallest subnormal
    assert_eq!(f(0x07), 7.0 * 2f32.powi(-9));
    assert_eq!(f(0x08), 2f32.powi(-6)); // smallest normal
    assert_eq!(f(0x38), 1.0);
    assert_eq!(f(0x7e), 448.0); // largest finite
    assert!(f(0x7f).is_nan() && f(0xff).is_nan());
    assert_eq!(f(0xb8), -1.0);
    assert_eq!(f(0xfe), -448.0);
}

#[test]
fn kv_cache_decoding_matches_the_full_forward_for_every_architecture() {
    let device = Device::flex();
    let mut names: Vec<&str> = crate::teacher::ARCHS.to_vec();
    // dynamic RoPE is excluded: transformers too recomputes its base as the cache grows
    names.extend(
        SHIPPED
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| *n != "llama_dynamic"),
    );
    names.extend(crate::families::FAMILIES.iter().map(|(n, _)| *n));
    let mut table = Vec::new();
    let mut worst = 0.0f32;
    let mut check = |label: String, teacher: &Teacher, ids: &[i64]| {
        let t = ids.len();
        let full = forward(teacher, ids, 1, t, None);
        // prefill 5 positions, then one at a time
        let mut cache = teacher.new_cache();
        let mut got = Vec::with_capacity(t * V);
        let mut pos = 0;
        for len in std::iter::once(5).chain(std::iter::repeat(1)) {
            if pos >= t {
                break;
            }
            let len = len.min(t - pos);
            let x = Tensor::<2, Int>::from_data(
                TensorData::new(ids[pos..pos + len].to_vec(), [1, len]),
                &device,
            );
            let y = teacher.forward_cached(x, &mut cache);
            got.extend(y.into_data().try_into_vec_as::<f32>().unwrap());
            pos += len;
        }
        assert_eq!(cache.len, t);
        let d = diff(&got, t, 0, &full, t, 0, t);
        worst = worst.max(d);
        table.push(format!("{label:<24} {d:.2e}"));
    };
    for name in names {
        let teacher = load_teacher(&fixture(name), &device, DType::F32).unwrap();
        let (ids, _, t) = reference(name);
        check(name.to_string(), &teacher, &ids[t..2 * t]);
    }
    // a sliding window shorter than the sequence
    let dir = edited("mixtral", |c| c["sliding_window"] = serde_json::json!(4));
    let teacher = load_teacher(dir.path(), &device, DType::F32).unwrap();
    let (ids, _, t) = reference("mixtral");
    check("mixtral, sliding window 4".into(), &teacher, &ids[t..2 * t]);
    eprintln!(
        "KV-cache decoding vs full forward (max abs logit diff):\n{}",
        table.join("\n")
    );
    assert!(worst < 1e-4, "{}", table.join("\n"));
}

#[test]
fn experts_streamed_from_the_file_give_the_same_logits() {
    let device = Device::flex();
    for name in [
        "qwen3_moe",
        "mixtral",
        "deepseek_v3",
        "deepseek_v3_fp8",
        "kimi_k2",
        "glm4_moe",
        "minimax_m2",
        "deepseek_v32",
        "longcat_flash",
        "qwen3_next",
    ] {
        let (ids, _, t) = reference(name);
        let loaded =
            ember_teacher::load_teacher_with(&fixture(name), &device, DType::F32, Some(false))
                .unwrap();
        let streamed =
            ember_teacher::load_teacher_with(&fixture(name), &device, DType::F32, Some(true))
                .unwrap();
        let a = forward(&loaded, &ids, 2, t, None);
        let b = forward(&streamed, &ids, 2, t, None);
        assert_eq!(a, b, "{name}: streamed experts differ from loaded ones");
    }
    // a missing expert tensor is still an error at load time, naming it
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("qwen3_moe");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let key = "model.layers.1.mlp.experts.3.down_proj.weight";
    let views: Vec<(String, TensorView<'_>)> =
        st.tensors().into_iter().filter(|(n, _)| n != key).collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    let err = ember_teacher::load_teacher_with(dir.path(), &device, DType::F32, Some(true))
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains(key), "{err}");
}

#[test]
fn an_unknown_stream_experts_setting_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ds = crate::small_dataset().to_str().unwrap().to_string();
    let teacher = crate::record::teacher_dir(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "record",
            "--teacher",
            teacher.to_str().unwrap(),
            "--data",
            &ds,
            "--out",
            "rec",
            "--max-rows",
            "2",
        ])
        .current_dir(dir.path())
        .env("EMBER_STREAM_EXPERTS", "yes")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("EMBER_STREAM_EXPERTS=\"yes\""),
        "{err}"
    );
}
