//! Import of DistillKit logit captures (arcee-ai/DistillKit, Apache-2.0), so published
//! captures of large teachers can be distilled from without running the teacher.
//!
//! A capture directory holds `compression_config.yaml` and `data_*.parquet` with columns
//! `input_ids: list<uint64>`, `compressed_logprobs: list<list<uint8>>`,
//! `bytepacked_indices: list<list<uint8>>`; a row of `L` tokens has `L - 1` positions,
//! position `i` being the teacher distribution after tokens `0..=i` (Ember's convention).
//!
//! Per position, token ids are `k` unsigned integers of `ceil(log2 d)` bits in one
//! MSB-first bit stream; log-probabilities are, in order: `exact_k` values in
//! `exact_dtype` (little-endian), the polynomial coefficients in `term_dtype`, then per
//! residual bin a scale (`scale_dtype`) and `num_elements` codes of `element_bits` bits.
//! The tail `exact_k..k` is `poly(t) + residual`; with `delta_encoding` the values are
//! a running sum.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, ListArray, UInt8Array, UInt64Array};
use ember_data::{LogitsManifest, LogitsMeta, LogitsRow, LogitsShard, Split, write_logits_shard};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Deserialize;

use crate::TeacherError;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum TermDtype {
    Float16,
    Bfloat16,
    Float32,
    Float64,
}

impl TermDtype {
    fn size(self) -> usize {
        match self {
            TermDtype::Float16 | TermDtype::Bfloat16 => 2,
            TermDtype::Float32 => 4,
            TermDtype::Float64 => 8,
        }
    }

    fn read(self, b: &[u8]) -> f64 {
        match self {
            TermDtype::Float16 => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
            TermDtype::Bfloat16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f64(),
            TermDtype::Float32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            TermDtype::Float64 => f64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct QuantizationBin {
    pub scale_dtype: TermDtype,
    pub element_bits: u32,
    pub num_elements: usize,
}

/// A polynomial term: a power of t, or a named function of t.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Term {
    Power(i32),
    Special(String),
}

/// `compression_config.yaml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CompressionConfig {
    pub d: usize,
    pub k: usize,
    pub exact_k: usize,
    #[serde(default = "f32_dtype")]
    pub exact_dtype: TermDtype,
    #[serde(default)]
    pub polynomial_terms: Option<Vec<Term>>,
    #[serde(default = "f32_dtype")]
    pub term_dtype: TermDtype,
    pub residual_bins: Vec<QuantizationBin>,
    #[serde(default = "yes")]
    pub delta_encoding: bool,
    #[serde(default)]
    pub error_diffusion: bool,
    #[serde(default)]
    pub normalize_t: bool,
}

fn f32_dtype() -> TermDtype {
    TermDtype::Float32
}
fn yes() -> bool {
    true
}

impl CompressionConfig {
    pub fn load(path: &Path) -> Result<Self, TeacherError> {
        let text = std::fs::read_to_string(path).map_err(|source| TeacherError::Io {
            path: path.into(),
            source,
        })?;
        let cfg: Self = serde_yaml::from_str(&text).map_err(|e| TeacherError::Config {
            path: path.into(),
            message: format!("not a DistillKit compression config: {e}"),
        })?;
        let err = |m: String| TeacherError::Config {
            path: path.into(),
            message: m,
        };
        if cfg.exact_k > cfg.k || cfg.d < 2 {
            return Err(err(format!(
                "exact_k {} > k {} or d {} < 2",
                cfg.exact_k, cfg.k, cfg.d
            )));
        }
        if cfg
            .residual_bins
            .iter()
            .map(|b| b.num_elements)
            .sum::<usize>()
            > cfg.k - cfg.exact_k
        {
            return Err(err(
                "residual bins hold more elements than k - exact_k".into()
            ));
        }
        for t in cfg.polynomial_terms.iter().flatten() {
            if let Term::Special(s) = t
                && s != "sqrt"
                && s != "exp"
            {
                return Err(err(format!(
                    "unknown polynomial term {s:?} (expected an integer, sqrt or exp)"
                )));
            }
        }
        Ok(cfg)
    }

    /// Bits per token id.
    pub fn index_bits(&self) -> u32 {
        usize::BITS - (self.d - 1).leading_zeros()
    }

    fn logprob_bytes(&self) -> usize {
        let poly = self.polynomial_terms.as_ref().map_or(0, Vec::len) * self.term_dtype.size();
        let bins: usize = self
            .residual_bins
            .iter()
            .map(|b| b.scale_dtype.size() + (b.num_elements * b.element_bits as usize).div_ceil(8))
            .sum();
        self.exact_k * self.exact_dtype.size() + poly + bins
    }

    /// Decode one position's ids (`k`, most likely first).
    pub fn decode_ids(&self, bytes: &[u8]) -> Vec<u64> {
        unpack_bits(bytes, self.index_bits(), self.k)
    }

    /// Decode one position's `k` log-probabilities.
    pub fn decode_logprobs(&self, bytes: &[u8]) -> Vec<f32> {
        let mut pos = 0usize;
        let mut take = |n: usize| {
            let s = &bytes[pos..pos + n];
            pos += n;
            s
        };
        let es = self.exact_dtype.size();
        let mut vals: Vec<f64> = take(self.exact_k * es)
            .chunks_exact(es)
            .map(|b| self.exact_dtype.read(b))
            .collect();
        let terms = self.polynomial_terms.clone().unwrap_or_default();
        let ts = self.term_dtype.size();
        let coeffs: Vec<f64> = take(terms.len() * ts)
            .chunks_exact(ts)
            .map(|b| self.term_dtype.read(b))
            .collect();
        let n_tail = self.k - self.exact_k;
        let mut residual = Vec::with_capacity(n_tail);
        for bin in &self.residual_bins {
            let scale = bin.scale_dtype.read(take(bin.scale_dtype.size()));
            let codes = unpack_bits(
                take((bin.num_elements * bin.element_bits as usize).div_ceil(8)),
                bin.element_bits,
                bin.num_elements,
            );
            residual.extend(codes.into_iter().map(|q| {
                if bin.element_bits == 1 {
                    (q as f64 * 2.0 - 1.0) * scale
                } else {
                    (q as i64 - (1i64 << (bin.element_bits - 1))) as f64 * scale
                }
            }));
        }
        residual.resize(n_tail, 0.0);
        for (j, r) in residual.into_iter().enumerate() {
            let x = if self.normalize_t {
                if n_tail > 1 {
                    j as f64 / (n_tail - 1) as f64
                } else {
                    0.0
                }
            } else {
                j as f64
            };
            let fit: f64 = terms
                .iter()
                .zip(&coeffs)
                .map(|(t, c)| {
                    c * match t {
                        Term::Power(p) => x.powi(*p),
                        Term::Special(s) if s == "sqrt" => x.sqrt(),
                        Term::Special(_) => x.exp(),
                    }
                })
                .sum();
            vals.push(fit + r);
        }
        if self.delta_encoding {
            let mut acc = 0.0;
            for v in vals.iter_mut() {
                acc += *v;
                *v = acc;
            }
        }
        vals.into_iter().map(|v| v as f32).collect()
    }
}

/// `n` unsigned integers of `bits` bits from an MSB-first bit stream.
pub fn unpack_bits(bytes: &[u8], bits: u32, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    let mut s = 0usize;
    for _ in 0..n {
        let mut v = 0u64;
        for _ in 0..bits {
            v = (v << 1) | ((bytes[s >> 3] >> (7 - (s & 7))) & 1) as u64;
            s += 1;
        }
        out.push(v);
    }
    out
}

/// Settings of an import.
#[derive(Debug, Clone)]
pub struct ImportConfig {
    pub capture: PathBuf,
    pub out: PathBuf,
    /// Positions per Ember row: capture rows are cut into consecutive windows of this length.
    pub seq_len: usize,
    /// Keep the `top_k` most likely entries (default: the capture's k).
    pub top_k: Option<usize>,
    pub teacher: String,
    pub tokenizer_sha256: String,
    pub shard_rows: usize,
}

/// Convert a DistillKit capture into an Ember logits directory.
pub fn import_distillkit(cfg: &ImportConfig) -> Result<LogitsManifest, TeacherError> {
    let ccfg = CompressionConfig::load(&cfg.capture.join("compression_config.yaml"))?;
    let k = cfg.top_k.unwrap_or(ccfg.k);
    if k == 0 || k > ccfg.k {
        return Err(TeacherError::Invalid(format!(
            "--top-k {k} must be in 1..={} (the capture's k)",
            ccfg.k
        )));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&cfg.capture)
        .map_err(|source| TeacherError::Io {
            path: cfg.capture.clone(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    // data_2.parquet before data_10.parquet
    files.sort_by_key(|p| {
        let stem = p
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        (
            stem.rsplit('_')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(u64::MAX),
            stem,
        )
    });
    if files.is_empty() {
        return Err(TeacherError::Invalid(format!(
            "no .parquet files in {}",
            cfg.capture.display()
        )));
    }
    std::fs::create_dir_all(&cfg.out).map_err(|source| TeacherError::Io {
        path: cfg.out.clone(),
        source,
    })?;
    let meta = LogitsMeta {
        teacher: cfg.teacher.clone(),
        teacher_config_sha256: format!("distillkit:{}", cfg.capture.display()),
        tokenizer_sha256: cfg.tokenizer_sha256.clone(),
        vocab_size: ccfg.d,
        k,
        temperature: 1.0,
        seq_len: cfg.seq_len,
        split: Split::Train,
        source: "distillkit".into(),
        teacher_weights: String::new(),
    };
    let (t, lp_bytes, id_bytes) = (
        cfg.seq_len,
        ccfg.logprob_bytes(),
        (ccfg.k * ccfg.index_bits() as usize).div_ceil(8),
    );
    let mut pending: Vec<LogitsRow> = Vec::new();
    let mut shards = Vec::new();
    let mut next_row = 0u64;
    let mut dropped = 0usize;
    let flush =
        |rows: &mut Vec<LogitsRow>, shards: &mut Vec<LogitsShard>| -> Result<(), TeacherError> {
            if rows.is_empty() {
                return Ok(());
            }
            let file = format!("train-{:05}.arrow", shards.len());
            write_logits_shard(&cfg.out.join(&file), &meta, rows)?;
            shards.push(LogitsShard {
                file,
                first_row: rows[0].row_index,
                rows: rows.len(),
            });
            rows.clear();
            Ok(())
        };
    for path in &files {
        let format = |m: String| TeacherError::Invalid(format!("{}: {m}", path.display()));
        let file = File::open(path).map_err(|source| TeacherError::Io {
            path: path.clone(),
            source,
        })?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| format(format!("not a readable Parquet file: {e}")))?;
        for batch in reader {
            let batch = batch.map_err(|e| format(e.to_string()))?;
            let list = |name: &str| -> Result<ListArray, TeacherError> {
                batch
                    .column_by_name(name)
                    .and_then(|c| c.as_any().downcast_ref::<ListArray>().cloned())
                    .ok_or_else(|| {
                        format(format!(
                            "no list column {name}; is this a DistillKit (v2) capture?"
                        ))
                    })
            };
            let (ids_col, lp_col, idx_col) = (
                list("input_ids")?,
                list("compressed_logprobs")?,
                list("bytepacked_indices")?,
            );
            for r in 0..batch.num_rows() {
                let ids_arr = ids_col.value(r);
                let ids = ids_arr
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .ok_or_else(|| format("input_ids are not uint64".into()))?;
                let (lp_rows, idx_rows) = (lp_col.value(r), idx_col.value(r));
                let lp_rows = lp_rows
                    .as_any()
                    .downcast_ref::<ListArray>()
                    .ok_or_else(|| format("compressed_logprobs is not list<list<uint8>>".into()))?;
                let idx_rows = idx_rows
                    .as_any()
                    .downcast_ref::<ListArray>()
                    .ok_or_else(|| format("bytepacked_indices is not list<list<uint8>>".into()))?;
                let positions = lp_rows.len();
                if idx_rows.len() != positions || ids.len() != positions + 1 {
                    return Err(format(format!(
                        "row {r}: {} tokens, {positions} logprob rows, {} index rows",
                        ids.len(),
                        idx_rows.len()
                    )));
                }
                let bytes = |a: &ListArray,
                             p: usize,
                             want: usize,
                             what: &str|
                 -> Result<Vec<u8>, TeacherError> {
                    let v = a.value(p);
                    let v = v
                        .as_any()
                        .downcast_ref::<UInt8Array>()
                        .ok_or_else(|| format(format!("{what} are not uint8")))?;
                    if v.len() != want {
                        return Err(format(format!(
                            "row {r} position {p}: {} {what} bytes, the config implies {want}",
                            v.len()
                        )));
                    }
                    Ok(v.values().to_vec())
                };
                let mut start = 0;
                while start + t <= positions {
                    let mut row = LogitsRow {
                        row_index: next_row,
                        input_ids: (start..start + t).map(|i| ids.value(i) as i32).collect(),
                        topk_ids: Vec::with_capacity(t * k),
                        topk_logprobs: Vec::with_capacity(t * k),
                    };
                    for p in start..start + t {
                        let pid = ccfg.decode_ids(&bytes(idx_rows, p, id_bytes, "index")?);
                        let plp = ccfg.decode_logprobs(&bytes(lp_rows, p, lp_bytes, "logprob")?);
                        row.topk_ids.extend(pid[..k].iter().map(|&i| i as i32));
                        row.topk_logprobs.extend_from_slice(&plp[..k]);
                    }
                    pending.push(row);
                    next_row += 1;
                    start += t;
                    if pending.len() == cfg.shard_rows {
                        flush(&mut pending, &mut shards)?;
                    }
                }
                dropped += positions - start;
            }
        }
    }
    flush(&mut pending, &mut shards)?;
    let manifest = LogitsManifest::from_shards(
        &cfg.out,
        meta,
        shards,
        serde_json::json!({
            "capture": cfg.capture, "files": files.len(), "dropped_tail_positions": dropped,
            "compression": BTreeMap::from([("k", ccfg.k), ("exact_k", ccfg.exact_k), ("d", ccfg.d)]),
        }),
    );
    manifest.save(&cfg.out)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_unpacking_is_msb_first_across_bytes() {
        // 5, 3, 7 as 3-bit fields: 101 011 111 -> 10101111 1(0000000)
        assert_eq!(
            unpack_bits(&[0b1010_1111, 0b1000_0000], 3, 3),
            vec![5, 3, 7]
        );
        let cfg = |d| CompressionConfig {
            d,
            k: 1,
            exact_k: 1,
            exact_dtype: TermDtype::Float32,
            polynomial_terms: None,
            term_dtype: TermDtype::Float32,
            residual_bins: vec![],
            delta_encoding: false,
            error_diffusion: false,
            normalize_t: false,
        };
        assert_eq!(cfg(151936).index_bits(), 18);
        assert_eq!(cfg(512).index_bits(), 9);
        assert_eq!(cfg(513).index_bits(), 10);
    }
}
