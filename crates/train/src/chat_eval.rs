//! Held-out evaluation of an instruction-tuned student: loss on the answer tokens (teacher
//! forcing) and exact match of greedy answers, overall and per category.

use std::collections::BTreeMap;

use burn::prelude::*;
use burn::tensor::DType;
use ember_data::{ChatRecord, ChatTemplate, encode_record};
use ember_student::{GenerateConfig, Student, generate};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::cross_entropy;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Score {
    pub records: usize,
    /// Generated answer == reference, byte for byte (after trimming whitespace).
    pub exact_match: f64,
    /// Both parse as JSON and are equal as values (key order and spacing ignored).
    pub json_match: f64,
    /// Generated answers that parse as JSON at all.
    pub valid_json: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub id: Option<String>,
    pub reference: String,
    pub generated: String,
    pub exact: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatEvalReport {
    pub overall: Score,
    pub per_category: BTreeMap<String, Score>,
    /// Mean cross-entropy (nats) of the answer tokens (EOS included) given the prompt.
    pub answer_loss: f64,
    pub answer_perplexity: f64,
    pub answer_tokens: u64,
    pub max_new_tokens: usize,
    /// The first records, to read what the model answers.
    pub samples: Vec<Sample>,
}

/// Evaluate `model` on `records` rendered with `template`.
pub fn evaluate_chat(
    model: &Student,
    tokenizer: &Tokenizer,
    template: ChatTemplate,
    records: &[ChatRecord],
    eos: u32,
    max_new_tokens: usize,
    device: &Device,
) -> Result<ChatEvalReport, String> {
    let mut nll = 0.0f64;
    let mut answer_tokens = 0u64;
    let mut tallies: BTreeMap<String, [usize; 4]> = BTreeMap::new();
    let mut samples = Vec::new();
    let gen_cfg = GenerateConfig {
        max_new_tokens,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
        stop_token: Some(eos),
    };
    for rec in records {
        let (ids, labels) = encode_record(tokenizer, template, rec, eos)?;
        let n = ids.len();
        // teacher-forced loss on the answer
        let x =
            Tensor::<2, Int>::from_data(TensorData::new(ids[..n - 1].to_vec(), [1, n - 1]), device);
        let y =
            Tensor::<2, Int>::from_data(TensorData::new(labels[1..].to_vec(), [1, n - 1]), device);
        let kept = labels[1..].iter().filter(|&&l| l >= 0).count();
        let loss = cross_entropy(model.forward(x).cast(DType::F32), y).into_scalar::<f64>();
        nll += loss * kept as f64;
        answer_tokens += kept as u64;
        // greedy answer from the prompt
        let prompt_len = labels.iter().take_while(|&&l| l < 0).count();
        let prompt: Vec<u32> = ids[..prompt_len].iter().map(|&t| t as u32).collect();
        let mut out = generate(model, &prompt, &gen_cfg, device);
        if out.last() == Some(&eos) {
            out.pop();
        }
        let text = tokenizer.decode(&out, false).map_err(|e| e.to_string())?;
        let (got, want) = (text.trim(), rec.answer.trim());
        let exact = got == want;
        let parsed = serde_json::from_str::<serde_json::Value>(got).ok();
        let json = parsed.as_ref().is_some_and(|g| {
            serde_json::from_str::<serde_json::Value>(want).is_ok_and(|w| &w == g)
        });
        for key in [
            "*".to_string(),
            rec.category.clone().unwrap_or_else(|| "-".into()),
        ] {
            let t = tallies.entry(key).or_default();
            t[0] += 1;
            t[1] += exact as usize;
            t[2] += json as usize;
            t[3] += parsed.is_some() as usize;
        }
        if samples.len() < 12 {
            samples.push(Sample {
                id: rec.id.clone(),
                reference: want.to_string(),
                generated: got.to_string(),
                exact,
            });
        }
    }
    let score = |t: &[usize; 4]| Score {
        records: t[0],
        exact_match: t[1] as f64 / t[0].max(1) as f64,
        json_match: t[2] as f64 / t[0].max(1) as f64,
        valid_json: t[3] as f64 / t[0].max(1) as f64,
    };
    let overall = tallies.get("*").map(score).unwrap_or_default();
    let per_category = tallies
        .iter()
        .filter(|(k, _)| k.as_str() != "*")
        .map(|(k, t)| (k.clone(), score(t)))
        .collect();
    let answer_loss = nll / answer_tokens.max(1) as f64;
    Ok(ChatEvalReport {
        overall,
        per_category,
        answer_loss,
        answer_perplexity: answer_loss.exp(),
        answer_tokens,
        max_new_tokens,
        samples,
    })
}
