//! The request and response shapes of the two serving-engine protocols Ember speaks, as
//! typed serde structs shared by `ember serve` (which answers them) and the remote-teacher
//! client (which sends them), so the two ends cannot drift apart:
//!
//! - vLLM's OpenAI-compatible `POST /v1/completions` with the `prompt_logprobs` extension;
//! - SGLang's native `POST /generate` with `return_logprob`, `logprob_start_len`,
//!   `top_logprobs_num`.
//!
//! Fields Ember neither sends nor reads are left out; unknown fields are ignored both ways,
//! as the engines do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A prompt: text (through the model's tokenizer) or token ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Ids(Vec<i64>),
    Text(String),
}

/// vLLM / OpenAI `POST /v1/completions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub prompt: Option<Prompt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    /// Completions per prompt; Ember serves 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    /// Top log-probabilities per generated token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u64>,
    /// vLLM extension: top log-probabilities per prompt token (plus the prompt token itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// vLLM extension: key log-probabilities by `token_id:<id>` instead of the decoded text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_tokens_as_token_ids: Option<bool>,
    /// Settings engines honour that Ember's server does not: read so that a non-default
    /// value is refused rather than ignored.
    #[serde(flatten)]
    pub unsupported: UnsupportedSampling,
}

/// Sampling settings of the OpenAI/vLLM and SGLang APIs that `ember serve` does not
/// implement; only their defaults are accepted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnsupportedSampling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_token_ids: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_new_tokens: Option<u64>,
}

impl UnsupportedSampling {
    /// The first setting given with a value other than its default, as `name = value`.
    pub fn first_set(&self) -> Option<String> {
        let empty = |v: &Option<serde_json::Value>| match v {
            None | Some(serde_json::Value::Null) => true,
            Some(serde_json::Value::Array(a)) => a.is_empty(),
            Some(serde_json::Value::Object(o)) => o.is_empty(),
            Some(serde_json::Value::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        let checks: [(&str, bool, String); 10] = [
            ("stream", self.stream == Some(true), "true".into()),
            ("stop", !empty(&self.stop), format!("{:?}", self.stop)),
            (
                "stop_token_ids",
                !empty(&self.stop_token_ids),
                format!("{:?}", self.stop_token_ids),
            ),
            (
                "presence_penalty",
                self.presence_penalty.is_some_and(|x| x != 0.0),
                format!("{:?}", self.presence_penalty),
            ),
            (
                "frequency_penalty",
                self.frequency_penalty.is_some_and(|x| x != 0.0),
                format!("{:?}", self.frequency_penalty),
            ),
            (
                "repetition_penalty",
                self.repetition_penalty.is_some_and(|x| x != 1.0),
                format!("{:?}", self.repetition_penalty),
            ),
            (
                "logit_bias",
                !empty(&self.logit_bias),
                format!("{:?}", self.logit_bias),
            ),
            (
                "best_of",
                self.best_of.is_some_and(|x| x != 1),
                format!("{:?}", self.best_of),
            ),
            (
                "min_tokens",
                self.min_tokens.is_some_and(|x| x != 0),
                format!("{:?}", self.min_tokens),
            ),
            (
                "min_new_tokens",
                self.min_new_tokens.is_some_and(|x| x != 0),
                format!("{:?}", self.min_new_tokens),
            ),
        ];
        checks
            .into_iter()
            .find(|(_, set, _)| *set)
            .map(|(name, _, value)| format!("{name} = {value}"))
    }
}

/// One entry of vLLM's `prompt_logprobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptLogprob {
    pub logprob: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoded_token: Option<String>,
}

/// OpenAI-style log-probabilities of the generated tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    /// Per generated token, token (text or `token_id:<id>`) -> log-probability.
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: u64,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<i64>>,
    /// Entry `j` is the distribution of prompt token `j` given the tokens before it, keyed
    /// by token id (as a string); entry 0 is null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<Vec<Option<BTreeMap<String, PromptLogprob>>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<CompletionLogprobs>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: String,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
}

/// SGLang `sampling_params`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    /// SGLang's per-request seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_seed: Option<u64>,
    #[serde(flatten)]
    pub unsupported: UnsupportedSampling,
}

/// SGLang `POST /generate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_ids: Option<Vec<i64>>,
    #[serde(default)]
    pub sampling_params: SamplingParams,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_logprob: Option<bool>,
    /// First prompt position whose log-probabilities are returned (0 = all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprob_start_len: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs_num: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
}

/// SGLang's `[logprob, token_id, text]`; the logprob is null for the first prompt token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob(pub Option<f32>, pub i64, pub Option<String>);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishReason {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaInfo {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_token_logprobs: Option<Vec<TokenLogprob>>,
    /// Per prompt position from `logprob_start_len`: the top entries (null for position 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_top_logprobs: Option<Vec<Option<Vec<TokenLogprob>>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_token_logprobs: Option<Vec<TokenLogprob>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_top_logprobs: Option<Vec<Option<Vec<TokenLogprob>>>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateResponse {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_ids: Option<Vec<i64>>,
    pub meta_info: MetaInfo,
}

/// An engine's error body: vLLM's new `{"error": {"message"}}` or old `{"message"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
}

impl ErrorBody {
    /// The body Ember's server answers an error with (both spellings, as vLLM versions differ).
    pub fn new(code: u16, message: &str) -> Self {
        let kind = if code == 413 {
            "RequestTooLarge"
        } else if code >= 500 {
            "InternalServerError"
        } else {
            "BadRequestError"
        };
        Self {
            object: Some("error".into()),
            message: Some(message.into()),
            kind: Some(kind.into()),
            code: Some(code),
            error: Some(ErrorDetail {
                message: message.into(),
                kind: Some(kind.into()),
                code: Some(code),
            }),
        }
    }

    /// The message, from either spelling.
    pub fn text(&self) -> Option<&str> {
        self.error
            .as_ref()
            .map(|e| e.message.as_str())
            .or(self.message.as_deref())
    }
}
