//! `ember serve`: any model Ember can load (students, and every teacher architecture)
//! behind two HTTP protocols, so it doubles as a remote teacher for `ember record`:
//!
//! - `POST /v1/completions`, OpenAI-compatible with vLLM's `prompt_logprobs` extension;
//! - `POST /generate`, SGLang's native API with `input_top_logprobs`;
//! - `GET /v1/models`, `GET /health`.
//!
//! Log-probabilities are `log_softmax` of the raw logits over the full vocabulary
//! (temperature 1), like vLLM's. Requests are served one at a time in arrival order;
//! a bad request gets a 4xx JSON error naming the field, never a crash.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::log_softmax;
use ember_student::{GenerateConfig, sample_next};
use ember_teacher::{Teacher, TeacherError, load_teacher};
use rand::SeedableRng;
use serde_json::{Value, json};
use tiny_http::{Header, Method, Response, Server};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Teacher(#[from] TeacherError),
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: String, message: String },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
}

/// A loaded model with what the protocols need.
pub struct ServedModel {
    pub name: String,
    pub teacher: Teacher,
    pub tokenizer: Option<tokenizers::Tokenizer>,
    pub device: Device,
    /// Largest `logprobs` / `prompt_logprobs` accepted (vLLM's `--max-logprobs`).
    pub max_logprobs: usize,
    /// Longest prompt + completion accepted.
    pub max_model_len: usize,
}

impl ServedModel {
    pub fn load(
        dir: &Path,
        name: Option<String>,
        device: &Device,
        max_logprobs: usize,
    ) -> Result<Self, ServeError> {
        let teacher = load_teacher(dir, device, DType::F32)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = if tok_path.is_file() {
            Some(tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| {
                ServeError::Tokenizer {
                    path: tok_path,
                    message: e.to_string(),
                }
            })?)
        } else {
            None
        };
        let name = name.unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        });
        let max_model_len = teacher.config.max_position_embeddings.unwrap_or(4096);
        Ok(Self {
            name,
            teacher,
            tokenizer,
            device: device.clone(),
            max_logprobs,
            max_model_len,
        })
    }
}

/// A request error: HTTP status and message.
struct BadRequest(u16, String);

fn bad(msg: impl Into<String>) -> BadRequest {
    BadRequest(400, msg.into())
}

/// Bind `addr` (port 0 picks a free port), call `ready` with the bound address, then serve
/// until the process ends or `max_requests` requests have been answered.
pub fn serve(
    model: &ServedModel,
    addr: &str,
    max_requests: Option<usize>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let server = Server::http(addr).map_err(|e| ServeError::Bind {
        addr: addr.into(),
        message: e.to_string(),
    })?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| ServeError::Bind {
            addr: addr.into(),
            message: "not an IP socket".into(),
        })?;
    ready(bound);
    let mut answered = 0usize;
    for mut request in server.incoming_requests() {
        let mut body = String::new();
        let result = if request.as_reader().read_to_string(&mut body).is_err() {
            Err(bad("request body is not UTF-8"))
        } else {
            route(model, request.method(), request.url(), &body)
        };
        let (status, value) = match result {
            Ok(v) => (200, v),
            Err(BadRequest(code, message)) => (
                code,
                json!({"object": "error", "message": message, "type": "BadRequestError", "code": code,
                       "error": {"message": message, "type": "BadRequestError", "code": code}}),
            ),
        };
        let header = Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
            .expect("static header");
        let response = Response::from_string(value.to_string())
            .with_status_code(status)
            .with_header(header);
        let _ = request.respond(response); // a client that hung up is not the server's problem
        answered += 1;
        if max_requests.is_some_and(|m| answered >= m) {
            break;
        }
    }
    Ok(())
}

fn route(model: &ServedModel, method: &Method, url: &str, body: &str) -> Result<Value, BadRequest> {
    let path = url.split('?').next().unwrap_or(url);
    match (method, path) {
        (Method::Get, "/health") => Ok(json!({"status": "ok"})),
        (Method::Get, "/v1/models") => Ok(json!({"object": "list", "data": [{
            "id": model.name, "object": "model", "owned_by": "ember", "max_model_len": model.max_model_len,
            "vocab_size": model.teacher.vocab_size(), "max_logprobs": model.max_logprobs,
        }]})),
        (Method::Post, "/v1/completions") => completions(model, &parse(body)?),
        (Method::Post, "/generate") => generate(model, &parse(body)?),
        (_, "/v1/completions" | "/generate" | "/v1/models" | "/health") => Err(BadRequest(
            405,
            format!("method {method} not allowed on {path}"),
        )),
        _ => Err(BadRequest(
            404,
            format!("no route {path}; try POST /v1/completions or POST /generate"),
        )),
    }
}

fn parse(body: &str) -> Result<Value, BadRequest> {
    let v: Value =
        serde_json::from_str(body).map_err(|e| bad(format!("body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad("body must be a JSON object"));
    }
    Ok(v)
}

/// Optional non-negative integer field.
fn uint(req: &Value, key: &str) -> Result<Option<usize>, BadRequest> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| bad(format!("`{key}` must be a non-negative integer"))),
    }
}

fn float(req: &Value, key: &str, default: f32) -> Result<f32, BadRequest> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| bad(format!("`{key}` must be a number"))),
    }
}

/// Token ids from a list of ints, or text through the model's tokenizer.
fn prompt_ids(model: &ServedModel, v: Option<&Value>, key: &str) -> Result<Vec<i32>, BadRequest> {
    let v = v.ok_or_else(|| bad(format!("`{key}` is required")))?;
    let ids: Vec<i64> = match v {
        Value::String(text) if key != "input_ids" => {
            let tok = model.tokenizer.as_ref().ok_or_else(|| {
                bad(format!(
                    "this model has no tokenizer.json: send `{key}` as token ids"
                ))
            })?;
            tok.encode(text.as_str(), false)
                .map_err(|e| bad(format!("cannot tokenize `{key}`: {e}")))?
                .get_ids()
                .iter()
                .map(|&i| i as i64)
                .collect()
        }
        Value::Array(items) => items
            .iter()
            .map(|x| {
                x.as_i64().ok_or_else(|| {
                    bad(format!(
                        "`{key}` must be a string or a list of token ids (one prompt per request)"
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
        _ if key == "input_ids" => return Err(bad("`input_ids` must be a list of token ids")),
        _ => {
            return Err(bad(format!(
                "`{key}` must be a string or a list of token ids"
            )));
        }
    };
    if ids.is_empty() {
        return Err(bad(format!("`{key}` is empty")));
    }
    let vocab = model.teacher.vocab_size() as i64;
    if let Some(bad_id) = ids.iter().find(|&&i| i < 0 || i >= vocab) {
        return Err(bad(format!(
            "token id {bad_id} in `{key}` is outside the vocabulary [0, {vocab})"
        )));
    }
    Ok(ids.into_iter().map(|i| i as i32).collect())
}

/// Log-probabilities `[t, vocab]` of the next token after every prefix of `ids`.
fn logprobs(model: &ServedModel, ids: &[i32]) -> Vec<Vec<f32>> {
    let t = ids.len();
    let x = Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [1, t]), &model.device);
    let lp = log_softmax(model.teacher.forward(x, None), 2);
    let v = model.teacher.vocab_size();
    let flat: Vec<f32> = lp
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("float logprobs");
    flat.chunks(v).map(<[f32]>::to_vec).collect()
}

fn top(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, row[i])).collect()
}

fn rank(row: &[f32], id: usize) -> usize {
    1 + row.iter().filter(|&&x| x > row[id]).count()
}

/// Sample `max_tokens` tokens after `ids`; returns (tokens, log-prob rows they were drawn from).
fn complete(
    model: &ServedModel,
    ids: &[i32],
    max_tokens: usize,
    temperature: f32,
    seed: u64,
    stop: Option<u32>,
) -> (Vec<i32>, Vec<Vec<f32>>) {
    let cfg = GenerateConfig {
        max_new_tokens: max_tokens,
        temperature,
        top_k: 0,
        top_p: 1.0,
        seed,
        stop_token: stop,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut seq = ids.to_vec();
    let (mut out, mut rows) = (Vec::new(), Vec::new());
    for _ in 0..max_tokens {
        // no KV cache in the teacher runner: each step recomputes the whole prefix
        let row = logprobs(model, &seq).pop().expect("non-empty");
        let next = sample_next(&row, &cfg, &mut rng) as i32;
        out.push(next);
        rows.push(row);
        seq.push(next);
        if Some(next as u32) == stop {
            break;
        }
    }
    (out, rows)
}

fn check_k(model: &ServedModel, key: &str, k: Option<usize>) -> Result<(), BadRequest> {
    match k {
        Some(k) if k > model.max_logprobs => Err(bad(format!(
            "Requested {} of {k}, which is greater than max allowed: {} (parameter={key}, value={k})",
            key.replace('_', " "),
            model.max_logprobs
        ))),
        _ => Ok(()),
    }
}

fn decode(model: &ServedModel, ids: &[i32]) -> String {
    model
        .tokenizer
        .as_ref()
        .and_then(|t| {
            t.decode(&ids.iter().map(|&i| i as u32).collect::<Vec<_>>(), false)
                .ok()
        })
        .unwrap_or_default()
}

fn completions(model: &ServedModel, req: &Value) -> Result<Value, BadRequest> {
    if let Some(m) = req.get("model").and_then(Value::as_str)
        && m != model.name
    {
        return Err(BadRequest(
            404,
            format!(
                "The model `{m}` does not exist; this server serves `{}`",
                model.name
            ),
        ));
    }
    let ids = prompt_ids(model, req.get("prompt"), "prompt")?;
    let echo = req.get("echo").and_then(Value::as_bool).unwrap_or(false);
    let max_tokens = uint(req, "max_tokens")?.unwrap_or(16);
    if max_tokens == 0 && !echo {
        return Err(bad("max_tokens must be at least 1, got 0."));
    }
    let max_tokens = max_tokens.max(1);
    if ids.len() + max_tokens > model.max_model_len {
        return Err(bad(format!(
            "prompt ({} tokens) + max_tokens ({max_tokens}) exceeds max_model_len {}",
            ids.len(),
            model.max_model_len
        )));
    }
    let logprobs_k = uint(req, "logprobs")?;
    let prompt_k = uint(req, "prompt_logprobs")?;
    check_k(model, "logprobs", logprobs_k)?;
    check_k(model, "prompt_logprobs", prompt_k)?;
    let temperature = float(req, "temperature", 1.0)?;
    let seed = uint(req, "seed")?.unwrap_or(0) as u64;
    let as_ids = req
        .get("return_tokens_as_token_ids")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (out, rows) = complete(model, &ids, max_tokens, temperature, seed, None);

    let mut choice = json!({"index": 0, "text": decode(model, &out), "finish_reason": "length", "token_ids": out});
    if let Some(k) = prompt_k {
        let all = logprobs(model, &ids);
        let mut entries = vec![Value::Null];
        for (j, &tok) in ids.iter().enumerate().skip(1) {
            let row = &all[j - 1];
            let mut m = serde_json::Map::new();
            // vLLM lists the actual prompt token too, with its true rank
            let mut put = |id: usize| {
                m.insert(id.to_string(), json!({"logprob": row[id], "rank": rank(row, id), "decoded_token": decode(model, &[id as i32])}));
            };
            put(tok as usize);
            for (id, _) in top(row, k) {
                put(id);
            }
            entries.push(Value::Object(m));
        }
        choice["prompt_logprobs"] = Value::Array(entries);
    }
    if let Some(k) = logprobs_k {
        let key = |id: usize| {
            if as_ids {
                format!("token_id:{id}")
            } else {
                decode(model, &[id as i32])
            }
        };
        let top_logprobs: Vec<Value> = rows
            .iter()
            .map(|row| {
                Value::Object(
                    top(row, k)
                        .into_iter()
                        .map(|(id, lp)| (key(id), json!(lp)))
                        .collect(),
                )
            })
            .collect();
        let token_logprobs: Vec<f32> = out
            .iter()
            .zip(&rows)
            .map(|(&t, row)| row[t as usize])
            .collect();
        let tokens: Vec<String> = out.iter().map(|&t| key(t as usize)).collect();
        choice["logprobs"] = json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs});
    }
    Ok(json!({
        "id": "cmpl-ember", "object": "text_completion", "model": model.name, "choices": [choice],
        "usage": {"prompt_tokens": ids.len(), "completion_tokens": out.len(), "total_tokens": ids.len() + out.len()},
    }))
}

fn generate(model: &ServedModel, req: &Value) -> Result<Value, BadRequest> {
    let ids = match (req.get("input_ids"), req.get("text")) {
        (Some(v), _) => prompt_ids(model, Some(v), "input_ids")?,
        (None, t) => prompt_ids(model, t, "text")?,
    };
    let params = req.get("sampling_params").cloned().unwrap_or(json!({}));
    let max_new = uint(&params, "max_new_tokens")?.unwrap_or(16);
    let temperature = float(&params, "temperature", 1.0)?;
    if ids.len() + max_new > model.max_model_len {
        return Err(bad(format!(
            "input ({} tokens) + max_new_tokens ({max_new}) exceeds max_model_len {}",
            ids.len(),
            model.max_model_len
        )));
    }
    let return_logprob = req
        .get("return_logprob")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let k = uint(req, "top_logprobs_num")?.unwrap_or(0);
    check_k(model, "top_logprobs_num", Some(k))?;
    let start = uint(req, "logprob_start_len")?.unwrap_or(0);
    let (out, rows) = complete(model, &ids, max_new, temperature, 0, None);
    let mut meta = json!({"prompt_tokens": ids.len(), "completion_tokens": out.len(), "finish_reason": {"type": "length", "length": max_new}});
    if return_logprob {
        let all = logprobs(model, &ids);
        let triple = |lp: f32, id: usize| json!([lp, id, Value::Null]);
        let tops = |row: &[f32]| {
            Value::Array(
                top(row, k)
                    .into_iter()
                    .map(|(id, lp)| triple(lp, id))
                    .collect(),
            )
        };
        let mut token_lp = Vec::new();
        let mut top_lp = Vec::new();
        for (j, &tok) in ids.iter().enumerate().skip(start) {
            if j == 0 {
                token_lp.push(json!([Value::Null, tok, Value::Null]));
                top_lp.push(Value::Null);
            } else {
                token_lp.push(triple(all[j - 1][tok as usize], tok as usize));
                top_lp.push(tops(&all[j - 1]));
            }
        }
        meta["input_token_logprobs"] = Value::Array(token_lp);
        meta["input_top_logprobs"] = Value::Array(top_lp);
        meta["output_token_logprobs"] = Value::Array(
            out.iter()
                .zip(&rows)
                .map(|(&t, r)| triple(r[t as usize], t as usize))
                .collect(),
        );
        meta["output_top_logprobs"] = Value::Array(rows.iter().map(|r| tops(r)).collect());
    }
    Ok(json!({"text": decode(model, &out), "output_ids": out, "meta_info": meta}))
}
