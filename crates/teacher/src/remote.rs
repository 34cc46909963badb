//! Teachers behind a serving engine, read over HTTP: vLLM's OpenAI-compatible
//! `/v1/completions` with `prompt_logprobs`, and SGLang's `/generate` with
//! `input_top_logprobs`.
//!
//! Engines index prompt log-probabilities by the *target* token (entry `j` is the
//! distribution of token `j` given tokens `< j`, entry 0 is null); Ember's position `i`
//! is the distribution after token `i`, so position `i` = engine entry `i + 1`, and the
//! last position comes from the first generated token's top log-probabilities
//! (`max_tokens: 1`). Served log-probabilities are at temperature 1.

use serde_json::{Value, json};

use crate::{LogitSource, TeacherError, TopK};

/// Wire protocol of a remote teacher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// vLLM (or compatible) `POST /v1/completions` with `prompt_logprobs`.
    Vllm,
    /// SGLang `POST /generate` with `return_logprob`, `top_logprobs_num`.
    Sglang,
}

/// A served teacher.
pub struct RemoteTeacher {
    pub url: String,
    pub model: String,
    pub protocol: Protocol,
    /// Vocabulary size, if the user knows it (engines do not report it).
    pub vocab_size: Option<usize>,
    pub tokenizer_sha256: Option<String>,
    agent: ureq::Agent,
}

impl RemoteTeacher {
    pub fn new(url: &str, model: &str, protocol: Protocol) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout(std::time::Duration::from_secs(600))
            .build();
        Self {
            url: url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            protocol,
            vocab_size: None,
            tokenizer_sha256: None,
            agent,
        }
    }

    fn err(&self, message: impl Into<String>) -> TeacherError {
        TeacherError::Remote {
            url: self.url.clone(),
            message: message.into(),
        }
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, TeacherError> {
        let url = format!("{}{path}", self.url);
        match self.agent.post(&url).send_json(body) {
            Ok(resp) => resp
                .into_json()
                .map_err(|e| self.err(format!("response of {path} is not JSON: {e}"))),
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                // vLLM answers {"error": {"message"}} (new) or {"message"} (old)
                let msg = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| {
                        v.pointer("/error/message")
                            .or(v.get("message"))
                            .and_then(|m| m.as_str())
                            .map(String::from)
                    })
                    .unwrap_or(text);
                Err(self.err(format!("HTTP {code} from {path}: {msg}")))
            }
            Err(e) => Err(self.err(format!("{path}: {e}"))),
        }
    }
}

/// Keep the `k` most likely of `(id, logprob)` pairs, most likely first.
fn top_k(mut pairs: Vec<(i32, f32)>, k: usize) -> Result<Vec<(i32, f32)>, String> {
    pairs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if pairs.len() < k {
        return Err(format!(
            "a position has {} log-probabilities, fewer than k = {k}",
            pairs.len()
        ));
    }
    pairs.truncate(k);
    Ok(pairs)
}

/// vLLM `{ "<id>" | "token_id:<id>": {logprob} | logprob }` into pairs.
fn vllm_pairs(v: &Value) -> Result<Vec<(i32, f32)>, String> {
    let obj = v
        .as_object()
        .ok_or("expected an object of log-probabilities")?;
    obj.iter()
        .map(|(key, val)| {
            let id = key
                .strip_prefix("token_id:")
                .unwrap_or(key)
                .parse::<i32>()
                .map_err(|_| format!("token key {key:?} is not an id"))?;
            let lp = val
                .get("logprob")
                .unwrap_or(val)
                .as_f64()
                .ok_or("logprob is not a number")?;
            Ok((id, lp as f32))
        })
        .collect()
}

/// SGLang `[[logprob, id, text], ...]` into pairs.
fn sglang_pairs(v: &Value) -> Result<Vec<(i32, f32)>, String> {
    v.as_array()
        .ok_or("expected a list of [logprob, id, text]")?
        .iter()
        .map(|e| {
            let lp = e
                .get(0)
                .and_then(Value::as_f64)
                .ok_or("logprob is not a number")?;
            let id = e
                .get(1)
                .and_then(Value::as_i64)
                .ok_or("token id is not an integer")?;
            Ok((id as i32, lp as f32))
        })
        .collect()
}

impl RemoteTeacher {
    /// Prompt entries `1..T` plus the first generated position, as `T` lists of pairs.
    fn positions(&self, row: &[i32], k: usize) -> Result<Vec<Vec<(i32, f32)>>, TeacherError> {
        let t = row.len();
        let (prompt, last) = match self.protocol {
            Protocol::Vllm => {
                let body = json!({
                    "model": self.model, "prompt": row, "max_tokens": 1, "temperature": 1.0,
                    "prompt_logprobs": k, "logprobs": k, "return_tokens_as_token_ids": true,
                });
                let resp = self.post("/v1/completions", &body)?;
                let choice = resp
                    .pointer("/choices/0")
                    .ok_or_else(|| self.err("response has no choices"))?;
                let prompt = choice.get("prompt_logprobs").and_then(Value::as_array).ok_or_else(|| {
                    self.err("response has no choices[0].prompt_logprobs; is this a vLLM server started with --max-logprobs >= k?")
                })?;
                let last = choice
                    .pointer("/logprobs/top_logprobs/0")
                    .ok_or_else(|| self.err("response has no logprobs.top_logprobs"))?;
                let prompt: Result<Vec<_>, String> =
                    prompt.iter().skip(1).map(vllm_pairs).collect();
                (
                    prompt.map_err(|e| self.err(e))?,
                    vllm_pairs(last).map_err(|e| self.err(e))?,
                )
            }
            Protocol::Sglang => {
                let body = json!({
                    "input_ids": row, "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
                    "return_logprob": true, "logprob_start_len": 0, "top_logprobs_num": k,
                });
                let resp = self.post("/generate", &body)?;
                let meta = resp
                    .get("meta_info")
                    .ok_or_else(|| self.err("response has no meta_info"))?;
                let prompt = meta.get("input_top_logprobs").and_then(Value::as_array).ok_or_else(|| {
                    self.err("response has no meta_info.input_top_logprobs (needs return_logprob and logprob_start_len 0)")
                })?;
                let last = meta
                    .pointer("/output_top_logprobs/0")
                    .ok_or_else(|| self.err("response has no output_top_logprobs"))?;
                let prompt: Result<Vec<_>, String> =
                    prompt.iter().skip(1).map(sglang_pairs).collect();
                (
                    prompt.map_err(|e| self.err(e))?,
                    sglang_pairs(last).map_err(|e| self.err(e))?,
                )
            }
        };
        if prompt.len() != t - 1 {
            return Err(self.err(format!(
                "got {} prompt positions for {t} tokens",
                prompt.len() + 1
            )));
        }
        prompt
            .into_iter()
            .chain(std::iter::once(last))
            .map(|p| top_k(p, k).map_err(|e| self.err(e)))
            .collect()
    }
}

impl LogitSource for RemoteTeacher {
    fn name(&self) -> String {
        self.model.clone()
    }
    fn config_sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        format!(
            "{:x}",
            Sha256::digest(format!("{}|{}", self.url, self.model).as_bytes())
        )
    }
    fn vocab_size(&self) -> Option<usize> {
        self.vocab_size
    }
    fn tokenizer_sha256(&self) -> Option<String> {
        self.tokenizer_sha256.clone()
    }
    fn source(&self) -> &'static str {
        match self.protocol {
            Protocol::Vllm => "vllm",
            Protocol::Sglang => "sglang",
        }
    }
    fn topk(&mut self, rows: &[&[i32]], k: usize, temperature: f32) -> Result<TopK, TeacherError> {
        if temperature != 1.0 {
            return Err(self.err(
                "serving engines return log-probabilities at temperature 1; record with --temperature 1 and set the temperature in the distillation loss",
            ));
        }
        rows.iter()
            .map(|row| {
                let positions = self.positions(row, k)?;
                let mut ids = Vec::with_capacity(row.len() * k);
                let mut lps = Vec::with_capacity(row.len() * k);
                for p in positions {
                    for (id, lp) in p {
                        ids.push(id);
                        lps.push(lp);
                    }
                }
                Ok((ids, lps))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_entries_with_the_extra_prompt_token_are_cut_to_k() {
        // vLLM adds the actual prompt token (rank 7) to the top-2 and lists it first
        let v = json!({"9": {"logprob": -5.0, "rank": 7}, "3": {"logprob": -0.5, "rank": 1}, "4": {"logprob": -1.5, "rank": 2}});
        assert_eq!(
            top_k(vllm_pairs(&v).unwrap(), 2).unwrap(),
            vec![(3, -0.5), (4, -1.5)]
        );
        let generated = json!({"token_id:12": -0.1, "token_id:5": -2.5});
        assert_eq!(
            top_k(vllm_pairs(&generated).unwrap(), 2).unwrap(),
            vec![(12, -0.1), (5, -2.5)]
        );
        let sg = json!([[-0.2, 8, null], [-1.9, 2, null]]);
        assert_eq!(
            top_k(sglang_pairs(&sg).unwrap(), 2).unwrap(),
            vec![(8, -0.2), (2, -1.9)]
        );
        assert!(
            top_k(vec![(1, -0.1)], 2)
                .unwrap_err()
                .contains("fewer than k = 2")
        );
    }
}
