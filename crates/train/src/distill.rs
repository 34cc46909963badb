//! Distillation-specific parts of a run: choosing the batch source from the recipe,
//! vocabulary checks, and validation against the teacher (KL and top-1 agreement).

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::DType;
use ember_data::{LogitsRow, TokenDataset, load_tokenizer, tokenizer_hash};
use ember_teacher::{Protocol, RemoteTeacher, RetryPolicy, load_teacher};
use serde::{Deserialize, Serialize};

use crate::batches::{LogitsStream, OnlineTeacher, Source};
use crate::config::{RemoteProtocol, TeacherSection};
use crate::onpolicy::Scorer;
use crate::{TrainConfig, TrainError};

/// Student against teacher on validation data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KdEval {
    /// Forward KL(teacher || student) at temperature 1 over the top-k + tail, nats per position.
    pub kl: f64,
    /// Share of positions where the student's argmax is the teacher's most likely token.
    pub top1_agreement: f64,
    pub positions: u64,
}

/// What validation compares the student with.
pub enum ValidTeacher {
    Offline(Vec<LogitsRow>),
    Online(Arc<OnlineTeacher>),
}

/// The error every tokenizer mismatch gets, with the fix.
fn tokenizer_mismatch(
    what: &str,
    theirs: &str,
    dataset: &std::path::Path,
    ours: &str,
) -> TrainError {
    TrainError::Vocab(format!(
        "{what} was made with tokenizer {} but dataset {} with {}: the student would learn another vocabulary's ids. \\
         Distill only between models that share a tokenizer: prepare the dataset with the teacher's tokenizer.json \\
         (`ember data prepare --tokenizer <teacher>/tokenizer.json`) and record the logits on that dataset",
        &theirs[..theirs.len().min(12)],
        dataset.display(),
        &ours[..ours.len().min(12)]
    ))
}

/// Refuse a model directory whose tokenizer.json differs from the dataset's (when it has one).
pub(crate) fn check_model_tokenizer(
    dir: &std::path::Path,
    manifest: &ember_data::DatasetManifest,
    dataset: &std::path::Path,
) -> Result<(), TrainError> {
    let tok = dir.join("tokenizer.json");
    if tok.is_file() {
        let theirs = tokenizer_hash(&load_tokenizer(&tok)?, &tok)?.sha256;
        if theirs != manifest.tokenizer_sha256 {
            return Err(tokenizer_mismatch(
                &format!("model {}", dir.display()),
                &theirs,
                dataset,
                &manifest.tokenizer_sha256,
            ));
        }
    }
    Ok(())
}

/// Batches for the recipe: token rows, recorded logits, or an in-process teacher; and for
/// on-policy distillation, who scores the student's samples.
pub fn build_source(
    cfg: &TrainConfig,
    train: TokenDataset,
    device: &Device,
) -> Result<(Source, Option<ValidTeacher>, Option<Scorer>), TrainError> {
    let Some(teacher) = &cfg.teacher else {
        return Ok((
            Source::Tokens {
                data: train,
                perm: Vec::new(),
            },
            None,
            None,
        ));
    };
    let ours = train.manifest.tokenizer_sha256.clone();
    let dataset = &cfg.data.dataset;
    let Some(onpolicy) = &cfg.onpolicy else {
        if teacher.url.is_some() {
            return Err(TrainError::Config {
                path: "teacher.url".into(),
                message: "a served teacher is used for on-policy distillation ([onpolicy]); to distil offline from it, record its logits with `ember record --remote ...` and set teacher.logits".into(),
            });
        }
        return match (&teacher.logits, &teacher.model) {
            (Some(dir), None) => {
                let (source, valid) = recorded(teacher, dir, train, &ours, dataset)?;
                Ok((source, valid, None))
            }
            (None, Some(dir)) => {
                let online = in_process(teacher, dir, &train, &ours, dataset, device)?;
                let valid = recorded_validation(teacher, &ours, dataset)?
                    .unwrap_or_else(|| ValidTeacher::Online(online.clone()));
                Ok((
                    Source::Online {
                        data: train,
                        perm: Vec::new(),
                        teacher: online,
                    },
                    Some(valid),
                    None,
                ))
            }
            _ => Err(TrainError::Config {
                path: "[teacher]".into(),
                message:
                    "set exactly one of teacher.logits (offline, recorded) or teacher.model (online)"
                        .into(),
            }),
        };
    };
    // on-policy: the scorer, then what the offline share of the batches comes from
    let local = match (&teacher.model, &teacher.url) {
        (Some(dir), None) => Some(in_process(teacher, dir, &train, &ours, dataset, device)?),
        (None, Some(_)) => None,
        _ => {
            return Err(TrainError::Config {
                path: "[teacher]".into(),
                message: "on-policy distillation needs exactly one of teacher.model (in-process) or teacher.url (served) to score the samples".into(),
            });
        }
    };
    let scorer = match (&local, &teacher.url) {
        (Some(t), _) => Scorer::Local(t.clone()),
        (None, Some(url)) => Scorer::Remote {
            teacher: remote_teacher(teacher, url)?,
            concurrency: onpolicy.remote_concurrency,
        },
        (None, None) => unreachable!("checked above"),
    };
    let (source, valid) = match (&teacher.logits, &local) {
        (Some(dir), _) => recorded(teacher, dir, train, &ours, dataset)?,
        (None, Some(t)) => (
            Source::Online {
                data: train,
                perm: Vec::new(),
                teacher: t.clone(),
            },
            Some(
                recorded_validation(teacher, &ours, dataset)?
                    .unwrap_or_else(|| ValidTeacher::Online(t.clone())),
            ),
        ),
        (None, None) if onpolicy.lambda < 1.0 => {
            return Err(TrainError::Config {
                path: "onpolicy.lambda".into(),
                message: format!(
                    "{} leaves offline batches, but a served teacher scores only the samples: set teacher.logits (recorded with `ember record --remote ...`) or onpolicy.lambda = 1",
                    onpolicy.lambda
                ),
            });
        }
        (None, None) => (
            Source::Tokens {
                data: train,
                perm: Vec::new(),
            },
            recorded_validation(teacher, &ours, dataset)?,
        ),
    };
    Ok((source, valid, Some(scorer)))
}

/// The client of a served teacher from `[teacher]`'s url, protocol, served_model and retry keys.
fn remote_teacher(teacher: &TeacherSection, url: &str) -> Result<RemoteTeacher, TrainError> {
    let protocol = match teacher.protocol {
        Some(RemoteProtocol::Vllm) => Protocol::Vllm,
        Some(RemoteProtocol::Sglang) => Protocol::Sglang,
        None => {
            return Err(TrainError::Config {
                path: "teacher.protocol".into(),
                message: "a served teacher needs teacher.protocol = \"vllm\" or \"sglang\"".into(),
            });
        }
    };
    let model = teacher
        .served_model
        .clone()
        .ok_or_else(|| TrainError::Config {
            path: "teacher.served_model".into(),
            message: "a served teacher needs the name the engine serves it under".into(),
        })?;
    let defaults = RetryPolicy::default();
    let secs = |v: Option<f64>, key: &str, default: std::time::Duration| match v {
        None => Ok(default),
        Some(s) if s.is_finite() && (0.0..=86_400.0).contains(&s) => {
            Ok(std::time::Duration::from_secs_f64(s))
        }
        Some(s) => Err(TrainError::Config {
            path: format!("teacher.{key}").into(),
            message: format!("{s} is not a number of seconds between 0 and 86400"),
        }),
    };
    let retry = RetryPolicy {
        retries: teacher.retries.unwrap_or(defaults.retries),
        backoff: secs(teacher.retry_backoff_s, "retry_backoff_s", defaults.backoff)?,
        timeout: secs(teacher.timeout_s, "timeout_s", defaults.timeout)?,
    };
    Ok(RemoteTeacher::with_retry(url, &model, protocol, retry))
}

/// Recorded logits of `dir` as the batch source, with the validation logits when given.
fn recorded(
    teacher: &TeacherSection,
    dir: &std::path::Path,
    train: TokenDataset,
    ours: &str,
    dataset: &std::path::Path,
) -> Result<(Source, Option<ValidTeacher>), TrainError> {
    let mut stream = LogitsStream::open(dir)?;
    if train.labels(0).is_some() {
        stream.labels = Some(train);
    }
    stream.keep_k = teacher
        .top_k
        .map_or(stream.manifest.meta.k, |k| k.min(stream.manifest.meta.k));
    if stream.keep_k == 0 {
        return Err(TrainError::Config {
            path: "teacher.top_k".into(),
            message: "must be at least 1".into(),
        });
    }
    if stream.manifest.meta.tokenizer_sha256 != ours {
        return Err(tokenizer_mismatch(
            &format!("teacher logits {}", dir.display()),
            &stream.manifest.meta.tokenizer_sha256,
            dataset,
            ours,
        ));
    }
    let valid = recorded_validation(teacher, ours, dataset)?;
    Ok((Source::Offline(stream), valid))
}

/// The recorded validation logits (`teacher.validation_logits`), when given.
fn recorded_validation(
    teacher: &TeacherSection,
    ours: &str,
    dataset: &std::path::Path,
) -> Result<Option<ValidTeacher>, TrainError> {
    let Some(vdir) = &teacher.validation_logits else {
        return Ok(None);
    };
    let v = LogitsStream::open(vdir)?;
    if v.manifest.meta.tokenizer_sha256 != ours {
        return Err(tokenizer_mismatch(
            &format!("teacher logits {}", vdir.display()),
            &v.manifest.meta.tokenizer_sha256,
            dataset,
            ours,
        ));
    }
    Ok(Some(ValidTeacher::Offline(v.all_rows()?)))
}

/// The teacher of `dir` loaded in this process, checked against the dataset's tokenizer.
fn in_process(
    teacher: &TeacherSection,
    dir: &std::path::Path,
    train: &TokenDataset,
    ours: &str,
    dataset: &std::path::Path,
    device: &Device,
) -> Result<Arc<OnlineTeacher>, TrainError> {
    let tok = dir.join("tokenizer.json");
    if tok.is_file() {
        let theirs = tokenizer_hash(&load_tokenizer(&tok)?, &tok)?.sha256;
        if theirs != ours {
            return Err(tokenizer_mismatch(
                &format!("teacher {}", dir.display()),
                &theirs,
                dataset,
                ours,
            ));
        }
    }
    let model = load_teacher(dir, device, DType::F32).map_err(|e| TrainError::Config {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    if model.vocab_size() < train.manifest.vocab_size {
        return Err(TrainError::Vocab(format!(
            "teacher {} has {} output ids, fewer than the dataset tokenizer's {}",
            dir.display(),
            model.vocab_size(),
            train.manifest.vocab_size
        )));
    }
    Ok(Arc::new(OnlineTeacher {
        teacher: model,
        device: device.clone(),
        top_k: teacher.top_k.unwrap_or(64),
    }))
}

/// Share of positions where the student's most likely token is the teacher's (positions
/// whose teacher token is negative have no loss and are left out).
pub fn top1_agreement(student_top1: &[i64], teacher_top1: &[i32]) -> f64 {
    let (mut hits, mut n) = (0usize, 0usize);
    for (a, b) in student_top1.iter().zip(teacher_top1) {
        if *b >= 0 {
            n += 1;
            hits += usize::from(*a == *b as i64);
        }
    }
    hits as f64 / n.max(1) as f64
}
