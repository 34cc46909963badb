//! Static-model rANS (range asymmetric numeral systems) for logits format v3.
//!
//! The compact format's ids and log-probability gaps are far from uniform: frequent tokens
//! fill most top-k lists, and the gap between neighbouring entries shrinks with their rank.
//! zstd over byte planes captures part of that (87.9 bytes/token for the ids of a k = 64
//! recording of the stronger quick-start teacher); an order-0 model per rank bucket, counted
//! over the shard, gets close to the measured entropy (71.8). So format v3 codes each row's
//! ids and gap bytes with rANS against per-shard frequency tables, one table per *context*
//! (a bucket of ranks), stored once per shard.
//!
//! The coder is the 64-bit-state, 32-bit-word rANS of Fabian Giesen's `rans64.h` (public
//! domain): state in `[2^31, 2^63)`, probabilities in units of `2^-SCALE_BITS`. Symbols are
//! encoded in reverse and decoded forwards; the stream is little-endian 32-bit words.

/// Probability resolution: frequencies of one context sum to `2^SCALE_BITS`. 22 bits leave
/// room for every id of a 4M-token vocabulary to have a frequency of at least 1.
pub const SCALE_BITS: u32 = 22;
const TOTAL: u64 = 1 << SCALE_BITS;
const LOW: u64 = 1 << 31;

/// One context's frequency table over the symbols seen in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Symbols with a non-zero frequency, ascending.
    symbols: Vec<u32>,
    /// Their frequencies (sum `2^SCALE_BITS`, each at least 1).
    freq: Vec<u32>,
    /// Cumulative frequencies: `cum[i]` = sum of `freq[..i]` (one more entry than `freq`).
    cum: Vec<u32>,
    /// The counts the frequencies were derived from (what a table stores: small numbers,
    /// and the reader derives the same frequencies from them).
    counts: Vec<u64>,
}

/// Why a stream or table could not be decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct RansError(pub String);

impl Model {
    /// The table for symbols counted `counts` (pairs of symbol, count; any order, no
    /// duplicates, zero counts skipped). `None` when nothing was counted.
    pub fn from_counts(counts: &[(u32, u64)]) -> Option<Self> {
        let mut c: Vec<(u32, u64)> = counts.iter().copied().filter(|&(_, n)| n > 0).collect();
        if c.is_empty() {
            return None;
        }
        assert!(
            c.len() as u64 <= TOTAL,
            "{} symbols exceed the rANS resolution",
            c.len()
        );
        c.sort_unstable_by_key(|&(s, _)| s);
        let total: u64 = c.iter().map(|&(_, n)| n).sum();
        let mut freq: Vec<u32> = c
            .iter()
            .map(|&(_, n)| ((n as f64 * TOTAL as f64 / total as f64).round() as u64).max(1) as u32)
            .collect();
        // bring the sum to exactly TOTAL, adjusting the largest frequencies first
        let mut order: Vec<usize> = (0..freq.len()).collect();
        order.sort_unstable_by(|&a, &b| freq[b].cmp(&freq[a]).then(a.cmp(&b)));
        let mut sum: i64 = freq.iter().map(|&f| f as i64).sum();
        let mut i = 0;
        while sum != TOTAL as i64 {
            let j = order[i % order.len()];
            if sum > TOTAL as i64 {
                let take = (sum - TOTAL as i64)
                    .min(freq[j] as i64 - 1)
                    .min(freq[j] as i64 / 2 + 1);
                if take > 0 {
                    freq[j] -= take as u32;
                    sum -= take;
                }
            } else {
                freq[j] += (TOTAL as i64 - sum) as u32;
                sum = TOTAL as i64;
            }
            i += 1;
        }
        let mut cum = Vec::with_capacity(freq.len() + 1);
        let mut acc = 0u32;
        cum.push(0);
        for &f in &freq {
            acc += f;
            cum.push(acc);
        }
        let (symbols, counts) = c.into_iter().unzip();
        Some(Self {
            symbols,
            freq,
            cum,
            counts,
        })
    }

    /// The smallest and largest symbol with a frequency.
    pub fn min_symbol(&self) -> u32 {
        self.symbols[0]
    }
    pub fn max_symbol(&self) -> u32 {
        *self.symbols.last().expect("a table has symbols")
    }

    /// Index of `symbol` in the table, `None` if it has no frequency.
    fn index(&self, symbol: u32) -> Option<usize> {
        self.symbols.binary_search(&symbol).ok()
    }

    /// Append the table: symbol count, then per symbol the gap to the previous symbol and
    /// its count minus one, as LEB128 varints (the frequencies are derived from the counts
    /// again when read, by the same arithmetic).
    pub fn write(&self, out: &mut Vec<u8>) {
        varint(out, self.symbols.len() as u64);
        let mut next = 0u32;
        for (&s, &n) in self.symbols.iter().zip(&self.counts) {
            varint(out, (s - next) as u64);
            varint(out, n - 1);
            next = s + 1;
        }
    }

    /// Read a table written by [`Model::write`] from the front of `bytes`, advancing it.
    pub fn read(bytes: &mut &[u8]) -> Result<Self, RansError> {
        let n = read_varint(bytes)? as usize;
        if n == 0 || n as u64 > TOTAL {
            return Err(RansError(format!("a frequency table of {n} symbols")));
        }
        let mut counts = Vec::with_capacity(n);
        let mut next = 0u64;
        let mut total = 0u64;
        for _ in 0..n {
            let s = next.checked_add(read_varint(bytes)?).unwrap_or(u64::MAX);
            let c = read_varint(bytes)?.checked_add(1);
            total = c.and_then(|c| total.checked_add(c)).unwrap_or(u64::MAX);
            if s > u32::MAX as u64 || total > 1 << 53 {
                return Err(RansError(format!("symbol {s} or its count out of range")));
            }
            counts.push((s as u32, c.expect("checked")));
            next = s + 1;
        }
        Ok(Self::from_counts(&counts).expect("at least one symbol"))
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(bytes: &mut &[u8]) -> Result<u64, RansError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes
            .split_first()
            .ok_or_else(|| RansError("a frequency table ends early".into()))?;
        *bytes = rest;
        v |= ((b & 0x7f) as u64) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(RansError("a varint longer than 64 bits".into()))
}

/// Encode `(context, symbol)` pairs into one stream. Every symbol must be in its context's
/// table (the tables are counted from the same symbols).
pub fn encode(models: &[Model], symbols: &[(usize, u32)]) -> Vec<u8> {
    let mut words: Vec<u32> = Vec::with_capacity(symbols.len() / 2 + 2);
    let mut x: u64 = LOW;
    for &(ctx, s) in symbols.iter().rev() {
        let m = &models[ctx];
        let i = m
            .index(s)
            .unwrap_or_else(|| panic!("symbol {s} is not in the table of context {ctx}"));
        let (start, freq) = (m.cum[i] as u64, m.freq[i] as u64);
        let x_max = ((LOW >> SCALE_BITS) << 32) * freq;
        if x >= x_max {
            words.push(x as u32);
            x >>= 32;
        }
        x = ((x / freq) << SCALE_BITS) + (x % freq) + start;
    }
    words.push(x as u32);
    words.push((x >> 32) as u32);
    // written in reverse: the decoder reads the final state (high word first), then the
    // words in the reverse order of their emission
    let mut out = Vec::with_capacity(words.len() * 4);
    for w in words.iter().rev() {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

/// Reads symbols from a stream written by [`encode`], in the order they were given.
pub struct Decoder<'a> {
    words: &'a [u8],
    x: u64,
}

impl<'a> Decoder<'a> {
    pub fn new(stream: &'a [u8]) -> Result<Self, RansError> {
        if stream.len() < 8 || !stream.len().is_multiple_of(4) {
            return Err(RansError(format!(
                "a stream of {} bytes (whole 32-bit words, at least 2)",
                stream.len()
            )));
        }
        let word = |i: usize| u32::from_le_bytes(stream[i..i + 4].try_into().expect("4 bytes"));
        let x = ((word(0) as u64) << 32) | word(4) as u64;
        // every state the encoder leaves is in [2^31, 2^63); decoding keeps it there
        if !(LOW..1 << 63).contains(&x) {
            return Err(RansError(format!(
                "a starting state {x:#x} no encoder writes"
            )));
        }
        Ok(Self {
            words: &stream[8..],
            x,
        })
    }

    /// The next symbol, from context `m`.
    pub fn next(&mut self, m: &Model) -> Result<u32, RansError> {
        let slot = (self.x & (TOTAL - 1)) as u32;
        let i = m.cum.partition_point(|&c| c <= slot) - 1;
        let (start, freq) = (m.cum[i] as u64, m.freq[i] as u64);
        self.x = freq * (self.x >> SCALE_BITS) + slot as u64 - start;
        if self.x < LOW {
            let (w, rest) = self
                .words
                .split_first_chunk::<4>()
                .ok_or_else(|| RansError("the stream ends early".into()))?;
            self.x = (self.x << 32) | u32::from_le_bytes(*w) as u64;
            self.words = rest;
        }
        Ok(m.symbols[i])
    }

    /// Whether every word was read and the state is back where the encoder started (a
    /// stream decoded with the wrong tables or counts almost never ends so).
    pub fn finished(&self) -> bool {
        self.words.is_empty() && self.x == LOW
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models_for(symbols: &[(usize, u32)], contexts: usize) -> Vec<Model> {
        (0..contexts)
            .map(|c| {
                let mut counts = std::collections::BTreeMap::new();
                for &(ctx, s) in symbols {
                    if ctx == c {
                        *counts.entry(s).or_insert(0u64) += 1;
                    }
                }
                let counts: Vec<(u32, u64)> = counts.into_iter().collect();
                Model::from_counts(&counts)
                    .unwrap_or_else(|| Model::from_counts(&[(0, 1)]).unwrap())
            })
            .collect()
    }

    #[test]
    fn round_trip_over_contexts_and_large_alphabets() {
        // skewed ids over a 163,840 vocabulary in 3 contexts, and a single-symbol context
        let mut state = 12345u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let symbols: Vec<(usize, u32)> = (0..20_000)
            .map(|i| {
                let ctx = i % 4;
                let s = match ctx {
                    3 => 7,
                    c => (rnd() % (1 << (6 + 5 * c))).min(163_839),
                };
                (ctx, s)
            })
            .collect();
        let models = models_for(&symbols, 4);
        for m in &models {
            assert_eq!(*m.cum.last().unwrap() as u64, TOTAL);
            assert!(m.freq.iter().all(|&f| f >= 1));
            let mut bytes = Vec::new();
            m.write(&mut bytes);
            assert_eq!(&Model::read(&mut &bytes[..]).unwrap(), m);
        }
        let stream = encode(&models, &symbols);
        let mut d = Decoder::new(&stream).unwrap();
        for &(ctx, s) in &symbols {
            assert_eq!(d.next(&models[ctx]).unwrap(), s);
        }
        assert!(d.finished());
        // close to the entropy: the single-symbol context costs nothing, context 0 (64
        // symbols) about 6 bits
        let bits = stream.len() as f64 * 8.0 / symbols.len() as f64;
        let entropy: f64 = [6.0, 11.0, 16.0, 0.0].iter().sum::<f64>() / 4.0;
        assert!(bits < entropy + 0.2, "{bits} bits/symbol vs {entropy}");
    }

    #[test]
    fn empty_streams_truncation_and_bad_tables_are_errors() {
        let models = vec![Model::from_counts(&[(3, 5), (9, 1)]).unwrap()];
        let stream = encode(&models, &[]);
        assert_eq!(stream.len(), 8);
        assert!(Decoder::new(&stream).unwrap().finished());
        let symbols: Vec<(usize, u32)> = (0..5000)
            .map(|i| (0, if i % 7 == 0 { 9 } else { 3 }))
            .collect();
        let stream = encode(&models, &symbols);
        let mut d = Decoder::new(&stream[..stream.len() - 4]).unwrap();
        let err = (0..symbols.len()).try_for_each(|_| d.next(&models[0]).map(|_| ()));
        assert!(err.is_err() || !d.finished());
        assert!(Decoder::new(&stream[..6]).is_err());
        let mut bad = stream.clone();
        bad[3] |= 0x80; // a state of 2^63 or more would overflow the decoding arithmetic
        assert!(Decoder::new(&bad).is_err());
        let mut bytes = Vec::new();
        models[0].write(&mut bytes);
        assert!(Model::read(&mut &bytes[..bytes.len() - 1]).is_err());
        assert!(Model::read(&mut &[0u8][..]).is_err(), "an empty table");
        bytes[1] |= 0x80; // a varint that runs past the end
        assert!(Model::read(&mut &bytes[..]).is_err());
    }
}
