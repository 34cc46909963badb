//! The newest teacher families against transformers: DeepSeek-V3.2 sparse attention,
//! LongCat-Flash, Qwen3-Next. Fixtures and transformers' logits:
//! tests/fixtures/teachers/make_family_fixtures.py.

use burn::prelude::*;
use burn::tensor::DType;
use ember_teacher::load_teacher;
use serde_json::json;

use crate::shipped::{Expect, FieldCase, check_field_cases, diff, forward, parity, reference};
use crate::teacher::fixture;

pub const FAMILIES: [(&str, &str); 4] = [
    (
        "deepseek_v32",
        "MLA + DSA indexer, index_topk 6 of 24 keys, YaRN",
    ),
    (
        "deepseek_v32_fp8",
        "the same as shipped: FP8 e4m3 blocks [16, 24], indexer wq_b/wk too",
    ),
    (
        "longcat_flash",
        "2 MLA+MLP blocks per layer, shortcut MoE, 2 identity experts",
    ),
    (
        "qwen3_next",
        "Gated DeltaNet + gated attention, length 80 (chunks 64 + 16)",
    ),
];

#[test]
fn new_families_match_transformers_within_1e_4() {
    let mut table = vec![format!(
        "{:<14} {:>9} {:>9} {:>9}  {}",
        "fixture", "full", "prefixes", "padded", "feature"
    )];
    let mut failures = Vec::new();
    for (name, what) in FAMILIES {
        let (full, prefix, pad) = parity(name);
        table.push(format!(
            "{name:<14} {full:>9.2e} {prefix:>9.2e} {pad:>9.2e}  {what}"
        ));
        if full.max(prefix).max(pad) >= 1e-4 {
            failures.push(name);
        }
    }
    eprintln!(
        "new-family parity (max abs logit diff vs transformers f32):\n{}",
        table.join("\n")
    );
    assert!(failures.is_empty(), "{failures:?}\n{}", table.join("\n"));
}

/// The indexer's choice matters on this fixture: keeping every key gives other logits, and
/// Ember's sparse result is transformers' (the parity test), so the sparsity is exact.
#[test]
fn deepseek_v32_sparsity_changes_the_logits() {
    let device = Device::flex();
    let (ids, want, t) = reference("deepseek_v32");
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("deepseek_v32").join(f), dir.path().join(f)).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg["index_topk"] = json!(t);
    std::fs::write(&path, cfg.to_string()).unwrap();
    let dense = load_teacher(dir.path(), &device, DType::F32).unwrap();
    let got = forward(&dense, &ids, 2, t, None);
    let d = diff(&got, t, 0, &want, t, 0, t).max(diff(&got, t, 1, &want, t, 1, t));
    assert!(
        d > 1e-2,
        "all keys vs top-6 keys: max logit change only {d}"
    );
    // the first index_topk positions see at most index_topk keys: there, nothing changes
    let early = diff(&got, t, 0, &want, t, 0, 6).max(diff(&got, t, 1, &want, t, 1, 6));
    assert!(early < 1e-4, "positions < index_topk changed by {early}");
}

#[test]
fn new_family_fields_are_honoured_or_refused() {
    use Expect::*;
    let set = |k: &'static str, v: serde_json::Value| -> Box<dyn Fn(&mut serde_json::Value)> {
        Box::new(move |c| c[k] = v.clone())
    };
    let cases: Vec<FieldCase> = vec![
        (
            "deepseek_v32",
            "index_topk 3",
            set("index_topk", json!(3)),
            Changes,
        ),
        (
            "deepseek_v32",
            "rope_interleave false",
            set("rope_interleave", json!(false)),
            Refused("rope_interleave false is not supported by deepseek_v32"),
        ),
        (
            "deepseek_v32",
            "q_lora_rank null",
            set("q_lora_rank", json!(null)),
            Refused("q_lora_rank null is not supported by deepseek_v32"),
        ),
        (
            "deepseek_v32",
            "index_head_dim below the rotary dims",
            set("index_head_dim", json!(4)),
            Refused("index_head_dim 4 is smaller than qk_rope_head_dim 8"),
        ),
        (
            "deepseek_v32",
            "a layer type other than indexed_attention",
            set(
                "layer_types",
                json!(["indexed_attention", "full_attention"]),
            ),
            Refused("layer_types entry \"full_attention\""),
        ),
        (
            "deepseek_v32",
            "mlp_layer_types of the wrong length",
            set("mlp_layer_types", json!(["dense"])),
            Refused("mlp_layer_types"),
        ),
        (
            "deepseek_v32",
            "softmax scoring",
            set("scoring_func", json!("softmax")),
            Refused("scoring_func \"softmax\""),
        ),
        (
            "longcat_flash",
            "routed_scaling_factor",
            set("routed_scaling_factor", json!(1.0)),
            Changes,
        ),
        (
            "longcat_flash",
            "num_hidden_layers beside num_layers, consistent",
            set("num_hidden_layers", json!(4)),
            Same,
        ),
        (
            "longcat_flash",
            "num_hidden_layers disagreeing with num_layers",
            set("num_hidden_layers", json!(2)),
            Refused("num_layers 2 and num_hidden_layers 2 disagree"),
        ),
        (
            "longcat_flash",
            "router_bias true",
            set("router_bias", json!(true)),
            Refused("router_bias true is not supported by longcat_flash"),
        ),
        (
            "longcat_flash",
            "zero experts other than identity",
            set("zero_expert_type", json!("zero")),
            Refused("zero_expert_type \"zero\""),
        ),
        (
            "longcat_flash",
            "mla_scale_q_lora false",
            set("mla_scale_q_lora", json!(false)),
            Refused("mla_scale_q_lora false"),
        ),
        (
            "longcat_flash",
            "head_dim other than qk_rope_head_dim",
            set("head_dim", json!(16)),
            Refused("head_dim 16 differs from qk_rope_head_dim 8"),
        ),
        (
            "longcat_flash",
            "no zero experts while the router has their rows",
            set("zero_expert_num", json!(0)),
            Refused("router.classifier.weight"),
        ),
        (
            "longcat_flash",
            "moe_topk above the 4 + 2 experts",
            set("moe_topk", json!(7)),
            Refused("num_experts_per_tok 7 must be between 1 and the 6 experts of layer 0"),
        ),
        (
            "qwen3_next",
            "num_experts_per_tok above the experts",
            set("num_experts_per_tok", json!(5)),
            Refused("num_experts_per_tok 5 must be between 1 and the 4 experts of layer 0"),
        ),
        (
            "longcat_flash",
            "LongCat-Flash-Lite's N-gram embedding",
            set("model_type", json!("longcat_flash_ngram")),
            Refused("transformers has no implementation of it, only vLLM"),
        ),
        (
            "qwen3_next",
            "partial_rotary_factor 0.5",
            set("partial_rotary_factor", json!(0.5)),
            Changes,
        ),
        (
            "qwen3_next",
            "explicit layer_types equal to the interval's",
            set(
                "layer_types",
                json!([
                    "linear_attention",
                    "full_attention",
                    "linear_attention",
                    "full_attention"
                ]),
            ),
            Same,
        ),
        (
            "qwen3_next",
            "layer_types with sliding attention",
            set(
                "layer_types",
                json!([
                    "linear_attention",
                    "sliding_attention",
                    "linear_attention",
                    "full_attention"
                ]),
            ),
            Refused("layer_types entry \"sliding_attention\""),
        ),
        (
            "qwen3_next",
            "another full_attention_interval than the weights'",
            set("full_attention_interval", json!(4)),
            Refused("missing tensor model.layers.1.linear_attn.conv1d.weight"),
        ),
        (
            "qwen3_next",
            "value heads not a multiple of key heads",
            set("linear_num_value_heads", json!(3)),
            Refused("linear_num_value_heads 3 is not a multiple of linear_num_key_heads 2"),
        ),
        (
            "qwen3_next",
            "use_sliding_window true",
            set("use_sliding_window", json!(true)),
            Refused("use_sliding_window true is not read"),
        ),
        (
            "qwen3_next",
            "norm_topk_prob false",
            set("norm_topk_prob", json!(false)),
            Changes,
        ),
    ];
    check_field_cases(&cases);
}

/// `ember record` in-process and from `ember serve` (vLLM protocol) give the same top-k on
/// each new family, and the server generates (KV cache / DeltaNet state) from it.
#[test]
fn new_families_record_and_serve() {
    use crate::record::{
        assert_same_topk, fixture_teacher_dir, record_args, remote_record_args, start_server,
    };
    use ember_data::read_logits_shard;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ds = crate::small_dataset().to_str().unwrap().to_string();
    for (name, _) in FAMILIES {
        let teacher = fixture_teacher_dir(d, name);
        let local = format!("{name}-local");
        let mut args = record_args(teacher.to_str().unwrap(), &local, &ds);
        args[12] = "8"; // --max-rows 8
        crate::ember_ok(d, &args);
        let (_server, url) = start_server(&teacher, &[]);
        let remote = format!("{name}-remote");
        crate::ember_ok(d, &remote_record_args("vllm", &url, &ds, &remote, "8"));
        let (_, lrows) = read_logits_shard(&d.join(&local).join("train-00000.arrow")).unwrap();
        let (_, rrows) = read_logits_shard(&d.join(&remote).join("train-00000.arrow")).unwrap();
        assert_eq!(lrows.len(), 8, "{name}");
        assert_same_topk(&lrows, &rrows, 1e-4, name);
        let body =
            r#"{"model": "teacher", "prompt": [1, 17, 42, 99], "max_tokens": 6, "temperature": 0}"#;
        let resp = ureq::post(&format!("{url}/v1/completions"))
            .set("Content-Type", "application/json")
            .send_string(body)
            .unwrap_or_else(|e| panic!("{name}: completion failed: {e}"));
        let json: serde_json::Value = serde_json::from_str(&resp.into_string().unwrap()).unwrap();
        assert_eq!(
            json["usage"]["completion_tokens"].as_u64(),
            Some(6),
            "{name}: {json}"
        );
    }
}

/// bf16 compute on each new family: finite, and as close to the f32 reference as
/// transformers' own bf16 forward is (mean and max abs logit difference, from meta.json).
#[test]
fn new_families_compute_in_bf16() {
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (name, _) in FAMILIES {
        let (ids, want, t) = reference(name);
        let teacher = load_teacher(&fixture(name), &Device::flex(), DType::BF16).unwrap();
        let got = forward(&teacher, &ids, 2, t, None);
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(name).join("meta.json")).unwrap())
                .unwrap();
        let theirs = meta["transformers_bf16_vs_f32_max_diff"].as_f64().unwrap() as f32;
        let diffs: Vec<f32> = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).collect();
        let max = diffs.iter().copied().fold(0.0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        report.push(format!(
            "{name:<14} Ember bf16 vs f32: max {max:.3} mean {mean:.4}; transformers bf16 max {theirs:.3}"
        ));
        if !got.iter().all(|x| x.is_finite()) || max > 2.0 * theirs.max(0.05) || mean > 0.05 {
            failures.push(name);
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{failures:?}\n{}", report.join("\n"));
}

/// A LongCat-Flash checkpoint re-saved by transformers 5 carries gate/up rows for the
/// identity experts (its fused tensor is sized for all experts); they are never read, so the
/// logits are the same, while any other stray tensor is still an error.
#[test]
fn longcat_identity_expert_rows_saved_by_transformers_are_ignored() {
    let device = Device::flex();
    let (ids, want, t) = reference("longcat_flash");
    let with = |extra: &'static str| {
        let dir = tempfile::tempdir().unwrap();
        let src = fixture("longcat_flash");
        std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
        crate::rewrite_safetensors(
            &src.join("model.safetensors"),
            &dir.path().join("model.safetensors"),
            |ts| {
                ts.push((
                    extra.to_string(),
                    safetensors::Dtype::BF16,
                    vec![32, 64],
                    vec![0u8; 32 * 64 * 2],
                ))
            },
        );
        dir
    };
    let dir = with("model.layers.0.mlp.experts.5.gate_proj.weight");
    let teacher = load_teacher(dir.path(), &device, DType::F32).unwrap();
    let got = forward(&teacher, &ids, 2, t, None);
    assert!(diff(&got, t, 0, &want, t, 0, t).max(diff(&got, t, 1, &want, t, 1, t)) < 1e-4);
    let dir = with("model.layers.0.mlp.shared_experts.gate_proj.weight");
    let err = load_teacher(dir.path(), &device, DType::F32)
        .err()
        .expect("stray tensor")
        .to_string();
    assert!(err.contains("shared_experts.gate_proj"), "{err}");
}
