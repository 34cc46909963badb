//! The compact encodings of teacher distributions (logits formats v2 and v3).
//!
//! Per position, from the teacher's `k_max` entries (most likely first, log-probabilities
//! normalised over the full vocabulary):
//!
//! - **adaptive k**: the fewest leading entries whose probability mass reaches `mass` are
//!   kept (all `k_max` when `mass` is 1 or is never reached; entries of probability 0 never);
//! - **tail**: `1 - sum(p)` over the kept entries, stored as the f16 of its natural log
//!   (relative error at most `|ln tail| * 2^-11`: 4e-4 at a tail of 0.5, 7e-3 at 1e-6, which
//!   moves the KL by less than `tail * err^2`; `-inf` when nothing is outside);
//! - **ids**: `ceil(log2 vocab / 8)` bytes each, split in byte planes per row (all low bytes,
//!   then the next byte of every id, ...), so that zstd sees the skewed high bytes apart from
//!   the near-uniform low ones: on the flat quick-start teacher (vocabulary 4096, k 64) this
//!   stores ids in 79 bytes per position against 96 bit-packed (zstd gains nothing on a
//!   12-bit packed stream);
//! - **log-probabilities**: the gaps to the position's top entry on a grid of `step` nats,
//!   `q_j = round((lp_0 - lp_j) / step)`, non-decreasing because the entries are sorted, stored
//!   as increments `q_j - q_(j-1)` of one byte each (255 means "255 more, read on").
//!
//! Decoding gives `p_j = (1 - tail) * exp(-q_j step) / sum_i exp(-q_i step)`: the tail exactly
//! as recorded, the ratios between kept entries within `step / 2` nats. With rounding errors
//! uniform in `[-step/2, step/2]` the expected KL to the full-precision entries is about
//! `step^2 / 24` times the kept mass per position (`step` 1/16: at most 1.6e-4 nats).
//!
//! The mass dropped by adaptive k joins the tail bucket: the trainer then knows how much
//! probability lies outside the kept entries, not where (as for any top-k recording).
//!
//! **Format v3** keeps all of the above (the same counts, tails, grid and gap bytes, so it
//! decodes to exactly the v2 values) but codes each row's ids and gap bytes with rANS
//! ([`crate::rans`]) against order-0 frequency tables counted over the shard: one per rank
//! bucket for the ids (`floor(log2(rank + 1))`: ranks 0, 1-2, 3-6, ..., 63+) and one per rank
//! for the gap bytes (1 to 32+). On the stronger quick-start teacher at k 64 this takes ids
//! from 87.9 to about 72 bytes/token and gaps from 15.2 to about 9 (their measured entropies
//! under those models: 71.8 and 8.8).

use half::f16;
use serde::{Deserialize, Serialize};

use crate::rans::{self, Decoder, Model};

/// Arrow IPC buffer compression of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpcCompression {
    None,
    Lz4,
    #[default]
    Zstd,
}

/// Settings of the compact encoding.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CompactCodec {
    /// Keep entries until their probability mass reaches this (1: always `k_max`).
    pub mass: f32,
    /// Quantization step of the log-probability gaps, in nats.
    pub step: f32,
    /// Arrow IPC buffer compression.
    pub compression: IpcCompression,
    /// How ids and gaps are stored: byte planes and bytes for the IPC compression to squeeze
    /// (format v2), or rANS against per-shard frequency tables (format v3).
    #[serde(default)]
    pub coder: EntryCoder,
}

/// How a compact shard stores its ids and log-probability gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryCoder {
    /// Format v2: ids as byte planes, gaps as bytes, left to the IPC buffer compression.
    #[default]
    Planes,
    /// Format v3: ids and gap bytes rANS-coded per row against per-shard order-0 tables, one
    /// per rank bucket ([`crate::rans`]).
    Rans,
}

impl EntryCoder {
    /// The shard columns that hold the entries (after `counts` and `tail_log`).
    pub fn columns(self) -> [&'static str; 2] {
        match self {
            Self::Planes => ["ids", "gaps"],
            Self::Rans => ["coded", "tables"],
        }
    }
}

impl Default for CompactCodec {
    fn default() -> Self {
        // measured on the flat quick-start teacher at k 64: 98 bytes/token, mean KL 2.9e-4
        Self {
            mass: 1.0,
            step: 1.0 / 8.0,
            compression: IpcCompression::Zstd,
            coder: EntryCoder::Planes,
        }
    }
}

impl CompactCodec {
    /// `Err` names the setting that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.mass > 0.0 && self.mass <= 1.0) {
            return Err(format!("mass {} must be in (0, 1]", self.mass));
        }
        if !(self.step > 0.0 && self.step <= 1.0) {
            return Err(format!("logprob step {} must be in (0, 1] nats", self.step));
        }
        Ok(())
    }
}

/// How the shards of a recording encode the distributions.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum LogitsCodec {
    /// Format v1: `k` entries per position, Int32 ids and Float32 log-probabilities.
    #[default]
    Full,
    /// Format v2: see the module documentation.
    Compact(CompactCodec),
}

impl LogitsCodec {
    /// The logits format version of shards written with this codec.
    pub fn version(&self) -> u32 {
        match self {
            Self::Full => 1,
            Self::Compact(CompactCodec {
                coder: EntryCoder::Planes,
                ..
            }) => 2,
            Self::Compact(CompactCodec {
                coder: EntryCoder::Rans,
                ..
            }) => 3,
        }
    }
}

/// Bits per token id for a vocabulary of `vocab` ids.
pub fn id_bits(vocab: usize) -> u32 {
    (usize::BITS - vocab.saturating_sub(1).leading_zeros()).max(1)
}

/// An MSB-first bit stream.
#[derive(Debug, Default, Clone)]
struct BitWriter {
    bytes: Vec<u8>,
    bits: usize,
}

impl BitWriter {
    fn push(&mut self, value: u64, width: u32) {
        for b in (0..width).rev() {
            if self.bits.is_multiple_of(8) {
                self.bytes.push(0);
            }
            let bit = ((value >> b) & 1) as u8;
            *self.bytes.last_mut().expect("pushed") |= bit << (7 - (self.bits % 8));
            self.bits += 1;
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads fields of an MSB-first bit stream; `None` past its end.
struct BitReader<'a> {
    bytes: &'a [u8],
    bit: usize,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, bit: 0 }
    }

    fn read(&mut self, width: u32) -> Option<u64> {
        if self.bit + width as usize > self.bytes.len() * 8 {
            return None;
        }
        let mut v = 0u64;
        for _ in 0..width {
            let byte = self.bytes[self.bit >> 3];
            v = (v << 1) | ((byte >> (7 - (self.bit & 7))) & 1) as u64;
            self.bit += 1;
        }
        Some(v)
    }
}

/// `n` unsigned integers of `bits` bits from an MSB-first bit stream (DistillKit's layout),
/// `None` when the stream is too short.
pub fn unpack_bits(bytes: &[u8], bits: u32, n: usize) -> Option<Vec<u64>> {
    let mut r = BitReader::new(bytes);
    (0..n).map(|_| r.read(bits)).collect()
}

/// `values` as one MSB-first stream of `bits` bits each, padded to whole bytes.
pub fn pack_bits(values: impl IntoIterator<Item = u64>, bits: u32) -> Vec<u8> {
    let mut w = BitWriter::default();
    for v in values {
        w.push(v, bits);
    }
    w.into_bytes()
}

/// The encoded positions of one row.
#[derive(Debug, Default, Clone)]
pub struct EncodedRow {
    /// Kept entries per position.
    pub counts: Vec<u16>,
    /// `ln(tail)` per position.
    pub tail_log: Vec<f16>,
    /// Ids of all kept entries of the row.
    pub ids: Vec<u32>,
    /// Gap increments of entries `1..n` of every position.
    pub gaps: Vec<u8>,
}

/// The error of the encoding, accumulated over positions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CodecStats {
    pub positions: u64,
    /// Entries kept, summed over positions.
    pub entries: u64,
    /// Sum over positions of KL(decoded || full precision), on the decoded partition
    /// (kept entries + tail; the full-precision mass outside the kept entries is its tail).
    pub kl_sum: f64,
    /// Histogram of log10(KL) in `KL_BINS_PER_DECADE` bins per decade from 1e-12
    /// (bin 0 also holds KL below 1e-12).
    pub kl_hist: Vec<u64>,
    pub tail_err_sum: f64,
    pub tail_err_max: f64,
    /// Mass of the full-precision `k_max` entries that adaptive k dropped, summed.
    pub dropped_mass_sum: f64,
}

const KL_BINS_PER_DECADE: usize = 20;
const KL_DECADES: usize = 14;

impl Default for CodecStats {
    fn default() -> Self {
        Self {
            positions: 0,
            entries: 0,
            kl_sum: 0.0,
            kl_hist: vec![0; KL_BINS_PER_DECADE * KL_DECADES],
            tail_err_sum: 0.0,
            tail_err_max: 0.0,
            dropped_mass_sum: 0.0,
        }
    }
}

impl CodecStats {
    fn add(&mut self, entries: usize, kl: f64, tail_err: f64, dropped: f64) {
        self.positions += 1;
        self.entries += entries as u64;
        self.kl_sum += kl;
        let bin = ((kl.max(1e-300).log10() + 12.0) * KL_BINS_PER_DECADE as f64).floor();
        let bin = (bin.max(0.0) as usize).min(self.kl_hist.len() - 1);
        self.kl_hist[bin] += 1;
        self.tail_err_sum += tail_err;
        self.tail_err_max = self.tail_err_max.max(tail_err);
        self.dropped_mass_sum += dropped;
    }

    pub fn merge(&mut self, o: &CodecStats) {
        self.positions += o.positions;
        self.entries += o.entries;
        self.kl_sum += o.kl_sum;
        for (a, b) in self.kl_hist.iter_mut().zip(&o.kl_hist) {
            *a += b;
        }
        self.tail_err_sum += o.tail_err_sum;
        self.tail_err_max = self.tail_err_max.max(o.tail_err_max);
        self.dropped_mass_sum += o.dropped_mass_sum;
    }

    fn per_position(&self, x: f64) -> f64 {
        x / self.positions.max(1) as f64
    }

    pub fn mean_entries(&self) -> f64 {
        self.per_position(self.entries as f64)
    }
    pub fn mean_kl(&self) -> f64 {
        self.per_position(self.kl_sum)
    }
    pub fn mean_tail_err(&self) -> f64 {
        self.per_position(self.tail_err_sum)
    }
    pub fn mean_dropped_mass(&self) -> f64 {
        self.per_position(self.dropped_mass_sum)
    }

    /// KL below which a fraction `q` of positions lies (upper edge of its histogram bin).
    pub fn kl_quantile(&self, q: f64) -> f64 {
        let want = (q * self.positions as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in self.kl_hist.iter().enumerate() {
            seen += c;
            if seen >= want.max(1) {
                return 10f64.powf((i + 1) as f64 / KL_BINS_PER_DECADE as f64 - 12.0);
            }
        }
        f64::INFINITY
    }

    /// The figures `ember record` prints and the manifest keeps.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "positions": self.positions,
            "mean_entries": self.mean_entries(),
            "kl_mean": self.mean_kl(),
            "kl_p99": self.kl_quantile(0.99),
            "tail_error_mean": self.mean_tail_err(),
            "tail_error_max": self.tail_err_max,
            "dropped_mass_mean": self.mean_dropped_mass(),
        })
    }
}

/// Bytes per stored id for a vocabulary of `vocab` ids.
pub fn id_bytes(vocab: usize) -> usize {
    id_bits(vocab).div_ceil(8) as usize
}

/// The row's ids as `bytes` byte planes, least significant first.
pub fn id_planes(ids: &[u32], bytes: usize) -> Vec<u8> {
    (0..bytes)
        .flat_map(|p| ids.iter().map(move |&i| (i >> (8 * p)) as u8))
        .collect()
}

/// Encode one position (`ids`/`lps` its `k_max` entries, most likely first) into `row`,
/// accumulating the decoding error into `stats`. Ids must be non-negative and
/// log-probabilities NaN-free and below +inf (the shard writer refuses others).
pub fn encode_position(
    codec: &CompactCodec,
    ids: &[i32],
    lps: &[f32],
    row: &mut EncodedRow,
    stats: &mut CodecStats,
) {
    // entries most likely first (a served teacher's order is not guaranteed); sorted input,
    // the recorder's, is used as it is
    let sorted: (Vec<i32>, Vec<f32>);
    let (ids, lps) = if lps.windows(2).all(|w| w[0] >= w[1]) {
        (ids, lps)
    } else {
        let mut order: Vec<usize> = (0..lps.len()).collect();
        order.sort_by(|&a, &b| lps[b].total_cmp(&lps[a]));
        sorted = order.iter().map(|&i| (ids[i], lps[i])).unzip();
        (&sorted.0[..], &sorted.1[..])
    };
    // keep while the mass is short of the threshold; never an entry of probability 0
    let mut n = 0usize;
    let mut mass = 0f64;
    while n < lps.len() && lps[n] > f32::NEG_INFINITY && (n == 0 || mass < codec.mass as f64) {
        mass += (lps[n] as f64).exp();
        n += 1;
    }
    // a position always keeps its top entry, even a degenerate one
    let n = n.max(1);
    let mass: f64 = lps[..n].iter().map(|&l| (l as f64).exp()).sum();
    let tail = (1.0 - mass).max(0.0);
    let dropped: f64 = lps[n..].iter().map(|&l| (l as f64).exp()).sum();
    let tail_log = f16::from_f64(tail.ln());
    row.counts.push(n as u16);
    row.tail_log.push(tail_log);
    let top = lps[0] as f64;
    let step = codec.step as f64;
    // beyond this many steps `exp(-q step)` is 0 in f64: the decoded probability is the same
    // 0 for any larger q, so q stops here (and a decoder can bound a gap's length)
    let q_cap = max_gap_steps(codec.step);
    let mut q_prev = 0u64;
    let mut qs = Vec::with_capacity(n);
    for j in 0..n {
        row.ids.push(ids[j] as u32);
        let q = if j == 0 {
            0
        } else {
            (((top - lps[j] as f64) / step).round().max(0.0) as u64)
                .min(q_cap)
                .max(q_prev)
        };
        if j > 0 {
            let mut d = q - q_prev;
            while d >= 255 {
                row.gaps.push(255);
                d -= 255;
            }
            row.gaps.push(d as u8);
        }
        q_prev = q;
        qs.push(q);
    }
    // the decoder's view, to measure the error against the full-precision entries
    let mut dec = vec![0f64; n];
    let dec_tail = decode_probs(&qs, step, tail_log, &mut dec);
    let mut kl = 0.0;
    for (j, &p) in dec.iter().enumerate() {
        if p > 0.0 {
            kl += p * (p.ln() - lps[j] as f64);
        }
    }
    if dec_tail > 0.0 {
        kl += dec_tail * (dec_tail.ln() - tail.max(1e-300).ln());
    }
    stats.add(n, kl.max(0.0), (dec_tail - tail).abs(), dropped);
}

/// The largest grid gap an encoder writes at `step`: `ceil(746 / step)`, past which
/// `exp(-q step)` underflows to 0 in f64.
fn max_gap_steps(step: f32) -> u64 {
    (746.0 / step as f64).ceil() as u64
}

/// Probabilities of a position's kept entries from their grid gaps `qs` and stored tail;
/// returns the decoded tail.
fn decode_probs(qs: &[u64], step: f64, tail_log: f16, out: &mut [f64]) -> f64 {
    let tail = (tail_log.to_f64()).exp().min(1.0);
    let mut z = 0.0;
    for (o, &q) in out.iter_mut().zip(qs) {
        *o = (-(q as f64) * step).exp();
        z += *o;
    }
    let scale = (1.0 - tail) / z;
    for o in out.iter_mut() {
        *o *= scale;
    }
    tail
}

/// Why a row could not be decoded.
#[derive(Debug)]
pub struct DecodeError(pub String);

/// A row's kept ids as stored: byte planes (format v2) or decoded values (format v3).
pub enum RowIds<'a> {
    Planes { bytes: &'a [u8], width: usize },
    Values(&'a [u32]),
}

/// Decode the positions of one row into `k`-wide id and log-probability rows (entries past a
/// position's count are padding: id -1, log-probability -inf, which the trainer counts as
/// tail of mass 0).
#[allow(clippy::too_many_arguments)]
pub fn decode_row(
    step: f32,
    k: usize,
    counts: &[u16],
    tail_log: &[f16],
    ids: RowIds<'_>,
    gaps: &[u8],
    out_ids: &mut Vec<i32>,
    out_lps: &mut Vec<f32>,
) -> Result<(), DecodeError> {
    let total: usize = counts.iter().map(|&n| n as usize).sum();
    let (stored, per_id) = match ids {
        RowIds::Planes { bytes, width } => (bytes.len(), width),
        RowIds::Values(v) => (v.len(), 1),
    };
    if stored != total * per_id {
        return Err(DecodeError(format!(
            "{stored} stored ids for {total} entries of {per_id} bytes; the shard is truncated or damaged"
        )));
    }
    let id_at = |e: usize| -> u32 {
        match ids {
            RowIds::Planes { bytes, width } => {
                (0..width).fold(0u32, |v, p| v | (bytes[p * total + e] as u32) << (8 * p))
            }
            RowIds::Values(v) => v[e],
        }
    };
    let mut entry = 0usize;
    let mut g = gaps.iter();
    let mut qs = Vec::with_capacity(k);
    let mut probs = vec![0f64; k];
    for (pos, (&n, &tl)) in counts.iter().zip(tail_log).enumerate() {
        let n = n as usize;
        if n == 0 || n > k {
            return Err(DecodeError(format!(
                "position {pos} has {n} entries (1..={k} allowed)"
            )));
        }
        qs.clear();
        let mut q = 0u64;
        for j in 0..n {
            if entry >= total {
                return Err(DecodeError(format!(
                    "position {pos} holds entries past the row's {total}"
                )));
            }
            out_ids.push(id_at(entry) as i32);
            entry += 1;
            if j > 0 {
                loop {
                    let &d = g.next().ok_or_else(|| {
                        DecodeError(format!(
                            "log-probability gaps end inside position {pos}; the shard is truncated"
                        ))
                    })?;
                    q += d as u64;
                    if d < 255 {
                        break;
                    }
                }
            }
            qs.push(q);
        }
        decode_probs(&qs, step as f64, tl, &mut probs[..n]);
        out_lps.extend(probs[..n].iter().map(|&p| p.ln() as f32));
        for _ in n..k {
            out_ids.push(-1);
            out_lps.push(f32::NEG_INFINITY);
        }
    }
    if g.next().is_some() {
        return Err(DecodeError("more log-probability gaps than entries".into()));
    }
    Ok(())
}

/// Format v3's contexts: ids by rank bucket `floor(log2(rank + 1))` (0, 1-2, 3-6, ... 63+),
/// then gap bytes by the rank of their entry (1, 2, ... 32+).
const ID_CONTEXTS: usize = 7;
const GAP_CONTEXTS: usize = 32;

fn id_context(rank: usize) -> usize {
    ((usize::BITS - 1 - (rank + 1).leading_zeros()) as usize).min(ID_CONTEXTS - 1)
}

fn gap_context(rank: usize) -> usize {
    ID_CONTEXTS + (rank - 1).min(GAP_CONTEXTS - 1)
}

/// A row's `(context, symbol)` sequence: per position, each entry's id, then (from the second
/// entry) its gap bytes.
fn row_symbols(row: &EncodedRow) -> Vec<(usize, u32)> {
    let mut out = Vec::with_capacity(row.ids.len() + row.gaps.len());
    let (mut e, mut g) = (0usize, 0usize);
    for &n in &row.counts {
        for j in 0..n as usize {
            out.push((id_context(j), row.ids[e]));
            e += 1;
            if j > 0 {
                loop {
                    let b = row.gaps[g];
                    g += 1;
                    out.push((gap_context(j), b as u32));
                    if b < 255 {
                        break;
                    }
                }
            }
        }
    }
    out
}

/// Format v3 of a shard's rows: the frequency tables (counted over all the rows, one per
/// context, written in context order; an unused context is a single 0) and each row's rANS
/// stream.
pub fn rans_encode_rows(rows: &[EncodedRow]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let symbols: Vec<Vec<(usize, u32)>> = rows.iter().map(row_symbols).collect();
    let mut counts: Vec<std::collections::HashMap<u32, u64>> =
        vec![Default::default(); ID_CONTEXTS + GAP_CONTEXTS];
    for &(c, s) in symbols.iter().flatten() {
        *counts[c].entry(s).or_insert(0) += 1;
    }
    let models: Vec<Option<Model>> = counts
        .iter()
        .map(|c| Model::from_counts(&c.iter().map(|(&s, &n)| (s, n)).collect::<Vec<_>>()))
        .collect();
    let mut tables = Vec::new();
    for m in &models {
        match m {
            Some(m) => m.write(&mut tables),
            None => tables.push(0),
        }
    }
    // an unused context is never coded: any table stands in for it
    let placeholder = Model::from_counts(&[(0, 1)]).expect("one symbol");
    let models: Vec<Model> = models
        .into_iter()
        .map(|m| m.unwrap_or_else(|| placeholder.clone()))
        .collect();
    let streams = symbols.iter().map(|s| rans::encode(&models, s)).collect();
    (tables, streams)
}

/// The tables written by [`rans_encode_rows`]; `None` for unused contexts.
pub fn rans_read_tables(mut bytes: &[u8]) -> Result<Vec<Option<Model>>, DecodeError> {
    let mut out = Vec::with_capacity(ID_CONTEXTS + GAP_CONTEXTS);
    for c in 0..ID_CONTEXTS + GAP_CONTEXTS {
        if bytes.first() == Some(&0) {
            bytes = &bytes[1..];
            out.push(None);
            continue;
        }
        let m = Model::read(&mut bytes)
            .map_err(|e| DecodeError(format!("rANS table of context {c}: {}", e.0)))?;
        if c >= ID_CONTEXTS && (m.max_symbol() > 255 || m.min_symbol() == 255) {
            // gap bytes only, and one that can end a gap
            return Err(DecodeError(format!(
                "rANS table of gap context {c} holds symbols {}..={}",
                m.min_symbol(),
                m.max_symbol()
            )));
        }
        out.push(Some(m));
    }
    if !bytes.is_empty() {
        return Err(DecodeError(format!(
            "{} bytes after the rANS tables",
            bytes.len()
        )));
    }
    Ok(out)
}

/// One row's ids and gap bytes from its rANS stream, `counts` entries per position (1..=`k`
/// each), ids below `vocab`, log-probability gaps on a grid of `step` nats. A damaged stream
/// or table is an error, never a panic or an unbounded loop: a gap can only continue
/// (byte 255) as far as a finite log-probability reaches.
pub fn rans_decode_row(
    tables: &[Option<Model>],
    counts: &[u16],
    stream: &[u8],
    (k, vocab, step): (usize, usize, f32),
) -> Result<(Vec<u32>, Vec<u8>), DecodeError> {
    let err = |e: rans::RansError| DecodeError(format!("rANS stream: {}", e.0));
    let mut d = Decoder::new(stream).map_err(err)?;
    if let Some((pos, n)) = counts
        .iter()
        .enumerate()
        .find(|&(_, &n)| n == 0 || n as usize > k)
    {
        return Err(DecodeError(format!(
            "position {pos} has {n} entries (1..={k} allowed)"
        )));
    }
    // the encoder caps gaps at `max_gap_steps`: no longer run of 255s is legitimate
    let max_gap_bytes = (max_gap_steps(step) / 255) as usize + 1;
    let total: usize = counts.iter().map(|&n| n as usize).sum();
    let (mut ids, mut gaps) = (Vec::with_capacity(total), Vec::with_capacity(total));
    let model = |c: usize| {
        tables[c]
            .as_ref()
            .ok_or_else(|| DecodeError(format!("the stream uses context {c}, which has no table")))
    };
    for &n in counts {
        for j in 0..n as usize {
            let id = d.next(model(id_context(j))?).map_err(err)?;
            if id as usize >= vocab {
                return Err(DecodeError(format!(
                    "token id {id} outside the vocabulary of {vocab}"
                )));
            }
            ids.push(id);
            if j > 0 {
                for run in 0.. {
                    if run == max_gap_bytes {
                        return Err(DecodeError(format!(
                            "a log-probability gap longer than {max_gap_bytes} bytes"
                        )));
                    }
                    let b = d.next(model(gap_context(j))?).map_err(err)?;
                    let b = u8::try_from(b)
                        .map_err(|_| DecodeError(format!("gap byte {b} out of range")))?;
                    gaps.push(b);
                    if b < 255 {
                        break;
                    }
                }
            }
        }
    }
    if !d.finished() {
        return Err(DecodeError(
            "the rANS stream does not end where the counts say; the shard is damaged".into(),
        ));
    }
    Ok((ids, gaps))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax_sorted(logits: &[f64], k: usize) -> (Vec<i32>, Vec<f32>) {
        let m = logits.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let ids = idx[..k].iter().map(|&i| i as i32).collect();
        let lps = idx[..k]
            .iter()
            .map(|&i| (logits[i] - m - z.ln()) as f32)
            .collect();
        (ids, lps)
    }

    fn round_trip(
        codec: CompactCodec,
        vocab: usize,
        positions: &[(Vec<i32>, Vec<f32>)],
        k: usize,
    ) -> (Vec<i32>, Vec<f32>, CodecStats) {
        let bytes = id_bytes(vocab);
        let mut row = EncodedRow::default();
        let mut stats = CodecStats::default();
        for (ids, lps) in positions {
            encode_position(&codec, ids, lps, &mut row, &mut stats);
        }
        let (mut ids, mut lps) = (Vec::new(), Vec::new());
        let planes = id_planes(&row.ids, bytes);
        decode_row(
            codec.step,
            k,
            &row.counts,
            &row.tail_log,
            RowIds::Planes {
                bytes: &planes,
                width: bytes,
            },
            &row.gaps,
            &mut ids,
            &mut lps,
        )
        .unwrap();
        // format v3 stores the same ids and gaps
        let (tables, streams) = rans_encode_rows(std::slice::from_ref(&row));
        let tables = rans_read_tables(&tables).unwrap();
        let (v3_ids, v3_gaps) =
            rans_decode_row(&tables, &row.counts, &streams[0], (k, vocab, codec.step)).unwrap();
        assert!(
            rans_decode_row(&tables, &row.counts, &streams[0], (k, 3, codec.step)).is_err()
                || row.ids.iter().all(|&i| i < 3),
            "ids beyond the vocabulary are refused"
        );
        assert_eq!((&v3_ids, &v3_gaps), (&row.ids, &row.gaps));
        (ids, lps, stats)
    }

    /// Deterministic pseudo-random logits of spread `scale` (larger: more peaked).
    fn logits(vocab: usize, seed: u64, scale: f64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..vocab)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                // Gumbel: a heavy upper tail, like an LM's logits
                -scale * (-u.ln()).ln()
            })
            .collect()
    }

    #[test]
    fn bit_widths_and_streams() {
        assert_eq!(id_bits(512), 9);
        assert_eq!(id_bits(513), 10);
        assert_eq!(id_bits(4096), 12);
        assert_eq!(id_bits(151_936), 18);
        assert_eq!(id_bits(163_840), 18);
        // 5, 3, 7 as 3-bit fields: 101 011 111 -> 10101111 1(0000000)
        assert_eq!(pack_bits([5, 3, 7], 3), vec![0b1010_1111, 0b1000_0000]);
        assert_eq!(
            unpack_bits(&[0b1010_1111, 0b1000_0000], 3, 3),
            Some(vec![5, 3, 7])
        );
        assert_eq!(unpack_bits(&[0b1010_1111], 3, 3), None);
        let vals: Vec<u64> = (0..100).map(|i| (i * 1_234_567) % 163_840).collect();
        assert_eq!(
            unpack_bits(&pack_bits(vals.clone(), 18), 18, 100),
            Some(vals)
        );
    }

    #[test]
    fn round_trip_error_is_within_the_grid_and_tail_is_kept() {
        for (vocab, scale) in [(512, 1.0), (151_936, 3.0), (163_840, 0.5)] {
            let k = 64;
            let pos: Vec<_> = (0..40)
                .map(|s| softmax_sorted(&logits(vocab, s + 1, scale), k))
                .collect();
            for step in [1.0 / 32.0, 1.0 / 8.0] {
                let codec = CompactCodec {
                    mass: 1.0,
                    step,
                    compression: IpcCompression::None,
                    coder: EntryCoder::Planes,
                };
                let (ids, lps, stats) = round_trip(codec, vocab, &pos, k);
                assert_eq!(stats.positions, 40);
                assert_eq!(stats.mean_entries(), 64.0);
                for (p, (want_ids, want_lps)) in pos.iter().enumerate() {
                    assert_eq!(&ids[p * k..(p + 1) * k], &want_ids[..]);
                    let got = &lps[p * k..(p + 1) * k];
                    // gaps to the top entry within step/2, plus the common renormalisation shift
                    let shift = got[0] as f64 - want_lps[0] as f64;
                    for j in 0..k {
                        let e = (got[j] as f64 - want_lps[j] as f64) - shift;
                        assert!(e.abs() <= step as f64 / 2.0 + 1e-5, "{vocab} {step}: {e}");
                    }
                    assert!(shift.abs() < step as f64, "shift {shift}");
                    // the tail is the recorded one, to f16 precision of its log
                    let tail = |l: &[f32]| 1.0 - l.iter().map(|&x| (x as f64).exp()).sum::<f64>();
                    let (t_got, t_want) = (tail(got), tail(want_lps));
                    assert!(
                        (t_got - t_want).abs()
                            <= t_want * t_want.ln().abs() * 2f64.powi(-10) + 1e-6,
                        "tail {t_got} vs {t_want}"
                    );
                }
                // rounding errors uniform in +-step/2: KL about step^2/24 times the kept mass
                let mass: f64 = pos
                    .iter()
                    .map(|(_, l)| l.iter().map(|&x| (x as f64).exp()).sum::<f64>())
                    .sum::<f64>()
                    / pos.len() as f64;
                let expect = mass * (step as f64).powi(2) / 24.0;
                assert!(
                    stats.mean_kl() < 2.0 * expect && stats.mean_kl() > 0.1 * expect,
                    "{vocab} step {step}: KL {} vs ~{expect}",
                    stats.mean_kl()
                );
                assert!(stats.kl_quantile(0.99) >= stats.mean_kl());
            }
        }
    }

    #[test]
    fn adaptive_k_stops_at_the_mass_and_pads() {
        // a peaked position: 0.9, 0.06, 0.03, then a long tail
        let mut lps = vec![0.9f32.ln(), 0.06f32.ln(), 0.03f32.ln()];
        lps.extend((0..13).map(|i| (0.01f32 / 2f32.powi(i + 1)).ln()));
        let ids: Vec<i32> = (0..16).map(|i| 100 + i).collect();
        let codec = CompactCodec {
            mass: 0.95,
            step: 1.0 / 64.0,
            compression: IpcCompression::None,
            coder: EntryCoder::Planes,
        };
        let (got_ids, got_lps, stats) = round_trip(codec, 512, &[(ids.clone(), lps.clone())], 16);
        // 0.9 < 0.95, 0.96 >= 0.95: two entries
        assert_eq!(stats.entries, 2);
        assert_eq!(&got_ids[..2], &[100, 101]);
        assert!(got_ids[2..].iter().all(|&i| i == -1));
        assert!(got_lps[2..].iter().all(|&l| l == f32::NEG_INFINITY));
        let tail = 1.0 - (got_lps[0].exp() + got_lps[1].exp()) as f64;
        assert!((tail - 0.04).abs() < 1e-4, "tail {tail}");
        assert!((stats.mean_dropped_mass() - (0.03 + 0.01 * (1.0 - 0.5f64.powi(13)))).abs() < 1e-5);
        // an empty tail (all the vocabulary recorded) stays empty
        let full = vec![0.5f32.ln(), 0.25f32.ln(), 0.25f32.ln()];
        let (_, lp2, st2) = round_trip(
            CompactCodec { mass: 1.0, ..codec },
            4,
            &[(vec![3, 1, 0], full)],
            3,
        );
        let tail = 1.0 - lp2.iter().map(|&x| (x as f64).exp()).sum::<f64>();
        assert!(tail.abs() < 1e-6, "tail {tail}");
        assert!(st2.tail_err_max < 1e-6);
        // probability-0 entries are never kept
        let zero = vec![0.0f32, f32::NEG_INFINITY, f32::NEG_INFINITY];
        let (_, _, st3) = round_trip(
            CompactCodec { mass: 1.0, ..codec },
            4,
            &[(vec![2, 0, 1], zero)],
            3,
        );
        assert_eq!(st3.entries, 1);
    }

    #[test]
    fn large_gaps_escape_and_truncation_is_an_error() {
        // an entry 2,000 nats down: its probability is 0 in f64 whatever its gap, so the gap
        // stops at ceil(746 / step) steps and decodes to -inf as before
        let codec = CompactCodec {
            mass: 1.0,
            step: 1.0 / 8.0,
            compression: IpcCompression::None,
            coder: EntryCoder::Rans,
        };
        let far = (vec![5, 6, 7], vec![-0.5f32, -1.0, -2000.0]);
        let (_, got, _) = round_trip(codec, 512, std::slice::from_ref(&far), 3);
        assert_eq!(got[2], f32::NEG_INFINITY);
        let mut row = EncodedRow::default();
        encode_position(&codec, &far.0, &far.1, &mut row, &mut CodecStats::default());
        assert_eq!(
            row.gaps.len(),
            1 + (746 * 8 - 4) / 255 + 1,
            "{:?}",
            row.gaps
        );
        // a table whose gap context can only continue a gap is refused (it would never end)
        let forever = EncodedRow {
            counts: vec![2],
            tail_log: vec![f16::from_f32(-1.0)],
            ids: vec![1, 2],
            gaps: vec![255, 255, 3],
        };
        let (mut tables, _) = rans_encode_rows(std::slice::from_ref(&forever));
        // contexts 0 and 1 hold one id each, 2-6 nothing; then the first gap context: symbols
        // 3 and 255 (varint gaps 3 and 251 = [251, 1], counts minus one 0 and 1)
        let at = 3 + 3 + 5;
        assert_eq!(&tables[at..at + 6], &[2, 3, 0, 251, 1, 1], "{tables:?}");
        tables.splice(at..at + 6, [1, 255, 1, 0]); // only 255
        let err = rans_read_tables(&tables).unwrap_err();
        assert!(err.0.contains("gap context"), "{}", err.0);
        tables.splice(at..at + 4, [1, 128, 2, 0]); // only 256, not a byte
        let err = rans_read_tables(&tables).unwrap_err();
        assert!(err.0.contains("gap context"), "{}", err.0);

        let lps = vec![-0.001f32, -40.0, -41.0];
        let codec = CompactCodec {
            mass: 1.0,
            step: 1.0 / 32.0,
            compression: IpcCompression::None,
            coder: EntryCoder::Planes,
        };
        let (_, got, _) = round_trip(codec, 512, &[(vec![1, 2, 3], lps.clone())], 3);
        for j in 1..3 {
            let gap = (got[0] - got[j]) as f64 - (lps[0] - lps[j]) as f64;
            assert!(gap.abs() < 1.0 / 64.0 + 1e-4, "{gap}");
        }
        let mut row = EncodedRow::default();
        let mut stats = CodecStats::default();
        encode_position(&codec, &[1, 2, 3], &lps, &mut row, &mut stats);
        let ids = id_planes(&row.ids, 2);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let err = decode_row(
            codec.step,
            3,
            &row.counts,
            &row.tail_log,
            RowIds::Planes {
                bytes: &ids[..2],
                width: 2,
            },
            &row.gaps,
            &mut a,
            &mut b,
        )
        .unwrap_err();
        assert!(err.0.contains("truncated"), "{}", err.0);
        let err = decode_row(
            codec.step,
            3,
            &row.counts,
            &row.tail_log,
            RowIds::Planes {
                bytes: &ids,
                width: 2,
            },
            &row.gaps[..row.gaps.len() - 1],
            &mut a,
            &mut b,
        )
        .unwrap_err();
        assert!(err.0.contains("gaps end"), "{}", err.0);
        let err = decode_row(
            codec.step,
            2,
            &row.counts,
            &row.tail_log,
            RowIds::Planes {
                bytes: &ids,
                width: 2,
            },
            &row.gaps,
            &mut a,
            &mut b,
        )
        .unwrap_err();
        assert!(err.0.contains("3 entries"), "{}", err.0);
    }
}
