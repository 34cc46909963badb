//! Distillation losses against an independent PyTorch implementation, and gradients
//! against finite differences.

use std::collections::HashMap;

use burn::prelude::*;
use ember_train::{KdConfig, KdLoss, TailMode, TeacherTargets, kd_loss};
use safetensors::{Dtype, tensor::TensorView};

use crate::python_reference;

const B: usize = 2;
const T: usize = 3;
const V: usize = 50;
const K: usize = 6;

/// Deterministic pseudo-random numbers in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Student logits, teacher top-k (some ids beyond the student vocabulary), labels.
fn inputs() -> (Vec<f32>, Vec<i32>, Vec<f32>, Vec<i32>) {
    let logits: Vec<f32> = noise(B * T * V, 1).iter().map(|x| x * 3.0).collect();
    // teacher: a random distribution over 64 ids (14 of them padding beyond V = 50), top-6 kept
    let teacher = noise(B * T * 64, 2);
    let mut ids = Vec::new();
    let mut lps = Vec::new();
    for pos in teacher.chunks(64) {
        let l: Vec<f64> = pos.iter().map(|x| *x as f64 * 4.0).collect();
        let lse = l.iter().map(|x| x.exp()).sum::<f64>().ln();
        let mut order: Vec<usize> = (0..64).collect();
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        for &i in &order[..K] {
            ids.push(i as i32);
            lps.push((l[i] - lse) as f32);
        }
    }
    let labels: Vec<i32> = (0..B * T).map(|i| ((i * 17) % V) as i32).collect();
    (logits, ids, lps, labels)
}

fn cases() -> Vec<(KdConfig, serde_json::Value)> {
    let c = |loss, temperature, ce_weight| KdConfig {
        loss,
        temperature,
        ce_weight,
        vocab_chunk: 16,
        tail: TailMode::Bucket,
    };
    let uniform = |temperature| KdConfig {
        tail: TailMode::Uniform,
        ..c(KdLoss::ForwardKl, temperature, 0.0)
    };
    vec![
        (
            uniform(1.0),
            serde_json::json!({"loss": "forward_kl", "tail": "uniform", "temperature": 1.0, "ce_weight": 0.0}),
        ),
        (
            uniform(2.0),
            serde_json::json!({"loss": "forward_kl", "tail": "uniform", "temperature": 2.0, "ce_weight": 0.0}),
        ),
        (
            c(KdLoss::ForwardKl, 1.0, 0.0),
            serde_json::json!({"loss": "forward_kl", "temperature": 1.0, "ce_weight": 0.0}),
        ),
        (
            c(KdLoss::ForwardKl, 2.0, 0.3),
            serde_json::json!({"loss": "forward_kl", "temperature": 2.0, "ce_weight": 0.3}),
        ),
        (
            c(KdLoss::ReverseKl, 1.0, 0.0),
            serde_json::json!({"loss": "reverse_kl", "temperature": 1.0, "ce_weight": 0.0}),
        ),
        (
            c(KdLoss::ReverseKl, 1.5, 0.5),
            serde_json::json!({"loss": "reverse_kl", "temperature": 1.5, "ce_weight": 0.5}),
        ),
        (
            c(KdLoss::Jsd { beta: 0.5 }, 1.0, 0.0),
            serde_json::json!({"loss": "jsd", "beta": 0.5, "temperature": 1.0, "ce_weight": 0.0}),
        ),
        (
            c(KdLoss::Jsd { beta: 0.1 }, 2.0, 0.0),
            serde_json::json!({"loss": "jsd", "beta": 0.1, "temperature": 2.0, "ce_weight": 0.0}),
        ),
        (
            c(KdLoss::SkewKl { alpha: 0.1 }, 1.0, 0.0),
            serde_json::json!({"loss": "skew_kl", "alpha": 0.1, "temperature": 1.0, "ce_weight": 0.0}),
        ),
        (
            c(KdLoss::Tvd, 1.0, 0.2),
            serde_json::json!({"loss": "tvd", "temperature": 1.0, "ce_weight": 0.2}),
        ),
    ]
}

/// `(total, kd, ce, d total / d logits)` of [`kd_loss`], or with `from_hidden` of the
/// training loss (`loss_from_hidden`, 4 positions per chunk) on `hidden = logits` and an
/// identity projection.
fn loss_and_grad(cfg: &KdConfig, device: &Device, from_hidden: bool) -> (f32, f32, f32, Vec<f32>) {
    let (logits, ids, lps, labels) = inputs();
    let ad = device.clone().autodiff();
    let x = Tensor::<3>::from_data(TensorData::new(logits, [B, T, V]), &ad).require_grad();
    let teacher = TeacherTargets::new(&ids, &lps, B, T, K, V, cfg.temperature, &ad);
    let labels = Tensor::<2, Int>::from_data(TensorData::new(labels, [B, T]), &ad);
    let out = if from_hidden {
        let identity = Tensor::<2>::eye(V, &ad);
        ember_train::loss_from_hidden_in_chunks(x.clone(), identity, Some(&teacher), labels, cfg, 4)
            .out
    } else {
        kd_loss(x.clone(), &teacher, labels, cfg)
    };
    let grads = out.total.backward();
    let g: Vec<f32> = x
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let s = |t: Tensor<1>| t.into_scalar::<f32>();
    (s(out.total), s(out.kd), s(out.ce), g)
}

#[test]
fn every_loss_matches_pytorch_in_value_and_gradient() {
    let device = Device::flex();
    let (logits, ids, lps, labels) = inputs();
    let f32b = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let i64b = |v: &[i32]| {
        v.iter()
            .flat_map(|&x| (x as i64).to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let (lb, ib, pb, yb) = (f32b(&logits), i64b(&ids), f32b(&lps), i64b(&labels));
    let views = vec![
        (
            "logits".to_string(),
            TensorView::new(Dtype::F32, vec![B, T, V], &lb).unwrap(),
        ),
        (
            "ids".to_string(),
            TensorView::new(Dtype::I64, vec![B, T, K], &ib).unwrap(),
        ),
        (
            "logprobs".to_string(),
            TensorView::new(Dtype::F32, vec![B, T, K], &pb).unwrap(),
        ),
        (
            "labels".to_string(),
            TensorView::new(Dtype::I64, vec![B, T], &yb).unwrap(),
        ),
    ];
    let cases = cases();
    let spec: Vec<serde_json::Value> = cases.iter().map(|c| c.1.clone()).collect();
    let meta = HashMap::from([(
        "cases".to_string(),
        serde_json::Value::from(spec).to_string(),
    )]);
    let reference = python_reference("kd_reference.py", views, Some(meta));
    let read = |name: &str| reference[name].clone();
    let mut table = Vec::new();
    for (i, (cfg, spec)) in cases.iter().enumerate() {
        let rg = read(&format!("grad_{i}"));
        let (rt, rk, rc) = (
            read(&format!("loss_{i}"))[0],
            read(&format!("kd_{i}"))[0],
            read(&format!("ce_{i}"))[0],
        );
        for (path, from_hidden) in [("kd_loss", false), ("loss_from_hidden", true)] {
            let (total, kd, ce, grad) = loss_and_grad(cfg, &device, from_hidden);
            let gdiff = max_diff(&grad, &rg);
            table.push(format!(
                "{spec} {path}: total {total:.6} vs {rt:.6}, grad max diff {gdiff:.1e}"
            ));
            assert!(
                (total - rt).abs() < 1e-5 && (kd - rk).abs() < 1e-5 && (ce - rc).abs() < 1e-5,
                "{}",
                table.join("\n")
            );
            assert!(gdiff < 1e-5, "{}", table.join("\n"));
            assert!(
                kd > 0.0,
                "{spec}: a random student differs from the teacher"
            );
        }
    }
    eprintln!("{}", table.join("\n"));
}

#[test]
fn gradients_match_finite_differences() {
    let device = Device::flex();
    for cfg in [
        cases()[0].0.clone(),
        cases()[3].0.clone(),
        cases()[7].0.clone(),
    ] {
        let (logits, ids, lps, labels) = inputs();
        let (_, _, _, grad) = loss_and_grad(&cfg, &device, false);
        let loss_at = |l: &[f32]| {
            let x = Tensor::<3>::from_data(TensorData::new(l.to_vec(), [B, T, V]), &device);
            let teacher = TeacherTargets::new(&ids, &lps, B, T, K, V, cfg.temperature, &device);
            let y = Tensor::<2, Int>::from_data(TensorData::new(labels.clone(), [B, T]), &device);
            kd_loss(x, &teacher, y, &cfg).total.into_scalar::<f64>()
        };
        // a teacher top-1 entry, a label entry, and an entry outside both
        for idx in [ids[0] as usize, V + labels[1] as usize, 2 * V + 49] {
            let h = 1e-2f32;
            let (mut up, mut down) = (logits.clone(), logits.clone());
            up[idx] += h;
            down[idx] -= h;
            let fd = (loss_at(&up) - loss_at(&down)) / (2.0 * h as f64);
            assert!(
                (fd - grad[idx] as f64).abs() < 2e-4 + 1e-2 * fd.abs(),
                "{:?} index {idx}: fd {fd} vs autodiff {}",
                cfg.loss,
                grad[idx]
            );
        }
    }
}

/// Negative labels (padding, prompt tokens) leave their positions out of every loss: the
/// masked loss is the mean of the single-position losses over the kept positions, and the
/// masked positions get no gradient.
#[test]
fn negative_labels_mask_their_positions_out_of_every_loss() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let (logits, ids, lps, mut labels) = inputs();
    let masked = [1usize, 5];
    for &m in &masked {
        labels[m] = -100;
    }
    for (cfg, _) in cases() {
        let x =
            Tensor::<3>::from_data(TensorData::new(logits.clone(), [B, T, V]), &ad).require_grad();
        let teacher = TeacherTargets::new(&ids, &lps, B, T, K, V, cfg.temperature, &ad);
        let y = Tensor::<2, Int>::from_data(TensorData::new(labels.clone(), [B, T]), &ad);
        let out = kd_loss(x.clone(), &teacher, y, &cfg);
        let total = out.total.clone().into_scalar::<f32>();
        let grad: Vec<f32> = x
            .grad(&out.total.backward())
            .unwrap()
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        // the same loss, one kept position at a time
        let mut sum = 0.0f64;
        let kept: Vec<usize> = (0..B * T).filter(|i| !masked.contains(i)).collect();
        for &p in &kept {
            let x1 = Tensor::<3>::from_data(
                TensorData::new(logits[p * V..(p + 1) * V].to_vec(), [1, 1, V]),
                &device,
            );
            let t1 = TeacherTargets::new(
                &ids[p * K..(p + 1) * K],
                &lps[p * K..(p + 1) * K],
                1,
                1,
                K,
                V,
                cfg.temperature,
                &device,
            );
            let y1 = Tensor::<2, Int>::from_data(TensorData::new(vec![labels[p]], [1, 1]), &device);
            sum += kd_loss(x1, &t1, y1, &cfg).total.into_scalar::<f32>() as f64;
        }
        let expected = sum / kept.len() as f64;
        assert!(
            (total as f64 - expected).abs() < 1e-5,
            "{cfg:?}: masked loss {total} vs mean of kept positions {expected}"
        );
        for &m in &masked {
            let g = &grad[m * V..(m + 1) * V];
            assert!(
                g.iter().all(|v| *v == 0.0),
                "{cfg:?}: gradient at masked position {m}"
            );
        }
        assert!(
            grad[..V].iter().any(|v| *v != 0.0),
            "kept positions get gradient"
        );
    }
    // cross-entropy alone: the same rule
    let x = Tensor::<3>::from_data(TensorData::new(logits.clone(), [B, T, V]), &device);
    let y = Tensor::<2, Int>::from_data(TensorData::new(labels.clone(), [B, T]), &device);
    let ce = ember_train::cross_entropy(x, y).into_scalar::<f32>() as f64;
    let mut expected = 0.0f64;
    let kept: Vec<usize> = (0..B * T).filter(|i| !masked.contains(i)).collect();
    for &p in &kept {
        let row = &logits[p * V..(p + 1) * V];
        let lse = row.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
        expected += lse - row[labels[p] as usize] as f64;
    }
    expected /= kept.len() as f64;
    assert!((ce - expected).abs() < 1e-5, "masked CE {ce} vs {expected}");
}

/// Largest absolute difference.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// Masked mean cross-entropy through `log_softmax` (autodiff differentiates every op).
fn plain_cross_entropy(logits: Tensor<3>, y: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, _] = logits.dims();
    let logp = burn::tensor::activation::log_softmax(logits, 2);
    let mask = y.clone().greater_equal_elem(0).float().reshape([b, t, 1]);
    let kept = mask.clone().sum();
    (logp.gather(2, y.clamp_min(0).reshape([b, t, 1])) * mask)
        .sum()
        .div(kept)
        .neg()
}

/// The training loss from hidden states (logits computed chunk by chunk, never tracked)
/// gives the values and the gradients of autodiff through `hidden @ weight` and the
/// unfused loss, for every loss, with masked positions, one chunk or several.
#[test]
fn loss_from_hidden_states_matches_autodiff_through_the_projection() {
    const D: usize = 8;
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let (_, ids, lps, mut labels) = inputs();
    labels[2] = -100;
    let hidden = noise(B * T * D, 3);
    let weight: Vec<f32> = noise(D * V, 4).iter().map(|x| x * 2.0).collect();
    let leaves = || {
        (
            Tensor::<3>::from_data(TensorData::new(hidden.clone(), [B, T, D]), &ad).require_grad(),
            Tensor::<2>::from_data(TensorData::new(weight.clone(), [D, V]), &ad).require_grad(),
        )
    };
    let grads_of = |total: Tensor<1>, h: &Tensor<3>, w: &Tensor<2>| {
        let grads = total.backward();
        let v = |t: Option<Tensor<3>>| t.unwrap().into_data().try_into_vec_as::<f32>().unwrap();
        (v(h.grad(&grads)), v(w.grad(&grads).map(|g| g.unsqueeze())))
    };
    let mut runs: Vec<(Option<KdConfig>, String)> = cases()
        .into_iter()
        .map(|(c, s)| (Some(c), s.to_string()))
        .collect();
    runs.push((None, "cross-entropy only".into()));
    for (cfg, spec) in runs {
        let temperature = cfg.as_ref().map_or(1.0, |c| c.temperature);
        let teacher = TeacherTargets::new(&ids, &lps, B, T, K, V, temperature, &ad);
        let y = || Tensor::<2, Int>::from_data(TensorData::new(labels.clone(), [B, T]), &ad);
        // reference: plain autodiff through the projection and the unfused loss
        let (h, w) = leaves();
        let logits = h.clone().matmul(w.clone().unsqueeze());
        let reference = match &cfg {
            Some(cfg) => kd_loss(logits.clone(), &teacher, y(), cfg).total,
            None => plain_cross_entropy(logits.clone(), y()),
        };
        let argmax: Vec<i64> = logits
            .argmax(2)
            .into_data()
            .try_into_vec_as::<i64>()
            .unwrap();
        let value = reference.clone().into_scalar::<f32>();
        let (rh, rw) = grads_of(reference, &h, &w);
        for chunk in [B * T, 4, 1] {
            let (h, w) = leaves();
            let cfg_or_default = cfg.clone().unwrap_or_default();
            let out = ember_train::loss_from_hidden_in_chunks(
                h.clone(),
                w.clone(),
                cfg.as_ref().map(|_| &teacher),
                y(),
                &cfg_or_default,
                chunk,
            );
            let got_argmax: Vec<i64> = out.argmax.into_data().try_into_vec_as::<i64>().unwrap();
            assert_eq!(got_argmax, argmax, "{spec}");
            let got = out.out.total.clone().into_scalar::<f32>();
            assert!(
                (got - value).abs() < 1e-5,
                "{spec}, chunk {chunk}: {got} vs {value}"
            );
            let (gh, gw) = grads_of(out.out.total, &h, &w);
            assert!(
                max_diff(&gh, &rh) < 1e-5,
                "{spec}, chunk {chunk}: hidden gradient differs by {}",
                max_diff(&gh, &rh)
            );
            assert!(
                max_diff(&gw, &rw) < 1e-5,
                "{spec}, chunk {chunk}: weight gradient differs by {}",
                max_diff(&gw, &rw)
            );
            assert!(gh.iter().any(|g| *g != 0.0) && gw.iter().any(|g| *g != 0.0));
        }
    }
}
