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
use std::sync::Arc;

use arrow::array::{Array, ListArray, UInt8Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use ember_data::{
    LogitsCodec, LogitsManifest, LogitsMeta, LogitsRow, LogitsShard, Split, write_logits_shard,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use crate::TeacherError;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
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

    /// `v` rounded to this dtype (round to nearest even, as torch casts).
    fn round(self, v: f64) -> f64 {
        match self {
            TermDtype::Float16 => half::f16::from_f64(v).to_f64(),
            TermDtype::Bfloat16 => half::bf16::from_f64(v).to_f64(),
            TermDtype::Float32 => v as f32 as f64,
            TermDtype::Float64 => v,
        }
    }

    fn write(self, v: f64, out: &mut Vec<u8>) {
        match self {
            TermDtype::Float16 => out.extend(half::f16::from_f64(v).to_le_bytes()),
            TermDtype::Bfloat16 => out.extend(half::bf16::from_f64(v).to_le_bytes()),
            TermDtype::Float32 => out.extend((v as f32).to_le_bytes()),
            TermDtype::Float64 => out.extend(v.to_le_bytes()),
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuantizationBin {
    pub scale_dtype: TermDtype,
    pub element_bits: u32,
    pub num_elements: usize,
}

/// A polynomial term: a power of t, or a named function of t.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Term {
    Power(i32),
    Special(String),
}

/// `compression_config.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
        let cfg: Self = yaml_serde::from_str(&text).map_err(|e| TeacherError::Config {
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
        if cfg.exact_k < cfg.k
            && cfg.polynomial_terms.as_ref().is_none_or(Vec::is_empty)
            && cfg.residual_bins.is_empty()
        {
            // as DistillKit's own config check says: the values past exact_k need a model
            return Err(err(format!(
                "exact_k {} < k {} needs polynomial_terms or residual_bins",
                cfg.exact_k, cfg.k
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
        ember_data::unpack_bits(bytes, self.index_bits(), self.k)
            .expect("length checked by the caller")
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
            let codes = ember_data::unpack_bits(
                take((bin.num_elements * bin.element_bits as usize).div_ceil(8)),
                bin.element_bits,
                bin.num_elements,
            )
            .expect("length checked by the caller");
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

impl CompressionConfig {
    /// Values of the polynomial terms at the `n` tail positions, one column per term.
    fn term_columns(&self, n: usize) -> Vec<Vec<f64>> {
        let x = |j: usize| {
            if !self.normalize_t {
                j as f64
            } else if n > 1 {
                j as f64 / (n - 1) as f64
            } else {
                0.0
            }
        };
        self.polynomial_terms
            .iter()
            .flatten()
            .map(|t| {
                (0..n)
                    .map(|j| match t {
                        Term::Power(p) => x(j).powi(*p),
                        Term::Special(s) if s == "sqrt" => x(j).sqrt(),
                        Term::Special(_) => x(j).exp(),
                    })
                    .collect()
            })
            .collect()
    }

    /// Encode one position's `k` log-probabilities (most likely first) as DistillKit's
    /// `compress_monotonic_logprobs` does: optional delta encoding, `exact_k` values in
    /// `exact_dtype`, a least-squares polynomial over the rest, residual bins quantized to
    /// the bin's max |residual| (naive rounding; error diffusion is refused at export).
    pub fn encode_logprobs(&self, lps: &[f32]) -> Vec<u8> {
        debug_assert_eq!(lps.len(), self.k);
        let v: Vec<f64> = if self.delta_encoding {
            (0..lps.len())
                .map(|i| if i == 0 { lps[0] } else { lps[i] - lps[i - 1] } as f64)
                .collect()
        } else {
            lps.iter().map(|&x| x as f64).collect()
        };
        let mut out = Vec::with_capacity(self.logprob_bytes());
        for &x in &v[..self.exact_k] {
            self.exact_dtype.write(x, &mut out);
        }
        let tail = &v[self.exact_k..];
        let mut residual = tail.to_vec();
        if self
            .polynomial_terms
            .as_ref()
            .is_some_and(|t| !t.is_empty())
        {
            let cols = self.term_columns(tail.len());
            let coeffs: Vec<f64> = least_squares(&cols, tail)
                .into_iter()
                .map(|c| self.term_dtype.round(c))
                .collect();
            for &c in &coeffs {
                self.term_dtype.write(c, &mut out);
            }
            for (j, r) in residual.iter_mut().enumerate() {
                *r -= cols
                    .iter()
                    .zip(&coeffs)
                    .map(|(col, c)| col[j] * c)
                    .sum::<f64>();
            }
        }
        let mut at = 0;
        for bin in &self.residual_bins {
            let seg = &residual[at..at + bin.num_elements];
            at += bin.num_elements;
            let bits = bin.element_bits;
            let max_abs = seg.iter().fold(0f64, |m, x| m.max(x.abs()));
            let (qmin, qmax, max_q) = if bits == 1 {
                (0.0, 1.0, 1.0)
            } else {
                let h = 2f64.powi(bits as i32 - 1);
                (-h, h - 1.0, h)
            };
            let scale = bin
                .scale_dtype
                .round(if max_abs == 0.0 { 1.0 } else { max_abs / max_q });
            bin.scale_dtype.write(scale, &mut out);
            let codes = seg.iter().map(|&x| {
                let q = if scale == 0.0 {
                    0.0
                } else {
                    (x / scale).round_ties_even()
                };
                (q.clamp(qmin, qmax) - qmin) as u64
            });
            out.extend(ember_data::pack_bits(codes, bits));
        }
        out
    }

    /// Encode one position's `k` ids.
    pub fn encode_ids(&self, ids: &[u64]) -> Vec<u8> {
        ember_data::pack_bits(ids.iter().copied(), self.index_bits())
    }
}

/// Least-squares coefficients of the columns `cols` for `y`, by modified Gram-Schmidt in f64
/// (re-orthogonalised once). A column that depends on earlier ones (fewer points than terms)
/// gets coefficient 0, which leaves the fit, the only thing decoded, unchanged; DistillKit's
/// SVD pseudo-inverse picks another of the equal fits.
fn least_squares(cols: &[Vec<f64>], y: &[f64]) -> Vec<f64> {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let m = cols.len();
    let mut basis: Vec<(usize, Vec<f64>)> = Vec::new();
    let mut r = vec![vec![0.0; m]; m];
    for (j, col) in cols.iter().enumerate() {
        let mut v = col.clone();
        let n0 = dot(&v, &v).sqrt();
        for _ in 0..2 {
            for (bi, (_, q)) in basis.iter().enumerate() {
                let d = dot(q, &v);
                r[bi][j] += d;
                v.iter_mut().zip(q).for_each(|(x, qx)| *x -= d * qx);
            }
        }
        let nv = dot(&v, &v).sqrt();
        if n0 > 0.0 && nv > 1e-9 * n0 {
            r[basis.len()][j] = nv;
            v.iter_mut().for_each(|x| *x /= nv);
            basis.push((j, v));
        }
    }
    let b: Vec<f64> = basis.iter().map(|(_, q)| dot(q, y)).collect();
    let mut c = vec![0.0; m];
    for bi in (0..basis.len()).rev() {
        let j = basis[bi].0;
        let mut s = b[bi];
        for (jk, _) in &basis[bi + 1..] {
            s -= r[bi][*jk] * c[*jk];
        }
        c[j] = s / r[bi][j];
    }
    c
}

/// Settings of an export to DistillKit.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Ember logits directory (any format version).
    pub logits: PathBuf,
    pub out: PathBuf,
    /// The capture's `compression_config.yaml` (`d` at least the recording's vocabulary).
    pub compression: CompressionConfig,
    /// Token appended to every row, as DistillKit's capture appends a pad token so that the
    /// last real token gets a distribution too.
    pub pad_token_id: u64,
    /// Rows per `data_N.parquet`.
    pub rows_per_file: usize,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub rows: usize,
    pub positions: u64,
    pub files: usize,
    pub bytes: u64,
    /// Positions that held fewer than `k` entries (v2 adaptive k) and were padded.
    pub padded_positions: u64,
}

/// Log-probability given to padding entries, below the position's last real entry.
pub const EXPORT_PAD_GAP: f32 = 30.0;

/// Write an Ember recording as a DistillKit capture: `compression_config.yaml` and
/// `data_N.parquet` (`input_ids: list<uint64>` = the row plus the pad token,
/// `compressed_logprobs` and `bytepacked_indices: list<list<uint8>>`, one entry per position).
/// A position with fewer than `k` entries (an adaptive v2 recording) is padded with the
/// smallest ids it lacks at `EXPORT_PAD_GAP` nats below its last entry.
pub fn export_distillkit(cfg: &ExportConfig) -> Result<ExportReport, TeacherError> {
    use arrow::array::{ListBuilder, UInt8Builder, UInt64Builder};
    let manifest = LogitsManifest::load(&cfg.logits)?;
    let c = &cfg.compression;
    let invalid = |message: String| TeacherError::DistillKit {
        path: cfg.out.clone(),
        message,
    };
    if c.k == 0 || c.k > manifest.meta.k {
        return Err(invalid(format!(
            "DistillKit k {} must be in 1..={} (the recording's k)",
            c.k, manifest.meta.k
        )));
    }
    if c.d < manifest.meta.vocab_size {
        return Err(invalid(format!(
            "DistillKit d {} is below the recording's vocabulary {}",
            c.d, manifest.meta.vocab_size
        )));
    }
    if c.error_diffusion {
        return Err(invalid(
            "error_diffusion is not implemented by the export; set it to false".into(),
        ));
    }
    if cfg.rows_per_file == 0 {
        return Err(invalid("rows per file must be positive".into()));
    }
    std::fs::create_dir_all(&cfg.out).map_err(|source| TeacherError::Io {
        path: cfg.out.clone(),
        source,
    })?;
    let yaml = yaml_serde::to_string(c).expect("serializes");
    ember_data::write_atomic(&cfg.out.join("compression_config.yaml"), yaml.as_bytes())?;
    let (k_rec, t) = (manifest.meta.k, manifest.meta.seq_len);
    let schema = Arc::new(Schema::new(vec![
        Field::new("input_ids", DataType::List(element(DataType::UInt64)), true),
        Field::new("compressed_logprobs", nested_u8(), true),
        Field::new("bytepacked_indices", nested_u8(), true),
    ]));
    let mut report = ExportReport {
        rows: 0,
        positions: 0,
        files: 0,
        bytes: 0,
        padded_positions: 0,
    };
    let new_builders = || {
        (
            ListBuilder::new(UInt64Builder::new()).with_field(element(DataType::UInt64)),
            nested_u8_builder(),
            nested_u8_builder(),
        )
    };
    let (mut ids_b, mut lp_b, mut idx_b) = new_builders();
    let mut in_file = 0usize;
    let flush = |ids_b: &mut ListBuilder<UInt64Builder>,
                 lp_b: &mut ListBuilder<ListBuilder<UInt8Builder>>,
                 idx_b: &mut ListBuilder<ListBuilder<UInt8Builder>>,
                 report: &mut ExportReport|
     -> Result<(), TeacherError> {
        let path = cfg.out.join(format!("data_{}.parquet", report.files));
        let fail = |message: String| TeacherError::DistillKit {
            path: path.clone(),
            message,
        };
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(ids_b.finish()),
                Arc::new(lp_b.finish()),
                Arc::new(idx_b.finish()),
            ],
        )
        .map_err(|e| fail(e.to_string()))?;
        let mut buf = Vec::new();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema.clone(), Some(props))
            .and_then(|mut w| w.write(&batch).map(|_| w))
            .map_err(|e| fail(e.to_string()))?;
        w.flush().map_err(|e| fail(e.to_string()))?;
        w.close().map_err(|e| fail(e.to_string()))?;
        ember_data::write_atomic(&path, &buf)?;
        report.files += 1;
        report.bytes += buf.len() as u64;
        Ok(())
    };
    for shard in &manifest.shards {
        let (_, rows) = ember_data::read_logits_shard(&cfg.logits.join(&shard.file))?;
        for row in rows {
            ids_b
                .values()
                .append_slice(&row.input_ids.iter().map(|&i| i as u64).collect::<Vec<_>>());
            ids_b.values().append_value(cfg.pad_token_id);
            ids_b.append(true);
            for p in 0..t {
                let pid = &row.topk_ids[p * k_rec..(p + 1) * k_rec];
                let plp = &row.topk_logprobs[p * k_rec..(p + 1) * k_rec];
                let mut ids: Vec<u64> = Vec::with_capacity(c.k);
                let mut lps: Vec<f32> = Vec::with_capacity(c.k);
                for (&i, &l) in pid.iter().zip(plp) {
                    if ids.len() < c.k && i >= 0 && l > f32::NEG_INFINITY {
                        ids.push(i as u64);
                        lps.push(l);
                    }
                }
                if ids.len() < c.k {
                    report.padded_positions += 1;
                    let low = lps.last().copied().unwrap_or(0.0) - EXPORT_PAD_GAP;
                    let mut next = 0u64;
                    while ids.len() < c.k {
                        if !ids.contains(&next) {
                            ids.push(next);
                            lps.push(low);
                        }
                        next += 1;
                    }
                }
                lp_b.values()
                    .values()
                    .append_slice(&c.encode_logprobs(&lps));
                lp_b.values().append(true);
                idx_b.values().values().append_slice(&c.encode_ids(&ids));
                idx_b.values().append(true);
            }
            lp_b.append(true);
            idx_b.append(true);
            report.rows += 1;
            report.positions += t as u64;
            in_file += 1;
            if in_file == cfg.rows_per_file {
                flush(&mut ids_b, &mut lp_b, &mut idx_b, &mut report)?;
                in_file = 0;
            }
        }
    }
    if in_file > 0 {
        flush(&mut ids_b, &mut lp_b, &mut idx_b, &mut report)?;
    }
    Ok(report)
}

/// A list item as pyarrow writes it to Parquet (and so DistillKit's captures): `element`.
fn element(item: DataType) -> Arc<Field> {
    Arc::new(Field::new("element", item, true))
}

fn nested_u8() -> DataType {
    DataType::List(element(DataType::List(element(DataType::UInt8))))
}

fn nested_u8_builder()
-> arrow::array::ListBuilder<arrow::array::ListBuilder<arrow::array::UInt8Builder>> {
    use arrow::array::{ListBuilder, UInt8Builder};
    ListBuilder::new(ListBuilder::new(UInt8Builder::new()).with_field(element(DataType::UInt8)))
        .with_field(element(DataType::List(element(DataType::UInt8))))
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
        return Err(TeacherError::Setting {
            setting: "--top-k",
            message: format!("{k} must be in 1..={} (the capture's k)", ccfg.k),
        });
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
        return Err(TeacherError::DistillKit {
            path: cfg.capture.clone(),
            message: "no .parquet files".into(),
        });
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
        codec: LogitsCodec::Full,
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
        let format = |message: String| TeacherError::DistillKit {
            path: path.clone(),
            message,
        };
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

    #[test]
    fn configs_distillkit_refuses_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let load = |yaml: &str| {
            let path = dir.path().join("compression_config.yaml");
            std::fs::write(&path, yaml).unwrap();
            CompressionConfig::load(&path).map_err(|e| e.to_string())
        };
        let base = "d: 512\nk: 8\nexact_dtype: bfloat16\nterm_dtype: float32\ndelta_encoding: false\nerror_diffusion: false\n";
        let no_bins = "residual_bins: []\n";
        assert!(
            load(&format!("{base}{no_bins}exact_k: 8\n")).is_ok(),
            "all values exact"
        );
        assert!(
            load(&format!(
                "{base}{no_bins}exact_k: 2\npolynomial_terms: [0, 1]\n"
            ))
            .is_ok(),
            "a polynomial for the rest"
        );
        for (extra, says) in [
            ("exact_k: 2\n", "needs polynomial_terms or residual_bins"),
            (
                "exact_k: 2\npolynomial_terms: []\n",
                "needs polynomial_terms or residual_bins",
            ),
            ("exact_k: 9\n", "exact_k 9 > k 8"),
            (
                "exact_k: 2\npolynomial_terms: [log]\n",
                "unknown polynomial term",
            ),
        ] {
            let err = load(&format!("{base}{no_bins}{extra}")).unwrap_err();
            assert!(
                err.contains(says) && err.contains("compression_config.yaml"),
                "{extra}: {err}"
            );
        }
        for (extra, says) in [
            (
                "exact_k: 2\npolynomial_terms: [0]\nresidual_bins:\n- {scale_dtype: float16, element_bits: 8, num_elements: 7}\n",
                "more elements than k - exact_k",
            ),
            ("exact_k: 2\n", "residual_bins"),
        ] {
            // the second: residual_bins is required, as in DistillKit
            let err = load(&format!("{base}{extra}")).unwrap_err();
            assert!(
                err.contains(says) && err.contains("compression_config.yaml"),
                "{extra}: {err}"
            );
        }
    }
}
