//! Distillation-specific parts of a run: choosing the batch source from the recipe,
//! vocabulary checks, and validation against the teacher (KL and top-1 agreement).

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::DType;
use ember_data::{LogitsRow, TokenDataset, load_tokenizer, tokenizer_hash};
use ember_teacher::load_teacher;
use serde::{Deserialize, Serialize};

use crate::batches::{LogitsStream, OnlineTeacher, Source};
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

/// Batches for the recipe: token rows, recorded logits, or an in-process teacher.
pub fn build_source(
    cfg: &TrainConfig,
    train: TokenDataset,
    device: &Device,
) -> Result<(Source, Option<ValidTeacher>), TrainError> {
    let Some(teacher) = &cfg.teacher else {
        return Ok((
            Source::Tokens {
                data: train,
                perm: Vec::new(),
            },
            None,
        ));
    };
    let ours = train.manifest.tokenizer_sha256.clone();
    let dataset = &cfg.data.dataset;
    match (&teacher.logits, &teacher.model) {
        (Some(dir), None) => {
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
                    &ours,
                ));
            }
            let valid = match &teacher.validation_logits {
                Some(vdir) => {
                    let v = LogitsStream::open(vdir)?;
                    if v.manifest.meta.tokenizer_sha256 != ours {
                        return Err(tokenizer_mismatch(
                            &format!("teacher logits {}", vdir.display()),
                            &v.manifest.meta.tokenizer_sha256,
                            dataset,
                            &ours,
                        ));
                    }
                    Some(ValidTeacher::Offline(v.all_rows()?))
                }
                None => None,
            };
            Ok((Source::Offline(stream), valid))
        }
        (None, Some(dir)) => {
            let tok = dir.join("tokenizer.json");
            if tok.is_file() {
                let theirs = tokenizer_hash(&load_tokenizer(&tok)?, &tok)?.sha256;
                if theirs != ours {
                    return Err(tokenizer_mismatch(
                        &format!("teacher {}", dir.display()),
                        &theirs,
                        dataset,
                        &ours,
                    ));
                }
            }
            let model = load_teacher(dir, device, DType::F32).map_err(|e| TrainError::Config {
                path: dir.clone(),
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
            let online = Arc::new(OnlineTeacher {
                teacher: model,
                device: device.clone(),
                top_k: teacher.top_k.unwrap_or(64),
            });
            Ok((
                Source::Online {
                    data: train,
                    perm: Vec::new(),
                    teacher: online.clone(),
                },
                Some(ValidTeacher::Online(online)),
            ))
        }
        _ => Err(TrainError::Config {
            path: "[teacher]".into(),
            message:
                "set exactly one of teacher.logits (offline, recorded) or teacher.model (online)"
                    .into(),
        }),
    }
}

/// Share of positions where the student's most likely token is the teacher's.
pub fn top1_agreement(student_top1: &[i64], teacher_top1: &[i32]) -> f64 {
    let hits = student_top1
        .iter()
        .zip(teacher_top1)
        .filter(|(a, b)| **a == **b as i64)
        .count();
    hits as f64 / teacher_top1.len().max(1) as f64
}
