//! `ember serve`: any model Ember can load (students, and every teacher architecture)
//! behind two HTTP protocols, so it doubles as a remote teacher for `ember record`:
//!
//! - `POST /v1/completions`, OpenAI-compatible with vLLM's `prompt_logprobs` extension;
//! - `POST /generate`, SGLang's native API with `input_top_logprobs`;
//! - `GET /v1/models`, `GET /health`.
//!
//! The request and response shapes are `ember_teacher::protocol`'s, the ones the
//! remote-teacher client sends and reads. Log-probabilities are `log_softmax` of the raw
//! logits over the full vocabulary (temperature 1), like vLLM's. Generation decodes with a
//! KV cache (one position per step). Requests are served concurrently: HTTP on a tokio
//! runtime (axum on hyper), model work on a pool of `workers` threads, so a short request
//! is not queued behind a long generation. Limits: request body size (413), header and
//! body read time (the connection is closed), open connections (further ones wait to be
//! accepted). A bad request gets a 4xx JSON error naming the field, never a crash.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::log_softmax;
use ember_student::{GenerateConfig, sample_next};
use ember_teacher::protocol::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, ErrorBody,
    FinishReason, GenerateRequest, GenerateResponse, MetaInfo, Prompt, PromptLogprob, TokenLogprob,
    UnsupportedSampling, Usage,
};
use ember_teacher::{Teacher, TeacherError, load_teacher};
use rand::SeedableRng;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Teacher(#[from] TeacherError),
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: String, message: String },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("server runtime: {0}")]
    Runtime(String),
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

/// How much the server takes on at once.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Requests computed at the same time; more wait for a free worker.
    pub workers: usize,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Time a client gets to send a request's headers (also while idle on a kept-alive
    /// connection) and, separately, its body; then the connection is closed.
    pub read_timeout: Duration,
    /// Connections open at once; further clients wait to be accepted.
    pub max_connections: usize,
    /// Stop after answering this many requests (for scripted use).
    pub max_requests: Option<usize>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            // more workers than cores: requests share the cores, so a short one runs beside
            // long generations instead of waiting for one to finish
            workers: std::thread::available_parallelism().map_or(4, |n| (2 * n.get()).max(4)),
            max_body_bytes: 8 << 20,
            read_timeout: Duration::from_secs(30),
            max_connections: 256,
            max_requests: None,
        }
    }
}

/// A request error: HTTP status and message.
#[derive(Debug)]
struct BadRequest(StatusCode, String);

fn bad(msg: impl Into<String>) -> BadRequest {
    BadRequest(StatusCode::BAD_REQUEST, msg.into())
}

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        let body = ErrorBody::new(self.0.as_u16(), &self.1);
        (self.0, axum::Json(body)).into_response()
    }
}

struct App {
    model: Arc<ServedModel>,
    workers: Semaphore,
    answered: AtomicUsize,
    max_requests: Option<usize>,
    done: Notify,
}

impl App {
    /// Count an answered request; wake the shutdown once `max_requests` are answered.
    fn answered(&self) {
        let n = self.answered.fetch_add(1, Ordering::SeqCst) + 1;
        if self.max_requests.is_some_and(|m| n >= m) {
            self.done.notify_one();
        }
    }

    /// Run `job` on a worker thread, waiting for a free one.
    async fn compute<T: Send + 'static>(
        self: &Arc<Self>,
        job: impl FnOnce(&ServedModel) -> T + Send + 'static,
    ) -> Result<T, BadRequest> {
        let _permit = self.workers.acquire().await.map_err(|_| {
            BadRequest(
                StatusCode::SERVICE_UNAVAILABLE,
                "server is shutting down".into(),
            )
        })?;
        let model = self.model.clone();
        tokio::task::spawn_blocking(move || job(&model))
            .await
            .map_err(|e| {
                BadRequest(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the model failed on this request: {e}"),
                )
            })
    }
}

/// Bind `addr` (port 0 picks a free port), call `ready` with the bound address, then serve
/// until the process ends or `options.max_requests` requests have been answered.
pub fn serve(
    model: ServedModel,
    addr: &str,
    options: &ServeOptions,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(options.workers.max(1))
        .enable_all()
        .build()
        .map_err(|e| ServeError::Runtime(e.to_string()))?;
    runtime.block_on(run(model, addr, options.clone(), ready))
}

async fn run(
    model: ServedModel,
    addr: &str,
    options: ServeOptions,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ServeError::Bind {
            addr: addr.into(),
            message: e.to_string(),
        })?;
    let bound = listener.local_addr().map_err(|e| ServeError::Bind {
        addr: addr.into(),
        message: e.to_string(),
    })?;
    let app = Arc::new(App {
        model: Arc::new(model),
        workers: Semaphore::new(options.workers.max(1)),
        answered: AtomicUsize::new(0),
        max_requests: options.max_requests,
        done: Notify::new(),
    });
    let router = Router::new()
        .route("/health", get(health).fallback(not_allowed))
        .route("/v1/models", get(models).fallback(not_allowed))
        .route("/v1/completions", post(completions).fallback(not_allowed))
        .route("/generate", post(generate).fallback(not_allowed))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            (options.read_timeout, options.max_body_bytes),
            guard_body,
        ))
        .with_state(app.clone());
    ready(bound);
    let connections = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let service = hyper_util::service::TowerToHyperService::new(router);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p.expect("connection semaphore is never closed"),
            _ = app.done.notified() => break,
        };
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // out of file descriptors and the like: wait, do not spin or exit
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = app.done.notified() => break,
        };
        let service = service.clone();
        let timeout = options.read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(timeout)
                .keep_alive(true);
            let _ = http
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
    // let the last answers reach their clients
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// A body announced larger than the limit is refused (413) from its headers, before any
/// of it is read; reading a body may take at most the read timeout (then 408).
async fn guard_body(
    State((timeout, max_bytes)): State<(Duration, usize)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(n) = announced
        && n > max_bytes as u64
    {
        return BadRequest(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body too large: {n} bytes, the limit is {max_bytes} (--max-body-bytes)"
            ),
        )
        .into_response();
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::Body::new(TimedBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(timeout)),
    });
    next.run(axum::extract::Request::from_parts(parts, body))
        .await
}

const BODY_TIMED_OUT: &str = "request body read timed out";

/// A request body that fails once its deadline passes.
struct TimedBody {
    inner: axum::body::Body,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        if self.deadline.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(Some(Err(axum::Error::new(BODY_TIMED_OUT))));
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

async fn health(State(app): State<Arc<App>>) -> Response {
    app.answered();
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn models(State(app): State<Arc<App>>) -> Response {
    app.answered();
    let m = &app.model;
    axum::Json(json!({"object": "list", "data": [{
        "id": m.name, "object": "model", "owned_by": "ember", "max_model_len": m.max_model_len,
        "vocab_size": m.teacher.vocab_size(), "max_logprobs": m.max_logprobs,
    }]}))
    .into_response()
}

async fn not_allowed(State(app): State<Arc<App>>, req: axum::extract::Request) -> Response {
    app.answered();
    BadRequest(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
    .into_response()
}

async fn no_route(State(app): State<Arc<App>>, req: axum::extract::Request) -> Response {
    app.answered();
    BadRequest(
        StatusCode::NOT_FOUND,
        format!(
            "no route {}; try POST /v1/completions or POST /generate",
            req.uri().path()
        ),
    )
    .into_response()
}

/// The body as `T`, or a 4xx naming what is wrong (413 for a body over the limit, the
/// field's path for a mistyped field).
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, BadRequest> {
    let body = body.map_err(|r| {
        let status = r.status();
        let text = r.body_text();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            BadRequest(status, format!("request body too large: {text}"))
        } else if text.contains(BODY_TIMED_OUT) {
            BadRequest(
                StatusCode::REQUEST_TIMEOUT,
                format!("{BODY_TIMED_OUT}: {text}"),
            )
        } else {
            BadRequest(status, format!("cannot read the request body: {text}"))
        }
    })?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(bad("body must be a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        bad(format!("`{path}`: {}", e.into_inner()))
    })
}

/// A request of one protocol, checked on the async side, run on a worker.
trait Job: Sized + Send + 'static {
    type Request: DeserializeOwned;
    type Response: serde::Serialize + Send + 'static;
    fn new(model: &ServedModel, req: Self::Request) -> Result<Self, BadRequest>;
    fn run(self, model: &ServedModel) -> Self::Response;
}

async fn handle<J: Job>(app: Arc<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let result = async {
        let job = J::new(&app.model, parse(body)?)?;
        app.compute(move |m| job.run(m)).await
    }
    .await;
    app.answered();
    match result {
        Ok(resp) => axum::Json(resp).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    handle::<CompletionJob>(app, body).await
}

async fn generate(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    handle::<GenerateJob>(app, body).await
}

/// Sampling settings of one request, checked.
#[derive(Debug, Clone)]
struct Sampling {
    temperature: f32,
    top_p: f32,
    top_k: usize,
    seed: u64,
}

impl Sampling {
    fn new(
        temperature: Option<f64>,
        top_p: Option<f64>,
        top_k: Option<i64>,
        n: Option<u64>,
        seed: Option<u64>,
    ) -> Result<Self, BadRequest> {
        let temperature = temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(bad(format!(
                "temperature must be non-negative, got {temperature}"
            )));
        }
        let top_p = top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(bad(format!("top_p must be in (0, 1], got {top_p}")));
        }
        let top_k = match top_k.unwrap_or(-1) {
            -1 | 0 => 0,
            k if k > 0 => k as usize,
            k => {
                return Err(bad(format!(
                    "top_k must be -1 (disable), or at least 1, got {k}"
                )));
            }
        };
        if let Some(n) = n
            && n != 1
        {
            return Err(bad(format!(
                "n = {n} is not supported: Ember returns one completion per request"
            )));
        }
        Ok(Self {
            temperature: temperature as f32,
            top_p: top_p as f32,
            top_k,
            seed: seed.unwrap_or(0),
        })
    }
}

/// A sampling setting this server does not implement, given with a non-default value, is a
/// 400 naming it (never silently ignored).
fn refuse_unsupported(u: &UnsupportedSampling) -> Result<(), BadRequest> {
    match u.first_set() {
        Some(setting) => Err(bad(format!("{setting} is not supported by this server"))),
        None => Ok(()),
    }
}

/// Token ids from ids, or text through the model's tokenizer; `key` names the field.
fn prompt_ids(
    model: &ServedModel,
    prompt: Option<Prompt>,
    key: &str,
) -> Result<Vec<i32>, BadRequest> {
    let ids: Vec<i64> = match prompt.ok_or_else(|| bad(format!("`{key}` is required")))? {
        Prompt::Text(text) => {
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
        Prompt::Ids(ids) => ids,
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

fn check_len(model: &ServedModel, prompt: usize, new: usize, what: &str) -> Result<(), BadRequest> {
    if prompt + new > model.max_model_len {
        return Err(bad(format!(
            "prompt ({prompt} tokens) + {what} ({new}) exceeds max_model_len {}",
            model.max_model_len
        )));
    }
    Ok(())
}

fn check_k(model: &ServedModel, key: &str, k: Option<u64>) -> Result<Option<usize>, BadRequest> {
    match k {
        Some(k) if k as usize > model.max_logprobs => Err(bad(format!(
            "Requested {} of {k}, which is greater than max allowed: {} (parameter={key}, value={k})",
            key.replace('_', " "),
            model.max_logprobs
        ))),
        k => Ok(k.map(|k| k as usize)),
    }
}

/// Log-probability rows `[t, vocab]` of a `[1, t, vocab]` logits tensor.
fn rows(logits: Tensor<3>) -> Vec<Vec<f32>> {
    let v = logits.dims()[2];
    let flat: Vec<f32> = log_softmax(logits, 2)
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("float logprobs");
    flat.chunks(v).map(<[f32]>::to_vec).collect()
}

/// Prompt rows (the distribution after every prompt prefix) and `max_tokens` sampled tokens
/// with the rows they were drawn from; decoding uses the KV cache, one position per step.
fn complete(
    model: &ServedModel,
    ids: &[i32],
    max_tokens: usize,
    sampling: &Sampling,
) -> (Vec<Vec<f32>>, Vec<i32>, Vec<Vec<f32>>) {
    let cfg = GenerateConfig {
        max_new_tokens: max_tokens,
        temperature: sampling.temperature,
        top_k: sampling.top_k,
        top_p: sampling.top_p,
        seed: sampling.seed,
        stop_token: None,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(sampling.seed);
    let teacher = &model.teacher;
    let mut cache = teacher.new_cache();
    let x =
        Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &model.device);
    let prompt = rows(teacher.forward_cached(x, &mut cache));
    let mut row = prompt.last().expect("non-empty prompt").clone();
    let (mut out, mut out_rows) = (Vec::new(), Vec::new());
    for step in 0..max_tokens {
        let next = sample_next(&row, &cfg, &mut rng) as i32;
        out.push(next);
        out_rows.push(std::mem::take(&mut row));
        if step + 1 < max_tokens {
            let x = Tensor::<2, Int>::from_data(TensorData::new(vec![next], [1, 1]), &model.device);
            row = rows(teacher.forward_cached(x, &mut cache))
                .pop()
                .expect("one row");
        }
    }
    (prompt, out, out_rows)
}

fn top(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    ember_nn::topk_indices(row, k)
        .into_iter()
        .map(|i| (i, row[i]))
        .collect()
}

fn rank(row: &[f32], id: usize) -> u64 {
    1 + row.iter().filter(|&&x| x > row[id]).count() as u64
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

/// A checked `/v1/completions` request.
struct CompletionJob {
    ids: Vec<i32>,
    max_tokens: usize,
    sampling: Sampling,
    logprobs: Option<usize>,
    prompt_logprobs: Option<usize>,
    as_ids: bool,
}

impl Job for CompletionJob {
    type Request = CompletionRequest;
    type Response = CompletionResponse;

    fn new(model: &ServedModel, req: CompletionRequest) -> Result<Self, BadRequest> {
        if let Some(m) = &req.model
            && *m != model.name
        {
            return Err(BadRequest(
                StatusCode::NOT_FOUND,
                format!(
                    "The model `{m}` does not exist; this server serves `{}`",
                    model.name
                ),
            ));
        }
        let ids = prompt_ids(model, req.prompt, "prompt")?;
        if req.echo == Some(true) {
            return Err(bad(
                "echo = true is not supported: the completion text is the generated tokens only",
            ));
        }
        refuse_unsupported(&req.unsupported)?;
        let max_tokens = req.max_tokens.unwrap_or(16) as usize;
        if max_tokens == 0 {
            return Err(bad("max_tokens must be at least 1, got 0."));
        }
        check_len(model, ids.len(), max_tokens, "max_tokens")?;
        Ok(Self {
            sampling: Sampling::new(req.temperature, req.top_p, req.top_k, req.n, req.seed)?,
            logprobs: check_k(model, "logprobs", req.logprobs)?,
            prompt_logprobs: check_k(model, "prompt_logprobs", req.prompt_logprobs)?,
            as_ids: req.return_tokens_as_token_ids.unwrap_or(false),
            ids,
            max_tokens,
        })
    }

    fn run(self, model: &ServedModel) -> CompletionResponse {
        let (prompt_rows, out, out_rows) =
            complete(model, &self.ids, self.max_tokens, &self.sampling);
        let prompt_logprobs = self.prompt_logprobs.map(|k| {
            let mut entries = vec![None];
            for (j, &tok) in self.ids.iter().enumerate().skip(1) {
                let row = &prompt_rows[j - 1];
                let mut m = BTreeMap::new();
                // vLLM lists the actual prompt token too, with its true rank
                let mut put = |id: usize| {
                    m.insert(
                        id.to_string(),
                        PromptLogprob {
                            logprob: row[id],
                            rank: Some(rank(row, id)),
                            decoded_token: Some(decode(model, &[id as i32])),
                        },
                    );
                };
                put(tok as usize);
                for (id, _) in top(row, k) {
                    put(id);
                }
                entries.push(Some(m));
            }
            entries
        });
        let key = |id: usize| {
            if self.as_ids {
                format!("token_id:{id}")
            } else {
                decode(model, &[id as i32])
            }
        };
        let logprobs = self.logprobs.map(|k| CompletionLogprobs {
            tokens: out.iter().map(|&t| key(t as usize)).collect(),
            token_logprobs: out
                .iter()
                .zip(&out_rows)
                .map(|(&t, row)| row[t as usize])
                .collect(),
            top_logprobs: out_rows
                .iter()
                .map(|row| {
                    top(row, k)
                        .into_iter()
                        .map(|(id, lp)| (key(id), lp))
                        .collect()
                })
                .collect(),
        });
        let n = (self.ids.len() as u64, out.len() as u64);
        CompletionResponse {
            id: "cmpl-ember".into(),
            object: "text_completion".into(),
            model: model.name.clone(),
            choices: vec![CompletionChoice {
                index: 0,
                text: decode(model, &out),
                finish_reason: Some("length".into()),
                token_ids: Some(out.iter().map(|&t| t as i64).collect()),
                prompt_logprobs,
                logprobs,
            }],
            usage: Usage {
                prompt_tokens: n.0,
                completion_tokens: n.1,
                total_tokens: n.0 + n.1,
            },
        }
    }
}

/// A checked SGLang `/generate` request.
struct GenerateJob {
    ids: Vec<i32>,
    max_new: usize,
    sampling: Sampling,
    return_logprob: bool,
    k: usize,
    start: usize,
}

impl Job for GenerateJob {
    type Request = GenerateRequest;
    type Response = GenerateResponse;

    fn new(model: &ServedModel, req: GenerateRequest) -> Result<Self, BadRequest> {
        let ids = match (req.input_ids, req.text) {
            (Some(ids), _) => prompt_ids(model, Some(Prompt::Ids(ids)), "input_ids")?,
            (None, text) => prompt_ids(model, text.map(Prompt::Text), "text")?,
        };
        let p = &req.sampling_params;
        refuse_unsupported(&p.unsupported)?;
        if req.stream == Some(true) {
            return Err(bad("stream = true is not supported by this server"));
        }
        let max_new = p.max_new_tokens.unwrap_or(16) as usize;
        if max_new == 0 {
            return Err(bad(
                "sampling_params.max_new_tokens must be at least 1, got 0",
            ));
        }
        check_len(model, ids.len(), max_new, "max_new_tokens")?;
        let start = req.logprob_start_len.unwrap_or(0) as usize;
        if start > ids.len() {
            return Err(bad(format!(
                "logprob_start_len {start} is beyond the prompt ({} tokens)",
                ids.len()
            )));
        }
        Ok(Self {
            sampling: Sampling::new(p.temperature, p.top_p, p.top_k, p.n, p.sampling_seed)?,
            return_logprob: req.return_logprob.unwrap_or(false),
            k: check_k(model, "top_logprobs_num", req.top_logprobs_num)?.unwrap_or(0),
            ids,
            max_new,
            start,
        })
    }

    fn run(self, model: &ServedModel) -> GenerateResponse {
        let (prompt_rows, out, out_rows) = complete(model, &self.ids, self.max_new, &self.sampling);
        let mut meta = MetaInfo {
            prompt_tokens: self.ids.len() as u64,
            completion_tokens: out.len() as u64,
            finish_reason: Some(FinishReason {
                kind: "length".into(),
                length: Some(self.max_new as u64),
            }),
            input_token_logprobs: None,
            input_top_logprobs: None,
            output_token_logprobs: None,
            output_top_logprobs: None,
        };
        if self.return_logprob {
            let k = self.k;
            let tops = |row: &[f32]| {
                top(row, k)
                    .into_iter()
                    .map(|(id, lp)| TokenLogprob(Some(lp), id as i64, None))
                    .collect::<Vec<_>>()
            };
            let (mut token_lp, mut top_lp) = (Vec::new(), Vec::new());
            for (j, &tok) in self.ids.iter().enumerate().skip(self.start) {
                if j == 0 {
                    token_lp.push(TokenLogprob(None, tok as i64, None));
                    top_lp.push(None);
                } else {
                    let row = &prompt_rows[j - 1];
                    token_lp.push(TokenLogprob(Some(row[tok as usize]), tok as i64, None));
                    top_lp.push(Some(tops(row)));
                }
            }
            meta.input_token_logprobs = Some(token_lp);
            meta.input_top_logprobs = Some(top_lp);
            meta.output_token_logprobs = Some(
                out.iter()
                    .zip(&out_rows)
                    .map(|(&t, r)| TokenLogprob(Some(r[t as usize]), t as i64, None))
                    .collect(),
            );
            meta.output_top_logprobs = Some(out_rows.iter().map(|r| Some(tops(r))).collect());
        }
        GenerateResponse {
            text: decode(model, &out),
            output_ids: Some(out.iter().map(|&t| t as i64).collect()),
            meta_info: meta,
        }
    }
}
