//! On-policy distillation: the sampled-token objective against PyTorch, batched sampling
//! against one prompt at a time, and whole runs with an in-process teacher, a served one,
//! a served one that fails every few requests, and a killed and resumed run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use burn::prelude::*;
use ember_student::{GenerateConfig, StudentConfig, sample_batch};
use ember_train::{SampledTargets, sampled_loss_from_hidden_in_chunks};
use safetensors::{Dtype, tensor::TensorView};

use crate::distill::{student_args, teacher};
use crate::record::start_server;
use crate::{
    ChildGuard, ember, ember_ok, kill_when, python, python_reference, root, small_dataset,
    spawn_server,
};

fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The sampled-token objective (value, gradient through the projection, with prompt and
/// padding positions masked) against an independent PyTorch implementation, off-policy
/// (ratio != 1) and exactly on-policy (the sampling log-probabilities are the student's).
#[test]
fn the_sampled_kl_objective_matches_pytorch_in_value_and_gradient() {
    const B: usize = 2;
    const T: usize = 5;
    const D: usize = 8;
    const V: usize = 40;
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let hidden = noise(B * T * D, 1);
    let weight: Vec<f32> = noise(D * V, 2).iter().map(|x| x * 2.0).collect();
    // row 0: prompt of 2, then 3 samples; row 1: prompt of 1, 2 samples, 2 padding
    let labels: Vec<i32> = vec![-100, -100, 7, 3, 31, -100, 12, 5, -100, -100];
    let tlp: Vec<f32> = noise(B * T, 3).iter().map(|x| x * 2.0 - 2.5).collect();
    // the student's own log-probabilities of its samples, for the on-policy case
    let logits: Vec<f32> = {
        let h = Tensor::<3>::from_data(TensorData::new(hidden.clone(), [B, T, D]), &device);
        let w = Tensor::<2>::from_data(TensorData::new(weight.clone(), [D, V]), &device);
        burn::tensor::activation::log_softmax(h.matmul(w.unsqueeze()), 2)
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap()
    };
    let own: Vec<f32> = labels
        .iter()
        .enumerate()
        .map(|(i, &y)| logits[i * V + y.max(0) as usize])
        .collect();
    let stale: Vec<f32> = own
        .iter()
        .zip(noise(B * T, 4))
        .map(|(o, n)| o + 0.3 * n)
        .collect();
    for (case, slp) in [("stale policy", stale), ("on-policy", own)] {
        let f32b = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let yb: Vec<u8> = labels
            .iter()
            .flat_map(|&x| (x as i64).to_le_bytes())
            .collect();
        let (hb, wb, tb, sb) = (f32b(&hidden), f32b(&weight), f32b(&tlp), f32b(&slp));
        let views = vec![
            (
                "hidden",
                TensorView::new(Dtype::F32, vec![B, T, D], &hb).unwrap(),
            ),
            (
                "weight",
                TensorView::new(Dtype::F32, vec![D, V], &wb).unwrap(),
            ),
            (
                "labels",
                TensorView::new(Dtype::I64, vec![B, T], &yb).unwrap(),
            ),
            (
                "teacher_logprob",
                TensorView::new(Dtype::F32, vec![B, T], &tb).unwrap(),
            ),
            (
                "sample_logprob",
                TensorView::new(Dtype::F32, vec![B, T], &sb).unwrap(),
            ),
        ];
        let views = views.into_iter().map(|(n, v)| (n.to_string(), v)).collect();
        let reference = python_reference("onpolicy_reference.py", views, None);
        let read = |name: &str| reference[name].clone();
        for chunk in [B * T, 3, 1] {
            let h = Tensor::<3>::from_data(TensorData::new(hidden.clone(), [B, T, D]), &ad)
                .require_grad();
            let w =
                Tensor::<2>::from_data(TensorData::new(weight.clone(), [D, V]), &ad).require_grad();
            let targets = SampledTargets::new(tlp.clone(), slp.clone(), vec![0; B * T], B, T, &ad);
            let y = Tensor::<2, Int>::from_data(TensorData::new(labels.clone(), [B, T]), &ad);
            let out = sampled_loss_from_hidden_in_chunks(h.clone(), w.clone(), &targets, y, chunk);
            let value = out.out.total.clone().into_scalar::<f32>();
            let nll = out.out.ce.clone().into_scalar::<f32>();
            let grads = out.out.total.backward();
            let gh: Vec<f32> = h
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_into_vec_as()
                .unwrap();
            let gw: Vec<f32> = w
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_into_vec_as()
                .unwrap();
            let diff = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max)
            };
            let (dh, dw) = (
                diff(&gh, &read("grad_hidden")),
                diff(&gw, &read("grad_weight")),
            );
            eprintln!(
                "{case}, chunk {chunk}: loss {value:.6} vs {:.6}, grad diff {dh:.1e} / {dw:.1e}",
                read("loss")[0]
            );
            assert!((value - read("loss")[0]).abs() < 1e-5, "{case}");
            assert!((nll - read("nll")[0]).abs() < 1e-5, "{case}");
            assert!(dh < 1e-5 && dw < 1e-5, "{case}: {dh} {dw}");
            // masked positions get no gradient: the padding rows of hidden are untouched
            for pos in [5usize, 8, 9] {
                assert!(
                    gh[pos * D..(pos + 1) * D].iter().all(|&g| g == 0.0),
                    "{case} {pos}"
                );
            }
        }
    }
}

/// A batch of prompts of different lengths, left-padded behind the cache's mask, samples
/// what each prompt samples alone, and each sample's log-probability is the one the
/// student's full forward gives it.
#[test]
fn batched_sampling_matches_one_prompt_at_a_time() {
    let device = Device::flex();
    let mut cfg = StudentConfig::preset("tiny", 96).unwrap();
    (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_hidden_layers,
    ) = (32, 64, 2);
    (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    ) = (4, 2, 8);
    device.seed(5);
    let model = cfg.init(&device);
    let prompts: Vec<Vec<u32>> = vec![vec![5, 9, 2, 33, 1, 7], vec![11], vec![40, 41, 42]];
    let seeds = [3u64, 4, 5];
    let sampling = GenerateConfig {
        max_new_tokens: 7,
        temperature: 1.3,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
        stop_token: Some(17),
    };
    let batch = sample_batch(&model, &prompts, &seeds, &sampling, 96, &device);
    for (r, p) in prompts.iter().enumerate() {
        let alone = sample_batch(
            &model,
            std::slice::from_ref(p),
            &seeds[r..r + 1],
            &sampling,
            96,
            &device,
        );
        assert_eq!(batch[r].tokens, alone[0].tokens, "row {r}");
        for (a, b) in batch[r].logprobs.iter().zip(&alone[0].logprobs) {
            assert!((a - b).abs() < 1e-4, "row {r}: {a} vs {b}");
        }
        // the density: log softmax(z / 1.3) of the full sequence's forward
        let full: Vec<i32> = p
            .iter()
            .chain(&batch[r].tokens)
            .map(|&t| t as i32)
            .collect();
        let n = full.len();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(full.clone(), [1, n]), &device);
        let lp: Vec<f32> =
            burn::tensor::activation::log_softmax(model.forward(ids).div_scalar(1.3), 2)
                .into_data()
                .try_into_vec_as()
                .unwrap();
        let v = 96;
        for (j, &tok) in batch[r].tokens.iter().enumerate() {
            let pos = p.len() - 1 + j;
            let want = lp[pos * v + tok as usize];
            let got = batch[r].logprobs[j];
            assert!(
                (want - got).abs() < 1e-4,
                "row {r} token {j}: {got} vs {want}"
            );
        }
        // a student vocabulary padded beyond the tokenizer's: only tokenizer ids are drawn
        let limited = sample_batch(
            &model,
            std::slice::from_ref(p),
            &seeds[r..r + 1],
            &sampling,
            20,
            &device,
        );
        assert!(
            limited[0].tokens.iter().all(|&t| t < 20),
            "{:?}",
            limited[0].tokens
        );
        if let Some(i) = batch[r].tokens.iter().position(|&t| t == 17) {
            assert_eq!(
                i + 1,
                batch[r].tokens.len(),
                "sampling stops at the stop token"
            );
        }
    }
}

fn recipe(dir: &Path, teacher: &str, onpolicy: &str) -> PathBuf {
    let path = dir.join("onpolicy.toml");
    std::fs::write(
        &path,
        format!(
            "[data]\ndataset = {:?}\n\n[teacher]\n{teacher}\n\n[distill]\nloss = {{ type = \"jsd\", beta = 0.5 }}\n\n[onpolicy]\nprompt_tokens = 8\nmax_new_tokens = 12\n{onpolicy}\n",
            small_dataset().display().to_string()
        ),
    )
    .unwrap();
    path
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn train_rows(run: &Path) -> Vec<serde_json::Value> {
    jsonl(&run.join("metrics.jsonl"))
        .into_iter()
        .filter(|v| v["split"] == "train")
        .collect()
}

fn run_args<'a>(recipe: &'a str, ds: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    let mut args = vec!["distill", "--config", recipe];
    args.extend(student_args(ds, out, steps));
    args.extend(["--set", "train.eval_every=0", "--set", "train.batch_size=8"]);
    args
}

/// Both objectives with the in-process teacher: the loss on the student's own samples
/// falls, every batch is logged with its policy's staleness, and the summary holds the
/// stage throughputs.
#[test]
fn on_policy_distillation_with_an_in_process_teacher_lowers_the_loss_on_own_samples() {
    let (model, _, _) = teacher();
    let dir = tempfile::tempdir().unwrap();
    let ds = small_dataset().to_str().unwrap().to_string();
    let teacher = format!("model = {:?}\ntop_k = 16", model.display().to_string());
    for (objective, staleness) in [("sampled_kl", "1"), ("distribution", "0")] {
        let recipe = recipe(
            dir.path(),
            &teacher,
            &format!("objective = \"{objective}\"\nmax_staleness = {staleness}"),
        );
        let out = format!("op-{objective}");
        let args = run_args(recipe.to_str().unwrap(), &ds, &out, "60");
        let stdout = ember_ok(dir.path(), &args);
        let run = dir.path().join(&out);
        let rows = train_rows(&run);
        let (first, last) = (&rows[0], rows.last().unwrap());
        let (k0, k1) = (
            first["kd_loss"].as_f64().unwrap(),
            last["kd_loss"].as_f64().unwrap(),
        );
        eprintln!("{objective}: loss on own samples {k0:.4} -> {k1:.4}");
        assert!(k1 < 0.8 * k0, "{objective}: {k0} -> {k1}\n{stdout}");
        assert!(
            last["onpolicy"]["sample_tokens_per_second"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        let batches = jsonl(&run.join("onpolicy.jsonl"));
        assert_eq!(batches.len(), 60, "one on-policy batch per step");
        for (i, b) in batches.iter().enumerate() {
            assert_eq!(b["micro_batch"], i);
            assert!(b["staleness"].as_u64().unwrap() <= staleness.parse().unwrap());
            assert!(b["generated_tokens"].as_u64().unwrap() >= 8);
        }
        if staleness == "1" {
            assert!(
                batches[5]["staleness"] == 1,
                "the sampler runs a step ahead"
            );
        }
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap())
                .unwrap();
        assert!(
            summary["onpolicy"]["score_tokens_per_second"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        assert!(run.join("model/model.safetensors").is_file());
    }
}

/// A served teacher (`ember serve`, vLLM and SGLang protocols) gives the run the
/// in-process teacher gives, with the same seed.
#[test]
fn on_policy_distillation_from_a_served_teacher_matches_the_in_process_one() {
    let (model, _, vlogits) = teacher();
    let dir = tempfile::tempdir().unwrap();
    let ds = small_dataset().to_str().unwrap().to_string();
    let (_server, url) = start_server(model, &[]);
    let staleness = "max_staleness = 0";
    let runs = [
        (
            "local",
            format!("model = {:?}\ntop_k = 8", model.display().to_string()),
        ),
        (
            "vllm",
            format!(
                "url = {url:?}\nprotocol = \"vllm\"\nserved_model = \"teacher\"\ntop_k = 8\nvalidation_logits = {:?}",
                vlogits.display().to_string()
            ),
        ),
        (
            "sglang",
            format!("url = {url:?}\nprotocol = \"sglang\"\nserved_model = \"teacher\"\ntop_k = 8"),
        ),
    ];
    let mut losses = Vec::new();
    for (name, teacher) in &runs {
        let recipe = recipe(dir.path(), teacher, staleness);
        let recipe = recipe.to_str().unwrap().to_string();
        let out = format!("op-{name}");
        ember_ok(dir.path(), &run_args(&recipe, &ds, &out, "12"));
        let batches = jsonl(&dir.path().join(&out).join("onpolicy.jsonl"));
        let generated: Vec<u64> = batches
            .iter()
            .map(|b| b["generated_tokens"].as_u64().unwrap())
            .collect();
        let kd: Vec<f64> = train_rows(&dir.path().join(&out))
            .iter()
            .map(|r| r["kd_loss"].as_f64().unwrap())
            .collect();
        if *name == "vllm" {
            // recorded validation logits are honoured beside a served teacher
            let summary: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.path().join(&out).join("summary.json")).unwrap(),
            )
            .unwrap();
            assert!(
                summary["validation_kd"]["kl"].as_f64().unwrap() > 0.0,
                "{summary}"
            );
        }
        losses.push((name, generated, kd));
    }
    let (_, generated0, kd0) = &losses[0];
    for (name, generated, kd) in &losses[1..] {
        assert_eq!(generated, generated0, "{name}: the same samples");
        for (a, b) in kd.iter().zip(kd0) {
            assert!(
                (a - b).abs() < 1e-3 * b.abs().max(1.0),
                "{name}: {kd:?} vs {kd0:?}"
            );
        }
    }
}

fn flaky_proxy(upstream: &str, every: &str) -> (ChildGuard, String) {
    spawn_server(
        Command::new(python())
            .arg(root().join("tests/python/flaky_proxy.py"))
            .args([upstream, every])
            .stderr(Stdio::null()),
    )
}

/// A served teacher that answers 500, drops the connection, sends broken JSON or misses
/// the deadline on every third request still yields a completed run, identical to one
/// without faults; one that always fails stops the run with an error naming it.
#[test]
fn a_served_teacher_that_fails_every_third_request_still_completes_the_run() {
    let (model, _, _) = teacher();
    let dir = tempfile::tempdir().unwrap();
    let ds = small_dataset().to_str().unwrap().to_string();
    let (_server, url) = start_server(model, &[]);
    let (_flaky, flaky_url) = flaky_proxy(&url, "3");
    let teacher = |u: &str| {
        format!(
            "url = {u:?}\nprotocol = \"vllm\"\nserved_model = \"teacher\"\ntop_k = 8\nretries = 3\nretry_backoff_s = 0.05\ntimeout_s = 1.0"
        )
    };
    let mut kd = Vec::new();
    for (name, u) in [("clean", url.clone()), ("flaky", flaky_url)] {
        let recipe = recipe(
            dir.path(),
            &teacher(&u),
            "max_staleness = 0\nremote_concurrency = 2",
        );
        let out = format!("op-{name}");
        let args = run_args(recipe.to_str().unwrap(), &ds, &out, "6");
        let o = ember(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{name}: {stderr}");
        if name == "flaky" {
            assert!(stderr.contains("retry 1 of 3"), "{stderr}");
        }
        kd.push(
            train_rows(&dir.path().join(&out))
                .iter()
                .map(|r| r["kd_loss"].as_f64().unwrap())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(kd[0], kd[1], "retried requests score the same");

    let (_down, down_url) = flaky_proxy(&url, "1");
    let recipe = recipe(dir.path(), &teacher(&down_url), "max_staleness = 0");
    let args = run_args(recipe.to_str().unwrap(), &ds, "op-down", "6");
    let o = ember(dir.path(), &args);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success());
    assert!(
        stderr.contains(&down_url) && stderr.contains("after 4 tries"),
        "{stderr}"
    );
}

/// A run killed after a checkpoint and resumed ends with the weights of the run that was
/// never interrupted (exactly on-policy: max_staleness = 0), and logs each batch once.
#[test]
fn a_killed_on_policy_run_resumes_to_the_uninterrupted_result() {
    let (model, _, _) = teacher();
    let dir = tempfile::tempdir().unwrap();
    let ds = small_dataset().to_str().unwrap().to_string();
    let teacher = format!("model = {:?}\ntop_k = 8", model.display().to_string());
    let recipe = recipe(dir.path(), &teacher, "max_staleness = 0\nlambda = 0.5");
    let recipe = recipe.to_str().unwrap().to_string();
    let with_ckpt = |out: &'static str| {
        let mut a = run_args(&recipe, &ds, out, "12");
        a.extend([
            "--set",
            "train.checkpoint_every=4",
            "--set",
            "train.grad_accum=2",
        ]);
        a
    };
    ember_ok(dir.path(), &with_ckpt("straight"));
    let resumed = dir.path().join("resumed");
    kill_when(
        dir.path(),
        &with_ckpt("resumed"),
        &resumed.join("checkpoints/step-00000008/state.json"),
        &resumed.join("summary.json"),
    );
    ember_ok(dir.path(), &with_ckpt("resumed"));
    let a = std::fs::read(dir.path().join("straight/model/model.safetensors")).unwrap();
    let b = std::fs::read(resumed.join("model/model.safetensors")).unwrap();
    assert!(a == b, "the resumed run ends with other weights");
    let micro: Vec<u64> = jsonl(&resumed.join("onpolicy.jsonl"))
        .iter()
        .map(|b| b["micro_batch"].as_u64().unwrap())
        .collect();
    let straight: Vec<u64> = jsonl(&dir.path().join("straight/onpolicy.jsonl"))
        .iter()
        .map(|b| b["micro_batch"].as_u64().unwrap())
        .collect();
    assert_eq!(micro, straight, "each on-policy micro-batch logged once");
    let tokens = |run: &Path| {
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap())
                .unwrap();
        s["tokens"].as_u64().unwrap()
    };
    assert_eq!(tokens(&resumed), tokens(&dir.path().join("straight")));
    // lambda = 0.5: some micro-batches were offline
    assert!(straight.len() > 4 && straight.len() < 20, "{straight:?}");
}

/// Recipes that cannot be run as written are refused before anything starts, naming the key.
#[test]
fn on_policy_recipes_that_cannot_run_are_refused_naming_the_key() {
    let (model, _, _) = teacher();
    let dir = tempfile::tempdir().unwrap();
    let ds = small_dataset().to_str().unwrap().to_string();
    let local = format!("model = {:?}", model.display().to_string());
    let served = "url = \"http://127.0.0.1:9\"\nprotocol = \"vllm\"\nserved_model = \"t\"";
    let cases = [
        (local.as_str(), "temperature = 0.0", "onpolicy.temperature"),
        (local.as_str(), "", "onpolicy.prompt_tokens"),
        (local.as_str(), "lambda = 1.5", "onpolicy.lambda"),
        (
            "url = \"http://127.0.0.1:9\"\nserved_model = \"t\"",
            "",
            "teacher.protocol",
        ),
        (
            "url = \"http://127.0.0.1:9\"\nprotocol = \"sglang\"",
            "",
            "teacher.served_model",
        ),
        (served, "lambda = 0.5", "onpolicy.lambda"),
        (
            &format!("{served}\ntimeout_s = 1e300"),
            "",
            "teacher.timeout_s",
        ),
    ];
    for (teacher, onpolicy, key) in cases {
        let recipe = recipe(dir.path(), teacher, onpolicy);
        let mut args = run_args(recipe.to_str().unwrap(), &ds, "refused", "8");
        if key == "onpolicy.prompt_tokens" {
            args.extend(["--set", "onpolicy.prompt_tokens=0"]);
        }
        let err = crate::ember_err(dir.path(), &args);
        assert!(err.contains(key), "{key}: {err}");
    }
    // a served teacher without [onpolicy] would be ignored by offline distillation: refused
    let path = dir.path().join("offline.toml");
    std::fs::write(
        &path,
        format!("[data]\ndataset = {ds:?}\n\n[teacher]\n{served}\n"),
    )
    .unwrap();
    let args = run_args(path.to_str().unwrap(), &ds, "refused", "8");
    assert!(crate::ember_err(dir.path(), &args).contains("teacher.url"));
}
