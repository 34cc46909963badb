//! The teacher-logits format: where the teacher runner and the trainer meet.
//!
//! A logits directory holds `logits.json` (manifest) and Arrow IPC shards
//! `<split>-NNNNN.arrow`, one row per sequence of the source dataset:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `row_index` | `UInt64` | row of the source dataset split |
//! | `input_ids` | `FixedSizeList<Int32, T>` | the sequence |
//! | `topk_ids` | `FixedSizeList<FixedSizeList<Int32, k>, T>` | per position, the k most likely next tokens, most likely first |
//! | `topk_logprobs` | `FixedSizeList<FixedSizeList<Float32, k>, T>` | their log-probabilities, normalised over the full vocabulary |
//!
//! Position `i` holds the teacher's distribution of token `i + 1` given tokens `0..=i`.
//! Because log-probabilities are normalised over the whole vocabulary, the probability
//! mass outside the top k is `1 - sum(exp(topk_logprobs))`.
//!
//! That is format v1 ([`LogitsCodec::Full`]). Format v2 ([`LogitsCodec::Compact`], see
//! `compact.rs`) keeps `row_index` and `input_ids` and replaces the two top-k columns by
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `counts` | `FixedSizeList<UInt16, T>` | entries kept per position (1..=k) |
//! | `tail_log` | `FixedSizeList<Float16, T>` | `ln(1 - sum p)` over the kept entries |
//! | `ids` | `Binary` | the row's kept ids, `ceil(log2 vocab_size / 8)` bytes each as byte planes (low bytes first) |
//! | `gaps` | `Binary` | per position, the grid increments of entries `1..n` |
//!
//! with the codec's settings in the schema metadata (`ember.codec`) and IPC buffer
//! compression. Format v3 (`ember.codec` `coder: "rans"`) has the same `counts` and
//! `tail_log` and, instead of `ids` and `gaps`,
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `coded` | `Binary` | per row, one rANS stream of its ids and gap bytes |
//! | `tables` | `Binary` | the shard's frequency tables in the first row, the others empty |
//!
//! The reader decodes v2 and v3 into the same [`LogitsRow`]s, `k` entries per position,
//! padding a position with fewer entries by id -1 at log-probability -inf.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, FixedSizeListArray, Float16Array, Float32Array, Int32Array,
    UInt16Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use half::f16;
use serde::{Deserialize, Serialize};

use crate::compact::{
    CodecStats, EncodedRow, EntryCoder, IpcCompression, LogitsCodec, RowIds, decode_row,
    encode_position, id_bytes, id_planes, rans_decode_row, rans_encode_rows, rans_read_tables,
};
use crate::{DataError, Split, open_ipc, read_manifest, write_atomic, write_ipc_atomic};

/// Newest version of the logits format (v1: full precision; v2: compact; v3: compact with
/// rANS-coded ids and gaps). All are read.
pub const LOGITS_FORMAT_VERSION: u32 = 3;

/// Who produced the logits and how; stored in every shard's schema metadata and in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogitsMeta {
    /// Teacher name (directory name or served model id).
    pub teacher: String,
    /// SHA-256 of the teacher's config.json (or of the served model id for remote teachers).
    pub teacher_config_sha256: String,
    /// SHA-256 of the tokenizer (see `tokenizer_hash`), shared with the dataset.
    pub tokenizer_sha256: String,
    /// Size of the teacher's output layer (may exceed the tokenizer's by padding).
    pub vocab_size: usize,
    pub k: usize,
    /// Softmax temperature the log-probabilities were computed at.
    pub temperature: f32,
    pub seq_len: usize,
    pub split: Split,
    /// `local`, `vllm`, `sglang`, `distillkit`.
    pub source: String,
    /// Fingerprint of a local teacher's weights (SHA-256 over its safetensors files' names,
    /// sizes and headers), so that a resumed recording never mixes two versions of a
    /// teacher; empty when unknown (served teachers, or shards of older Ember versions).
    #[serde(default)]
    pub teacher_weights: String,
    /// How the shards encode the distributions (v1 manifests: full precision).
    #[serde(default)]
    pub codec: LogitsCodec,
}

impl LogitsMeta {
    fn to_schema_metadata(&self) -> HashMap<String, String> {
        let mut md = HashMap::from([
            ("ember.format".into(), "ember-logits".into()),
            (
                "ember.format_version".into(),
                self.codec.version().to_string(),
            ),
            ("ember.teacher".into(), self.teacher.clone()),
            (
                "ember.teacher_config_sha256".into(),
                self.teacher_config_sha256.clone(),
            ),
            (
                "ember.tokenizer_sha256".into(),
                self.tokenizer_sha256.clone(),
            ),
            ("ember.vocab_size".into(), self.vocab_size.to_string()),
            ("ember.k".into(), self.k.to_string()),
            ("ember.temperature".into(), self.temperature.to_string()),
            ("ember.seq_len".into(), self.seq_len.to_string()),
            ("ember.split".into(), self.split.name().into()),
            ("ember.source".into(), self.source.clone()),
            ("ember.teacher_weights".into(), self.teacher_weights.clone()),
        ]);
        if let LogitsCodec::Compact(c) = &self.codec {
            md.insert(
                "ember.codec".into(),
                serde_json::to_string(c).expect("serializes"),
            );
        }
        md
    }

    fn from_schema_metadata(md: &HashMap<String, String>, path: &Path) -> Result<Self, DataError> {
        let get = |k: &str| {
            md.get(k).cloned().ok_or_else(|| DataError::Format {
                path: path.to_path_buf(),
                message: format!("schema metadata lacks {k}; not an Ember logits shard"),
            })
        };
        let num = |k: &str| -> Result<usize, DataError> {
            get(k)?.parse().map_err(|_| DataError::Format {
                path: path.to_path_buf(),
                message: format!("{k} is not a number"),
            })
        };
        if get("ember.format")? != "ember-logits" {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                message: "ember.format is not ember-logits".into(),
            });
        }
        let codec = match num("ember.format_version")? {
            1 => LogitsCodec::Full,
            version @ (2 | 3) => {
                let codec = LogitsCodec::Compact(
                    serde_json::from_str(&get("ember.codec")?).map_err(|e| DataError::Format {
                        path: path.to_path_buf(),
                        message: format!("ember.codec is not a compact codec: {e}"),
                    })?,
                );
                if codec.version() != version as u32 {
                    return Err(DataError::Format {
                        path: path.to_path_buf(),
                        message: format!(
                            "logits format v{version} with a codec of v{} ({codec:?})",
                            codec.version()
                        ),
                    });
                }
                codec
            }
            version => {
                return Err(DataError::Format {
                    path: path.to_path_buf(),
                    message: format!(
                        "logits format v{version}; this Ember reads v1 to v{LOGITS_FORMAT_VERSION} (a newer Ember wrote it?)"
                    ),
                });
            }
        };
        let split = match get("ember.split")?.as_str() {
            "train" => Split::Train,
            "validation" => Split::Validation,
            other => {
                return Err(DataError::Format {
                    path: path.to_path_buf(),
                    message: format!("unknown split {other}"),
                });
            }
        };
        Ok(Self {
            teacher: get("ember.teacher")?,
            teacher_config_sha256: get("ember.teacher_config_sha256")?,
            tokenizer_sha256: get("ember.tokenizer_sha256")?,
            vocab_size: num("ember.vocab_size")?,
            k: num("ember.k")?,
            temperature: get("ember.temperature")?
                .parse()
                .map_err(|_| DataError::Format {
                    path: path.to_path_buf(),
                    message: "bad temperature".into(),
                })?,
            seq_len: num("ember.seq_len")?,
            split,
            source: get("ember.source")?,
            teacher_weights: md.get("ember.teacher_weights").cloned().unwrap_or_default(),
            codec,
        })
    }
}

/// Teacher top-k distributions for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct LogitsRow {
    pub row_index: u64,
    /// `T` tokens.
    pub input_ids: Vec<i32>,
    /// `T * k` ids, row-major by position.
    pub topk_ids: Vec<i32>,
    /// `T * k` log-probabilities.
    pub topk_logprobs: Vec<f32>,
}

fn nested(item: DataType, k: usize, t: usize) -> (DataType, Arc<Field>) {
    let inner_field = Arc::new(Field::new("item", item, false));
    let inner = DataType::FixedSizeList(inner_field, k as i32);
    let outer_field = Arc::new(Field::new("item", inner.clone(), false));
    (
        DataType::FixedSizeList(outer_field.clone(), t as i32),
        outer_field,
    )
}

fn per_position(item: DataType, t: usize) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new("item", item, false)), t as i32)
}

/// Arrow schema of a logits shard.
pub fn logits_schema(meta: &LogitsMeta) -> Schema {
    let (t, k) = (meta.seq_len, meta.k);
    let mut fields = vec![
        Field::new("row_index", DataType::UInt64, false),
        Field::new("input_ids", per_position(DataType::Int32, t), false),
    ];
    match meta.codec {
        LogitsCodec::Full => fields.extend([
            Field::new("topk_ids", nested(DataType::Int32, k, t).0, false),
            Field::new("topk_logprobs", nested(DataType::Float32, k, t).0, false),
        ]),
        LogitsCodec::Compact(c) => {
            fields.extend([
                Field::new("counts", per_position(DataType::UInt16, t), false),
                Field::new("tail_log", per_position(DataType::Float16, t), false),
            ]);
            fields.extend(
                c.coder
                    .columns()
                    .map(|name| Field::new(name, DataType::Binary, false)),
            );
        }
    }
    Schema::new(fields).with_metadata(meta.to_schema_metadata())
}

fn per_position_array(
    values: ArrayRef,
    t: usize,
) -> Result<FixedSizeListArray, arrow::error::ArrowError> {
    let item = values.data_type().clone();
    FixedSizeListArray::try_new(
        Arc::new(Field::new("item", item, false)),
        t as i32,
        values,
        None,
    )
}

fn nested_array(
    values: ArrayRef,
    item: DataType,
    k: usize,
    t: usize,
    rows: usize,
) -> Result<FixedSizeListArray, arrow::error::ArrowError> {
    let inner_field = Arc::new(Field::new("item", item.clone(), false));
    let inner = FixedSizeListArray::try_new(inner_field, k as i32, values, None)?;
    let (_, outer_field) = nested(item, k, t);
    debug_assert_eq!(inner.len(), rows * t);
    FixedSizeListArray::try_new(outer_field, t as i32, Arc::new(inner), None)
}

/// Write `rows` as one logits shard at `path`, atomically (temporary file, fsync, rename),
/// encoded as `meta.codec` says. Returns the encoding error of the compact codec (empty
/// statistics for full precision).
pub fn write_logits_shard(
    path: &Path,
    meta: &LogitsMeta,
    rows: &[LogitsRow],
) -> Result<CodecStats, DataError> {
    let (t, k) = (meta.seq_len, meta.k);
    let format = |message: String| DataError::Format {
        path: path.to_path_buf(),
        message,
    };
    for r in rows {
        if r.input_ids.len() != t || r.topk_ids.len() != t * k || r.topk_logprobs.len() != t * k {
            return Err(format(format!(
                "row {}: {} tokens, {} ids, {} logprobs; expected {t}, {}, {}",
                r.row_index,
                r.input_ids.len(),
                r.topk_ids.len(),
                r.topk_logprobs.len(),
                t * k,
                t * k
            )));
        }
    }
    let arrow_err = |source| DataError::Arrow {
        path: path.to_path_buf(),
        source,
    };
    let schema = Arc::new(logits_schema(meta));
    let n = rows.len();
    let row_index = UInt64Array::from(rows.iter().map(|r| r.row_index).collect::<Vec<_>>());
    let input_ids = per_position_array(
        Arc::new(Int32Array::from(
            rows.iter()
                .flat_map(|r| r.input_ids.iter().copied())
                .collect::<Vec<_>>(),
        )),
        t,
    )
    .map_err(arrow_err)?;
    let mut columns: Vec<ArrayRef> = vec![Arc::new(row_index), Arc::new(input_ids)];
    let mut stats = CodecStats::default();
    let compression = match meta.codec {
        LogitsCodec::Full => {
            let topk_ids = nested_array(
                Arc::new(Int32Array::from(
                    rows.iter()
                        .flat_map(|r| r.topk_ids.iter().copied())
                        .collect::<Vec<_>>(),
                )),
                DataType::Int32,
                k,
                t,
                n,
            )
            .map_err(arrow_err)?;
            let topk_logprobs = nested_array(
                Arc::new(Float32Array::from(
                    rows.iter()
                        .flat_map(|r| r.topk_logprobs.iter().copied())
                        .collect::<Vec<_>>(),
                )),
                DataType::Float32,
                k,
                t,
                n,
            )
            .map_err(arrow_err)?;
            columns.extend([Arc::new(topk_ids) as ArrayRef, Arc::new(topk_logprobs)]);
            IpcCompression::None
        }
        LogitsCodec::Compact(codec) => {
            let bytes = id_bytes(meta.vocab_size);
            let (mut counts, mut tails) = (Vec::with_capacity(n * t), Vec::with_capacity(n * t));
            let mut encoded = Vec::with_capacity(n);
            for r in rows {
                if let Some(&bad) = r
                    .topk_ids
                    .iter()
                    .find(|&&i| i < 0 || i as usize >= meta.vocab_size)
                {
                    return Err(format(format!(
                        "row {}: token id {bad} outside the vocabulary of {}",
                        r.row_index, meta.vocab_size
                    )));
                }
                // NaN or +inf would quantize to a wrong grid point without a word
                if let Some(i) = r
                    .topk_logprobs
                    .iter()
                    .position(|x| x.is_nan() || *x == f32::INFINITY)
                {
                    return Err(format(format!(
                        "row {} position {}: log-probability {} is not finite",
                        r.row_index,
                        i / k,
                        r.topk_logprobs[i]
                    )));
                }
                let mut enc = EncodedRow::default();
                for p in 0..t {
                    encode_position(
                        &codec,
                        &r.topk_ids[p * k..(p + 1) * k],
                        &r.topk_logprobs[p * k..(p + 1) * k],
                        &mut enc,
                        &mut stats,
                    );
                }
                encoded.push(enc);
            }
            for enc in &encoded {
                counts.extend_from_slice(&enc.counts);
                tails.extend_from_slice(&enc.tail_log);
            }
            columns.extend([
                Arc::new(
                    per_position_array(Arc::new(UInt16Array::from(counts)), t)
                        .map_err(arrow_err)?,
                ) as ArrayRef,
                Arc::new(
                    per_position_array(Arc::new(Float16Array::from(tails)), t)
                        .map_err(arrow_err)?,
                ),
            ]);
            match codec.coder {
                EntryCoder::Planes => {
                    let ids = encoded.iter().map(|e| id_planes(&e.ids, bytes));
                    let gaps = encoded.iter().map(|e| &e.gaps);
                    columns.extend([
                        Arc::new(BinaryArray::from_iter_values(ids)) as ArrayRef,
                        Arc::new(BinaryArray::from_iter_values(gaps)),
                    ]);
                }
                EntryCoder::Rans => {
                    // the shard's tables in the first row of `tables`, the others empty
                    let (tables, streams) = rans_encode_rows(&encoded);
                    let tables = (0..n).map(|i| if i == 0 { &tables[..] } else { &[][..] });
                    columns.extend([
                        Arc::new(BinaryArray::from_iter_values(streams.iter())) as ArrayRef,
                        Arc::new(BinaryArray::from_iter_values(tables)),
                    ]);
                }
            }
            codec.compression
        }
    };
    write_ipc_atomic(path, schema, columns, compression)?;
    Ok(stats)
}

/// Read one logits shard back.
pub fn read_logits_shard(path: &Path) -> Result<(LogitsMeta, Vec<LogitsRow>), DataError> {
    let arrow_err = |source| DataError::Arrow {
        path: path.to_path_buf(),
        source,
    };
    let format = |message: String| DataError::Format {
        path: path.to_path_buf(),
        message,
    };
    let reader = open_ipc(path)?;
    let schema = reader.schema();
    let md: HashMap<String, String> = schema
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let meta = LogitsMeta::from_schema_metadata(&md, path)?;
    let (t, k) = (meta.seq_len, meta.k);
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(arrow_err)?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| format(format!("no column {name}")))
        };
        let row_index = col("row_index")?;
        let row_index = row_index
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| format("row_index is not UInt64".into()))?;
        let flat_i32 = |a: &ArrayRef, depth: usize, name: &str| -> Result<Vec<i32>, DataError> {
            let v = flatten(a, depth)
                .ok_or_else(|| format(format!("{name} has an unexpected type")))?;
            Ok(v.as_any()
                .downcast_ref::<Int32Array>()
                .ok_or_else(|| format(format!("{name} values are not Int32")))?
                .values()
                .to_vec())
        };
        let input_ids = flat_i32(&col("input_ids")?, 1, "input_ids")?;
        let n = batch.num_rows();
        if input_ids.len() != n * t {
            return Err(format(format!(
                "input_ids hold {} tokens, not {n} rows of T={t}",
                input_ids.len()
            )));
        }
        let (topk_ids, topk_logprobs) = match meta.codec {
            LogitsCodec::Full => {
                let topk_ids = flat_i32(&col("topk_ids")?, 2, "topk_ids")?;
                let lp = flatten(&col("topk_logprobs")?, 2)
                    .ok_or_else(|| format("topk_logprobs has an unexpected type".into()))?;
                let topk_logprobs = lp
                    .as_any()
                    .downcast_ref::<Float32Array>()
                    .ok_or_else(|| format("topk_logprobs are not Float32".into()))?
                    .values()
                    .to_vec();
                if topk_ids.len() != n * t * k || topk_logprobs.len() != n * t * k {
                    return Err(format(format!(
                        "column lengths do not match {n} rows of T={t}, k={k}"
                    )));
                }
                (topk_ids, topk_logprobs)
            }
            LogitsCodec::Compact(codec) => {
                let counts = flatten(&col("counts")?, 1)
                    .and_then(|a| a.as_any().downcast_ref::<UInt16Array>().cloned())
                    .ok_or_else(|| format("counts are not FixedSizeList<UInt16>".into()))?;
                let tails = flatten(&col("tail_log")?, 1)
                    .and_then(|a| a.as_any().downcast_ref::<Float16Array>().cloned())
                    .ok_or_else(|| format("tail_log is not FixedSizeList<Float16>".into()))?;
                let binary = |name: &str| -> Result<BinaryArray, DataError> {
                    col(name)?
                        .as_any()
                        .downcast_ref::<BinaryArray>()
                        .cloned()
                        .ok_or_else(|| format(format!("{name} is not Binary")))
                };
                let [first, second] = codec.coder.columns();
                let (first, second) = (binary(first)?, binary(second)?);
                if counts.len() != n * t
                    || tails.len() != n * t
                    || first.len() != n
                    || second.len() != n
                {
                    return Err(format(format!(
                        "column lengths do not match {n} rows of T={t}"
                    )));
                }
                let tables = match codec.coder {
                    EntryCoder::Rans if n > 0 => {
                        Some(rans_read_tables(second.value(0)).map_err(|e| format(e.0))?)
                    }
                    _ => None,
                };
                let width = id_bytes(meta.vocab_size);
                let (mut out_ids, mut out_lps) =
                    (Vec::with_capacity(n * t * k), Vec::with_capacity(n * t * k));
                let tails: &[f16] = tails.values();
                for i in 0..n {
                    let row_counts = &counts.values()[i * t..(i + 1) * t];
                    let row_err = |e: crate::compact::DecodeError| {
                        format(format!("row {}: {}", row_index.value(i), e.0))
                    };
                    let decoded;
                    let (ids, gaps) = match &tables {
                        None => (
                            RowIds::Planes {
                                bytes: first.value(i),
                                width,
                            },
                            second.value(i),
                        ),
                        Some(tables) => {
                            decoded = rans_decode_row(
                                tables,
                                row_counts,
                                first.value(i),
                                (k, meta.vocab_size, codec.step),
                            )
                            .map_err(row_err)?;
                            (RowIds::Values(&decoded.0), &decoded.1[..])
                        }
                    };
                    decode_row(
                        codec.step,
                        k,
                        row_counts,
                        &tails[i * t..(i + 1) * t],
                        ids,
                        gaps,
                        &mut out_ids,
                        &mut out_lps,
                    )
                    .map_err(row_err)?;
                }
                (out_ids, out_lps)
            }
        };
        for i in 0..n {
            rows.push(LogitsRow {
                row_index: row_index.value(i),
                input_ids: input_ids[i * t..(i + 1) * t].to_vec(),
                topk_ids: topk_ids[i * t * k..(i + 1) * t * k].to_vec(),
                topk_logprobs: topk_logprobs[i * t * k..(i + 1) * t * k].to_vec(),
            });
        }
    }
    Ok((meta, rows))
}

/// Values of a (nested) FixedSizeList column, `depth` levels down, honouring slice offsets.
fn flatten(a: &ArrayRef, depth: usize) -> Option<ArrayRef> {
    let mut cur = a.clone();
    for _ in 0..depth {
        let list = cur.as_any().downcast_ref::<FixedSizeListArray>()?;
        let size = list.value_length() as usize;
        cur = list.values().slice(list.offset() * size, list.len() * size);
    }
    Some(cur)
}

/// One shard of a logits directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogitsShard {
    pub file: String,
    /// Source-dataset row range `[first_row, first_row + rows)`.
    pub first_row: u64,
    pub rows: usize,
}

/// `logits.json`: what was recorded, from what, and where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogitsManifest {
    pub format: String,
    pub format_version: u32,
    pub meta: LogitsMeta,
    pub shards: Vec<LogitsShard>,
    /// Token positions recorded.
    pub positions: u64,
    /// Shard bytes on disk per recorded position.
    pub bytes_per_token: f64,
    /// Free-form details (dataset path, recorder settings).
    pub details: serde_json::Value,
}

impl LogitsManifest {
    pub const FILE: &'static str = "logits.json";

    pub fn load(dir: &Path) -> Result<Self, DataError> {
        let path = dir.join(Self::FILE);
        let m: Self = read_manifest(
            &path,
            "ember-logits",
            &[1, 2, LOGITS_FORMAT_VERSION],
            |m: &Self| (m.format.as_str(), m.format_version),
        )?;
        if m.format_version != m.meta.codec.version() {
            return Err(DataError::Format {
                path,
                message: format!(
                    "format v{} but its codec {:?} writes v{}",
                    m.format_version,
                    m.meta.codec,
                    m.meta.codec.version()
                ),
            });
        }
        Ok(m)
    }

    /// The manifest of `shards` (already written in `dir`): positions and bytes per position on disk.
    pub fn from_shards(
        dir: &Path,
        meta: LogitsMeta,
        shards: Vec<LogitsShard>,
        details: serde_json::Value,
    ) -> Self {
        let bytes: u64 = shards
            .iter()
            .map(|s| {
                std::fs::metadata(dir.join(&s.file))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .sum();
        let positions = shards.iter().map(|s| s.rows as u64).sum::<u64>() * meta.seq_len as u64;
        Self {
            format: "ember-logits".into(),
            format_version: meta.codec.version(),
            meta,
            shards,
            positions,
            bytes_per_token: bytes as f64 / positions.max(1) as f64,
            details,
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), DataError> {
        write_atomic(
            &dir.join(Self::FILE),
            serde_json::to_string_pretty(self)
                .expect("serializes")
                .as_bytes(),
        )
    }
}

/// Re-encode the recording in `from` into `out` with `codec`, keeping the first `k` entries
/// of each position (at most the recording's k). Returns the new manifest and, for the compact
/// codec, its error against the decoded source.
pub fn convert_logits(
    from: &Path,
    out: &Path,
    codec: LogitsCodec,
    k: usize,
) -> Result<(LogitsManifest, CodecStats), DataError> {
    let src = LogitsManifest::load(from)?;
    if k == 0 || k > src.meta.k {
        return Err(DataError::Config(format!(
            "k {k} must be in 1..={} (the recording's k)",
            src.meta.k
        )));
    }
    if let LogitsCodec::Compact(c) = &codec {
        c.validate().map_err(DataError::Config)?;
    }
    if from.canonicalize().ok() == out.canonicalize().ok() {
        return Err(DataError::Config(format!(
            "{} is the source; convert into another directory",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|source| DataError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let meta = LogitsMeta {
        k,
        codec,
        ..src.meta.clone()
    };
    let mut stats = CodecStats::default();
    for shard in &src.shards {
        let (_, rows) = read_logits_shard(&from.join(&shard.file))?;
        let kr = src.meta.k;
        let rows: Vec<LogitsRow> = rows
            .into_iter()
            .map(|r| {
                let keep = |v: &[i32]| -> Vec<i32> {
                    v.chunks_exact(kr)
                        .flat_map(|c| c[..k].iter().copied())
                        .collect()
                };
                LogitsRow {
                    topk_ids: keep(&r.topk_ids),
                    topk_logprobs: r
                        .topk_logprobs
                        .chunks_exact(kr)
                        .flat_map(|c| c[..k].iter().copied())
                        .collect(),
                    row_index: r.row_index,
                    input_ids: r.input_ids,
                }
            })
            .collect();
        stats.merge(&write_logits_shard(&out.join(&shard.file), &meta, &rows)?);
    }
    let mut details = serde_json::json!({
        "converted_from": from,
        "source_bytes_per_token": src.bytes_per_token,
        "source_details": src.details,
    });
    if matches!(codec, LogitsCodec::Compact(_)) {
        details["codec_error"] = stats.summary();
    }
    let m = LogitsManifest::from_shards(out, meta, src.shards.clone(), details);
    m.save(out)?;
    Ok((m, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_round_trips_and_rejects_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let meta = LogitsMeta {
            teacher: "t".into(),
            teacher_config_sha256: "a".into(),
            tokenizer_sha256: "b".into(),
            vocab_size: 100,
            k: 2,
            temperature: 1.0,
            seq_len: 3,
            split: Split::Train,
            source: "local".into(),
            teacher_weights: "w".into(),
            codec: LogitsCodec::Full,
        };
        let rows: Vec<LogitsRow> = (0..4)
            .map(|r| LogitsRow {
                row_index: 10 + r,
                input_ids: vec![1, 2, r as i32],
                topk_ids: (0..6).map(|i| i + r as i32).collect(),
                topk_logprobs: (0..6).map(|i| -(i as f32) - r as f32 / 10.0).collect(),
            })
            .collect();
        let path = dir.path().join("train-00000.arrow");
        write_logits_shard(&path, &meta, &rows).unwrap();
        let (m, back) = read_logits_shard(&path).unwrap();
        assert_eq!(m, meta);
        assert_eq!(back, rows);
        let mut bad = rows[0].clone();
        bad.topk_ids.pop();
        let err = write_logits_shard(&path, &meta, &[bad])
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 10") && err.contains("5 ids"), "{err}");
    }

    #[test]
    fn compact_shards_round_trip_and_bad_shards_are_named() {
        for coder in [crate::EntryCoder::Planes, crate::EntryCoder::Rans] {
            compact_shard_round_trip(coder);
        }
    }

    fn compact_shard_round_trip(coder: crate::EntryCoder) {
        let dir = tempfile::tempdir().unwrap();
        let codec = crate::CompactCodec {
            coder,
            ..Default::default()
        };
        let meta = LogitsMeta {
            teacher: "t".into(),
            teacher_config_sha256: "a".into(),
            tokenizer_sha256: "b".into(),
            vocab_size: 70_000,
            k: 3,
            temperature: 1.0,
            seq_len: 2,
            split: Split::Train,
            source: "local".into(),
            teacher_weights: "w".into(),
            codec: LogitsCodec::Compact(codec),
        };
        let lp = [0.5f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
        let rows: Vec<LogitsRow> = (0..3)
            .map(|r| LogitsRow {
                row_index: r,
                input_ids: vec![1, 2],
                topk_ids: vec![69_999, 7, 65_536 + r as i32, 0, 1, 2],
                topk_logprobs: [lp, lp].concat(),
            })
            .collect();
        let path = dir.path().join("train-00000.arrow");
        let stats = write_logits_shard(&path, &meta, &rows).unwrap();
        assert_eq!((stats.positions, stats.entries), (6, 18));
        let (m, back) = read_logits_shard(&path).unwrap();
        assert_eq!(m, meta);
        for (a, b) in rows.iter().zip(&back) {
            assert_eq!(a.topk_ids, b.topk_ids, "3-byte ids survive");
            for (x, y) in a.topk_logprobs.iter().zip(&b.topk_logprobs) {
                assert!((x - y).abs() < 0.07, "{x} vs {y}");
            }
        }
        // truncated: an error naming the file
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.arrow");
        std::fs::write(&cut, &bytes[..bytes.len() - 40]).unwrap();
        let err = read_logits_shard(&cut).unwrap_err().to_string();
        assert!(err.contains("cut.arrow"), "{err}");
        // rewritten with other metadata or columns: refused naming the file and what is wrong
        let rewrite = |name: &str, version: &str, edit: &dyn Fn(&mut Vec<ArrayRef>)| {
            let reader = open_ipc(&path).unwrap();
            let mut md = reader.schema().metadata().clone();
            md.insert("ember.format_version".to_string(), version.to_string());
            let schema = Arc::new(reader.schema().as_ref().clone().with_metadata(md));
            let batch = reader.into_iter().next().unwrap().unwrap();
            let mut columns = batch.columns().to_vec();
            edit(&mut columns);
            let out = dir.path().join(name);
            write_ipc_atomic(&out, schema, columns, IpcCompression::None).unwrap();
            read_logits_shard(&out).map(|_| ()).unwrap_err().to_string()
        };
        let err = rewrite("v4.arrow", "4", &|_| ());
        assert!(
            err.contains("v4.arrow") && err.contains("logits format v4"),
            "{err}"
        );
        let other = if coder == crate::EntryCoder::Rans {
            "2"
        } else {
            "3"
        };
        let err = rewrite("mislabelled.arrow", other, &|_| ());
        assert!(
            err.contains(&format!("logits format v{other} with a codec")),
            "{err}"
        );
        if coder == crate::EntryCoder::Rans {
            // a damaged stream: its row is named
            let err = rewrite("damaged.arrow", "3", &|cols: &mut Vec<ArrayRef>| {
                let coded = cols[4].as_any().downcast_ref::<BinaryArray>().unwrap();
                let mut rows: Vec<Vec<u8>> =
                    (0..coded.len()).map(|i| coded.value(i).to_vec()).collect();
                rows[1][2] ^= 0x5a; // the stream's starting state
                cols[4] = Arc::new(BinaryArray::from_iter_values(rows.iter()));
            });
            assert!(
                err.contains("row 1") && err.contains("damaged.arrow"),
                "{err}"
            );
        }
        // an id outside the vocabulary is refused when writing
        let mut bad = rows[0].clone();
        bad.topk_ids[0] = 70_000;
        let err = write_logits_shard(&path, &meta, &[bad])
            .unwrap_err()
            .to_string();
        assert!(err.contains("70000"), "{err}");
    }
}
