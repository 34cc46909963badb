//! Sampling with a KV cache: temperature, top-k, top-p (nucleus).

use burn::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{KvCache, Student};

/// Sampling settings. `temperature == 0` means greedy decoding.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0 = all).
    pub top_p: f32,
    pub seed: u64,
    /// Stop after producing this token.
    pub stop_token: Option<u32>,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 100,
            temperature: 0.8,
            top_k: 50,
            top_p: 0.95,
            seed: 0,
            stop_token: None,
        }
    }
}

/// Continue `prompt` (non-empty) and return only the new tokens. The prompt is run once;
/// each new token then costs one single-position forward against the KV cache.
pub fn generate(
    model: &Student,
    prompt: &[u32],
    cfg: &GenerateConfig,
    device: &Device,
) -> Vec<u32> {
    assert!(
        !prompt.is_empty(),
        "generate needs at least one prompt token"
    );
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut cache = KvCache::default();
    let mut input: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
    let mut out = Vec::with_capacity(cfg.max_new_tokens);
    for _ in 0..cfg.max_new_tokens {
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(input.clone(), [1, input.len()]), device);
        let logits = model.forward_cached(ids, &mut cache);
        let [_, t, v] = logits.dims();
        let last: Vec<f32> = logits
            .slice([0..1, t - 1..t, 0..v])
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32 logits");
        let next = sample_next(&last, cfg, &mut rng);
        out.push(next);
        if Some(next) == cfg.stop_token {
            break;
        }
        input = vec![next as i32];
    }
    out
}

/// Pick the next token from one row of logits.
pub fn sample_next(logits: &[f32], cfg: &GenerateConfig, rng: &mut impl Rng) -> u32 {
    sample_next_with_logprob(logits, cfg, rng).0
}

/// Pick the next token from one row of logits, with its log-probability under the
/// distribution it was drawn from (after temperature, top-k and top-p; 0 for greedy).
pub fn sample_next_with_logprob(
    logits: &[f32],
    cfg: &GenerateConfig,
    rng: &mut impl Rng,
) -> (u32, f32) {
    if cfg.temperature <= 0.0 {
        let argmax = logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |b, (i, &x)| {
                if x > b.1 { (i, x) } else { b }
            })
            .0;
        return (argmax as u32, 0.0);
    }
    // most likely first (ties to the lower id) when top-k or top-p cut the list
    let mut order: Vec<usize> = if cfg.top_k > 0 {
        ember_nn::topk_indices(logits, cfg.top_k)
    } else if cfg.top_p < 1.0 {
        ember_nn::topk_indices(logits, logits.len())
    } else {
        (0..logits.len()).collect()
    };
    let max = order
        .iter()
        .map(|&i| logits[i])
        .fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| (((logits[i] - max) / cfg.temperature) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if cfg.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= cfg.top_p as f64
        });
        let keep = keep.map(|k| k + 1).unwrap_or(probs.len());
        order.truncate(keep);
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut r = rng.random::<f64>() * total;
    let mut pick = order.len() - 1;
    for (j, p) in probs.iter().enumerate() {
        r -= p;
        if r <= 0.0 {
            pick = j;
            break;
        }
    }
    (order[pick] as u32, (probs[pick] / total).ln() as f32)
}

/// One sampled continuation: the new tokens (ending with the stop token when it was
/// produced) and each one's log-probability under the sampling distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
}

/// Continue every prompt of a batch (each non-empty) at once: the prompts are left-padded
/// to one length, the padding hidden by the KV cache's mask, and each row draws from its
/// own generator seeded by `seeds[r]`, so a row's sample does not depend on the other rows.
/// Decoding stops when every row has produced `cfg.stop_token` or `cfg.max_new_tokens`.
/// Only ids below `vocab` are sampled (a student vocabulary padded beyond its tokenizer's).
pub fn sample_batch(
    model: &Student,
    prompts: &[Vec<u32>],
    seeds: &[u64],
    cfg: &GenerateConfig,
    vocab: usize,
    device: &Device,
) -> Vec<Sample> {
    assert_eq!(prompts.len(), seeds.len(), "one seed per prompt");
    assert!(
        prompts.iter().all(|p| !p.is_empty()),
        "sample_batch needs at least one token per prompt"
    );
    let b = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let pad: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
    let mut cache = KvCache::left_padded(&pad, width, device);
    let mut rngs: Vec<StdRng> = seeds.iter().map(|&s| StdRng::seed_from_u64(s)).collect();
    let mut out: Vec<Sample> = (0..b)
        .map(|_| Sample {
            tokens: Vec::with_capacity(cfg.max_new_tokens),
            logprobs: Vec::with_capacity(cfg.max_new_tokens),
        })
        .collect();
    let mut done = vec![false; b];
    let mut input: Vec<i32> = prompts
        .iter()
        .zip(&pad)
        .flat_map(|(p, &n)| std::iter::repeat_n(p[0] as i32, n).chain(p.iter().map(|&t| t as i32)))
        .collect();
    let mut len = width;
    for _ in 0..cfg.max_new_tokens {
        let ids = Tensor::<2, Int>::from_data(TensorData::new(input, [b, len]), device);
        let logits = model.forward_cached(ids, &mut cache);
        let [_, t, v] = logits.dims();
        let last: Vec<f32> = logits
            .slice([0..b, t - 1..t, 0..v])
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32 logits");
        input = Vec::with_capacity(b);
        for (r, row) in last.chunks_exact(v).enumerate() {
            if done[r] {
                input.push(*out[r].tokens.last().expect("a finished row has tokens") as i32);
                continue;
            }
            let (next, lp) = sample_next_with_logprob(&row[..vocab.min(v)], cfg, &mut rngs[r]);
            out[r].tokens.push(next);
            out[r].logprobs.push(lp);
            done[r] = Some(next) == cfg.stop_token;
            input.push(next as i32);
        }
        len = 1;
        if done.iter().all(|&d| d) {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_and_top_p_pick_from_the_right_sets() {
        let logits = [0.0f32, 3.0, 1.0, 2.9, -1.0];
        let mut rng = StdRng::seed_from_u64(1);
        let greedy = GenerateConfig {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(sample_next(&logits, &greedy, &mut rng), 1);
        let top2 = GenerateConfig {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            ..Default::default()
        };
        let mut seen = [0usize; 5];
        for _ in 0..2000 {
            seen[sample_next(&logits, &top2, &mut rng) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2] + seen[4], 0, "{seen:?}");
        // p(1) = e^3/(e^3+e^2.9) = 0.525 of the top-2 mass
        assert!((seen[1] as f64 / 2000.0 - 0.525).abs() < 0.05, "{seen:?}");
        // over all five tokens p(1) = 0.474, so top-p 0.4 keeps token 1 alone
        let nucleus = GenerateConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.4,
            ..Default::default()
        };
        for _ in 0..100 {
            assert_eq!(sample_next(&logits, &nucleus, &mut rng), 1);
        }
    }
}
