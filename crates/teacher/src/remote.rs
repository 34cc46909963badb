//! Teachers behind a serving engine, read over HTTP: vLLM's OpenAI-compatible
//! `/v1/completions` with `prompt_logprobs`, and SGLang's `/generate` with
//! `input_top_logprobs`.
//!
//! Engines index prompt log-probabilities by the *target* token (entry `j` is the
//! distribution of token `j` given tokens `< j`, entry 0 is null); Ember's position `i`
//! is the distribution after token `i`, so position `i` = engine entry `i + 1`, and the
//! last position comes from the first generated token's top log-probabilities
//! (`max_tokens: 1`). Served log-probabilities are at temperature 1.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::protocol::{
    CompletionRequest, CompletionResponse, ErrorBody, GenerateRequest, GenerateResponse, Prompt,
    PromptLogprob, SamplingParams, TokenLogprob,
};
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
    /// What to do when a request fails in a way that may pass on a second try.
    pub retry: RetryPolicy,
    agent: ureq::Agent,
}

/// Retries of a remote teacher's requests: a timeout, a dropped connection, an HTTP 5xx
/// or 429, or a body that is not the expected JSON is tried again after `backoff`, doubled
/// each time (at most 30 s), up to `retries` times; then the error is returned. Other 4xx
/// answers (the request itself is wrong) are returned at once.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub retries: usize,
    pub backoff: std::time::Duration,
    /// Deadline of one request (connect + answer).
    pub timeout: std::time::Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 4,
            backoff: std::time::Duration::from_millis(500),
            timeout: std::time::Duration::from_secs(600),
        }
    }
}

/// The teacher's view of token sequences (see [`LogitSource::score`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredRow {
    /// `(len - 1) * k` ids, most likely first per position.
    pub topk_ids: Vec<i32>,
    pub topk_logprobs: Vec<f32>,
    /// `len - 1` log-probabilities of the row's own next tokens (`row[1..]`).
    pub token_logprobs: Vec<f32>,
}

impl RemoteTeacher {
    /// A client for `url` (`http://` or `https://`; TLS through rustls, trusting the system's
    /// certificate store, or the PEM file in `SSL_CERT_FILE`).
    pub fn new(url: &str, model: &str, protocol: Protocol) -> Self {
        Self::with_retry(url, model, protocol, RetryPolicy::default())
    }

    /// A client with its own retry policy and request deadline.
    pub fn with_retry(url: &str, model: &str, protocol: Protocol, retry: RetryPolicy) -> Self {
        let agent = ureq::AgentBuilder::new().timeout(retry.timeout).build();
        Self {
            url: url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            protocol,
            vocab_size: None,
            tokenizer_sha256: None,
            retry,
            agent,
        }
    }

    fn err(&self, message: impl Into<String>) -> TeacherError {
        TeacherError::Remote {
            url: self.url.clone(),
            message: message.into(),
        }
    }

    /// POST `body` to `path`, retrying what may pass on another try (see [`RetryPolicy`]).
    fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Resp, TeacherError> {
        let mut delay = self.retry.backoff;
        let mut attempt = 0;
        loop {
            match self.post_once(path, body) {
                Ok(resp) => return Ok(resp),
                Err((message, retryable)) => {
                    if !retryable || attempt >= self.retry.retries {
                        let tries = if attempt > 0 {
                            format!(" (after {} tries)", attempt + 1)
                        } else {
                            String::new()
                        };
                        return Err(self.err(format!("{message}{tries}")));
                    }
                    attempt += 1;
                    eprintln!(
                        "warning: remote teacher {}: {message}; retry {attempt} of {} in {:.1} s",
                        self.url,
                        self.retry.retries,
                        delay.as_secs_f64()
                    );
                    std::thread::sleep(delay);
                    delay = delay
                        .saturating_mul(2)
                        .min(std::time::Duration::from_secs(30));
                }
            }
        }
    }

    /// One try: the answer, or the error and whether another try may pass.
    fn post_once<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Resp, (String, bool)> {
        let url = format!("{}{path}", self.url);
        match self.agent.post(&url).send_json(body) {
            Ok(resp) => {
                let text = resp
                    .into_string()
                    .map_err(|e| (format!("reading the response of {path}: {e}"), true))?;
                serde_json::from_str(&text).map_err(|e| {
                    (
                        format!(
                            "response of {path} is not the expected JSON ({e}): {}",
                            text.chars().take(200).collect::<String>()
                        ),
                        true,
                    )
                })
            }
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let msg = serde_json::from_str::<ErrorBody>(&text)
                    .ok()
                    .and_then(|b| b.text().map(String::from))
                    .unwrap_or(text);
                Err((
                    format!("HTTP {code} from {path}: {msg}"),
                    code >= 500 || code == 429,
                ))
            }
            Err(e) => Err((format!("{path}: {e}"), true)),
        }
    }
}

/// Keep the `k` most likely of `(id, logprob)` pairs, most likely first (ties to the
/// lower id).
fn top_k(mut pairs: Vec<(i32, f32)>, k: usize) -> Result<Vec<(i32, f32)>, String> {
    if pairs.len() < k {
        return Err(format!(
            "a position has {} log-probabilities, fewer than k = {k}",
            pairs.len()
        ));
    }
    // by id first, so that ties go to the lower id (topk_indices breaks them by position)
    pairs.sort_unstable_by_key(|p| p.0);
    let logprobs: Vec<f32> = pairs.iter().map(|p| p.1).collect();
    Ok(ember_nn::topk_indices(&logprobs, k)
        .into_iter()
        .map(|i| pairs[i])
        .collect())
}

/// vLLM token keys: `<id>` or `token_id:<id>`.
fn token_key(key: &str) -> Result<i32, String> {
    key.strip_prefix("token_id:")
        .unwrap_or(key)
        .parse::<i32>()
        .map_err(|_| format!("token key {key:?} is not an id"))
}

/// vLLM prompt entry `{ "<id>": {logprob, rank, decoded_token} }` into pairs.
fn prompt_pairs(entry: &BTreeMap<String, PromptLogprob>) -> Result<Vec<(i32, f32)>, String> {
    entry
        .iter()
        .map(|(key, v)| Ok((token_key(key)?, v.logprob)))
        .collect()
}

/// vLLM generated-token entry `{ "token_id:<id>": logprob }` into pairs.
fn top_pairs(entry: &BTreeMap<String, f32>) -> Result<Vec<(i32, f32)>, String> {
    entry
        .iter()
        .map(|(key, &lp)| Ok((token_key(key)?, lp)))
        .collect()
}

/// SGLang `[[logprob, id, text], ...]` into pairs.
fn sglang_pairs(entries: &[TokenLogprob]) -> Result<Vec<(i32, f32)>, String> {
    entries
        .iter()
        .map(|TokenLogprob(lp, id, _)| {
            let lp = lp.ok_or("a log-probability is null")?;
            Ok((*id as i32, lp))
        })
        .collect()
}

/// An engine's answer for one row of `T` tokens: prompt entries `1..T` (the distribution
/// of each token given the ones before, with that token's own log-probability) and the
/// first generated position.
struct Answer {
    prompt: Vec<Vec<(i32, f32)>>,
    token_logprobs: Vec<f32>,
    last: Vec<(i32, f32)>,
}

impl RemoteTeacher {
    /// [`LogitSource::score`] of one row, in one request (callable from several threads).
    pub fn score_row(&self, row: &[i32], k: usize) -> Result<ScoredRow, TeacherError> {
        if row.len() < 2 {
            return Err(self.err("a scored row needs at least two tokens"));
        }
        let answer = self.query(row, k)?;
        let mut ids = Vec::with_capacity((row.len() - 1) * k);
        let mut lps = Vec::with_capacity((row.len() - 1) * k);
        for p in answer.prompt {
            for (id, lp) in top_k(p, k).map_err(|e| self.err(e))? {
                ids.push(id);
                lps.push(lp);
            }
        }
        Ok(ScoredRow {
            topk_ids: ids,
            topk_logprobs: lps,
            token_logprobs: answer.token_logprobs,
        })
    }

    /// Prompt entries `1..T` plus the first generated position, as `T` lists of pairs.
    fn positions(&self, row: &[i32], k: usize) -> Result<Vec<Vec<(i32, f32)>>, TeacherError> {
        let Answer { prompt, last, .. } = self.query(row, k)?;
        prompt
            .into_iter()
            .chain(std::iter::once(last))
            .map(|p| top_k(p, k).map_err(|e| self.err(e)))
            .collect()
    }

    /// One request for `row`, checked for one entry per prompt token.
    fn query(&self, row: &[i32], k: usize) -> Result<Answer, TeacherError> {
        let t = row.len();
        let ids: Vec<i64> = row.iter().map(|&i| i as i64).collect();
        let (prompt, token_logprobs, last) = match self.protocol {
            Protocol::Vllm => {
                let body = CompletionRequest {
                    model: Some(self.model.clone()),
                    prompt: Some(Prompt::Ids(ids)),
                    max_tokens: Some(1),
                    temperature: Some(1.0),
                    prompt_logprobs: Some(k as u64),
                    logprobs: Some(k as u64),
                    return_tokens_as_token_ids: Some(true),
                    ..CompletionRequest::default()
                };
                let resp: CompletionResponse = self.post("/v1/completions", &body)?;
                let choice = resp
                    .choices
                    .first()
                    .ok_or_else(|| self.err("response has no choices"))?;
                let prompt = choice.prompt_logprobs.as_ref().ok_or_else(|| {
                    self.err("response has no choices[0].prompt_logprobs; is this a vLLM server started with --max-logprobs >= k?")
                })?;
                let last = choice
                    .logprobs
                    .as_ref()
                    .and_then(|l| l.top_logprobs.first())
                    .ok_or_else(|| self.err("response has no logprobs.top_logprobs"))?;
                let prompt: Result<Vec<_>, String> = prompt
                    .iter()
                    .skip(1)
                    .map(|e| {
                        e.as_ref()
                            .ok_or_else(|| {
                                "a prompt_logprobs entry after the first is null".to_string()
                            })
                            .and_then(prompt_pairs)
                    })
                    .collect();
                let prompt = prompt.map_err(|e| self.err(e))?;
                // vLLM lists each prompt token itself beside its top-k
                let own: Result<Vec<f32>, String> = prompt
                    .iter()
                    .zip(&row[1..])
                    .map(|(pairs, &tok)| {
                        pairs
                            .iter()
                            .find(|p| p.0 == tok)
                            .map(|p| p.1)
                            .ok_or_else(|| {
                                format!("a prompt_logprobs entry does not list its own token {tok}")
                            })
                    })
                    .collect();
                (
                    prompt,
                    own.map_err(|e| self.err(e))?,
                    top_pairs(last).map_err(|e| self.err(e))?,
                )
            }
            Protocol::Sglang => {
                let body = GenerateRequest {
                    input_ids: Some(ids),
                    sampling_params: SamplingParams {
                        max_new_tokens: Some(1),
                        temperature: Some(0.0),
                        ..SamplingParams::default()
                    },
                    return_logprob: Some(true),
                    logprob_start_len: Some(0),
                    top_logprobs_num: Some(k as u64),
                    ..GenerateRequest::default()
                };
                let resp: GenerateResponse = self.post("/generate", &body)?;
                let meta = resp.meta_info;
                let prompt = meta.input_top_logprobs.ok_or_else(|| {
                    self.err("response has no meta_info.input_top_logprobs (needs return_logprob and logprob_start_len 0)")
                })?;
                let last = meta
                    .output_top_logprobs
                    .and_then(|o| o.into_iter().next().flatten())
                    .ok_or_else(|| self.err("response has no output_top_logprobs"))?;
                let prompt: Result<Vec<_>, String> = prompt
                    .iter()
                    .skip(1)
                    .map(|e| {
                        e.as_deref()
                            .ok_or_else(|| {
                                "an input_top_logprobs entry after the first is null".to_string()
                            })
                            .and_then(sglang_pairs)
                    })
                    .collect();
                let own = meta
                    .input_token_logprobs
                    .ok_or_else(|| self.err("response has no meta_info.input_token_logprobs"))?;
                let own: Result<Vec<f32>, String> = own
                    .iter()
                    .skip(1)
                    .zip(&row[1..])
                    .map(|(TokenLogprob(lp, id, _), &tok)| {
                        if *id != tok as i64 {
                            return Err(format!(
                                "input_token_logprobs lists token {id} where the prompt has {tok}"
                            ));
                        }
                        lp.ok_or_else(|| "an input_token_logprobs entry is null".to_string())
                    })
                    .collect();
                (
                    prompt.map_err(|e| self.err(e))?,
                    own.map_err(|e| self.err(e))?,
                    sglang_pairs(&last).map_err(|e| self.err(e))?,
                )
            }
        };
        if prompt.len() != t - 1 || token_logprobs.len() != t - 1 {
            return Err(self.err(format!(
                "got {} prompt positions and {} prompt-token log-probabilities for {t} tokens",
                prompt.len() + 1,
                token_logprobs.len() + 1
            )));
        }
        Ok(Answer {
            prompt,
            token_logprobs,
            last,
        })
    }
}

impl LogitSource for RemoteTeacher {
    fn score(&mut self, rows: &[&[i32]], k: usize) -> Result<Vec<ScoredRow>, TeacherError> {
        rows.iter().map(|row| self.score_row(row, k)).collect()
    }
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
    fn vllm_and_sglang_entries_are_cut_to_k() {
        // vLLM adds the actual prompt token (rank 7) to the top-2
        let v: BTreeMap<String, PromptLogprob> = serde_json::from_str(
            r#"{"9": {"logprob": -5.0, "rank": 7}, "3": {"logprob": -0.5, "rank": 1}, "4": {"logprob": -1.5, "rank": 2}}"#,
        )
        .unwrap();
        assert_eq!(
            top_k(prompt_pairs(&v).unwrap(), 2).unwrap(),
            vec![(3, -0.5), (4, -1.5)]
        );
        let generated: BTreeMap<String, f32> =
            serde_json::from_str(r#"{"token_id:12": -0.1, "token_id:5": -2.5}"#).unwrap();
        assert_eq!(
            top_k(top_pairs(&generated).unwrap(), 2).unwrap(),
            vec![(12, -0.1), (5, -2.5)]
        );
        let sg: Vec<TokenLogprob> =
            serde_json::from_str("[[-0.2, 8, null], [-1.9, 2, null]]").unwrap();
        assert_eq!(
            top_k(sglang_pairs(&sg).unwrap(), 2).unwrap(),
            vec![(8, -0.2), (2, -1.9)]
        );
        // equal log-probabilities: the lower id first, whatever order the server sent
        assert_eq!(
            top_k(vec![(7, -1.0), (2, -1.0), (5, -0.5)], 2).unwrap(),
            vec![(5, -0.5), (2, -1.0)]
        );
        assert!(
            top_k(vec![(1, -0.1)], 2)
                .unwrap_err()
                .contains("fewer than k = 2")
        );
    }
}
