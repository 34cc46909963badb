//! Building blocks shared by the teacher architectures: linear layers kept in HF
//! layout, RMSNorm, RoPE (rotate_half and interleaved), causal attention with GQA and
//! padding masks, SwiGLU MLPs, and mixture-of-experts dispatch.
//!
//! Teachers are inference-only: plain tensors on a non-autodiff device, no Burn
//! `Module` bookkeeping.

use burn::prelude::*;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, IndexingUpdateOp};

use std::sync::Arc;

use rayon::prelude::*;

use crate::blas::blas;
use crate::weights::LazyTensor;
use crate::{TeacherError, Weights};

/// `y = x W^T + b` with `W` as stored by PyTorch (`[out, in]`), transposed once at load.
/// Float32 weights on the flex (CPU) device are kept on the host and multiplied by the
/// system's OpenBLAS when it is installed ([`crate::blas`]); otherwise by Burn.
pub struct Linear {
    weight: LinearWeight,
    pub bias: Option<Tensor<1>>,
}

enum LinearWeight {
    /// `[in, out]` on the device.
    Device(Tensor<2>),
    /// `[in, out]` row-major on the host, for BLAS.
    Host {
        data: Arc<Vec<f32>>,
        dims: [usize; 2],
        device: Device,
    },
}

impl Linear {
    /// Load `<prefix>.weight` (`[out, in]`) and `<prefix>.bias` if `bias`.
    pub fn load(
        w: &Weights,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Self, TeacherError> {
        let weight = w
            .get(&format!("{prefix}.weight"), [d_out, d_in])?
            .transpose();
        let bias = if bias {
            Some(w.get(&format!("{prefix}.bias"), [d_out])?)
        } else {
            None
        };
        Ok(Self::new(weight, bias))
    }

    /// From a weight `[in, out]`.
    pub fn new(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        let device = weight.device();
        let on_host = blas().is_some() && weight.dtype() == DType::F32 && device == Device::flex();
        let weight = if on_host {
            let dims = weight.dims();
            let data = weight
                .into_data()
                .try_into_vec::<f32>()
                .expect("float32 weight");
            LinearWeight::Host {
                data: Arc::new(data),
                dims,
                device,
            }
        } else {
            LinearWeight::Device(weight)
        };
        Self { weight, bias }
    }

    pub fn d_out(&self) -> usize {
        self.dims()[1]
    }

    fn dims(&self) -> [usize; 2] {
        match &self.weight {
            LinearWeight::Device(w) => w.dims(),
            LinearWeight::Host { dims, .. } => *dims,
        }
    }

    /// `x W` without the bias, in float32 whatever the compute dtype (routers).
    pub fn matmul_f32(&self, x: Tensor<2>) -> Tensor<2> {
        let x = x.cast(DType::F32);
        match &self.weight {
            LinearWeight::Device(w) => x.matmul(w.clone().cast(DType::F32)),
            LinearWeight::Host { .. } => self.product(x),
        }
    }

    /// `x W` (no bias).
    fn product(&self, x: Tensor<2>) -> Tensor<2> {
        match &self.weight {
            LinearWeight::Device(w) => x.matmul(w.clone()),
            LinearWeight::Host { data, dims, device } => {
                let [n, k] = x.dims();
                let blas = blas().expect("host weights only with BLAS");
                let a = x
                    .cast(DType::F32)
                    .into_data()
                    .try_into_vec::<f32>()
                    .expect("float32 activations");
                let y = blas.matmul(&a, data, n, k, dims[1]);
                Tensor::from_data(TensorData::new(y, [n, dims[1]]), device)
            }
        }
    }

    /// Whether [`Linear::forward_host`] applies: a host (BLAS) weight and no bias.
    fn on_host(&self) -> bool {
        matches!(self.weight, LinearWeight::Host { .. }) && self.bias.is_none()
    }

    /// `x W` of host rows `x: [n, in]` when [`Linear::on_host`], else `None`.
    fn forward_host(&self, x: &[f32], n: usize) -> Option<Vec<f32>> {
        let LinearWeight::Host { data, dims, .. } = &self.weight else {
            return None;
        };
        if self.bias.is_some() {
            return None;
        }
        Some(blas()?.matmul(x, data, n, dims[0], dims[1]))
    }

    /// `x: [n, in] -> [n, out]`
    pub fn forward_rows(&self, x: Tensor<2>) -> Tensor<2> {
        let y = self.product(x);
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<2>(),
            None => y,
        }
    }

    /// `x: [b, t, in] -> [b, t, out]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let y = self.forward_rows(x.reshape([b * t, d]));
        let out = y.dims()[1];
        y.reshape([b, t, out])
    }
}

/// RMSNorm as HF computes it: statistics in float32, `w * (x / sqrt(mean(x^2) + eps))`
/// with the weight applied in the compute dtype; or, zero-centred (Qwen3-Next), `(1 + w)`
/// applied in float32 before the cast back.
pub struct RmsNorm {
    pub weight: Tensor<1>,
    pub eps: f64,
    /// The weight is stored as an offset from 1 (`x * (1 + w)`).
    pub centred: bool,
}

impl RmsNorm {
    pub fn load(w: &Weights, key: &str, dim: usize, eps: f64) -> Result<Self, TeacherError> {
        Ok(Self {
            weight: w.get(key, [dim])?,
            eps,
            centred: false,
        })
    }

    /// A zero-centred norm (`x * (1 + w)`, Qwen3-Next's `Qwen3NextRMSNorm`).
    pub fn load_centred(
        w: &Weights,
        key: &str,
        dim: usize,
        eps: f64,
    ) -> Result<Self, TeacherError> {
        Ok(Self {
            centred: true,
            ..Self::load(w, key, dim, eps)?
        })
    }

    /// Normalise over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if x.dtype() == DType::F32 && x.device() == Device::flex() {
            return self.forward_host(x);
        }
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let rms = (x.clone().square().mean_dim(D - 1) + self.eps).sqrt();
        if self.centred {
            let scale = self.weight.clone().cast(DType::F32).add_scalar(1.0);
            return (x / rms * scale.unsqueeze::<D>()).cast(dtype);
        }
        (x / rms).cast(dtype) * self.weight.clone().unsqueeze::<D>()
    }

    /// Float32 on the CPU: one pass per row over rayon's pool instead of six tensor ops
    /// (the same arithmetic: `x / sqrt(mean(x^2) + eps)` times the weight, or `1 + w`).
    fn forward_host<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let device = x.device();
        let d = dims[D - 1];
        let mut v = x.into_data().try_into_vec::<f32>().expect("float32 rows");
        let mut w = self
            .weight
            .clone()
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("float norm weight");
        if self.centred {
            w.iter_mut().for_each(|w| *w += 1.0);
        }
        let eps = self.eps as f32;
        let rows = (16 * 1024 / d.max(1)).max(1);
        v.par_chunks_mut(rows * d).for_each(|chunk| {
            for row in chunk.chunks_exact_mut(d) {
                let rms = (row.iter().map(|a| a * a).sum::<f32>() / d as f32 + eps).sqrt();
                for (a, &w) in row.iter_mut().zip(&w) {
                    *a = *a / rms * w;
                }
            }
        });
        Tensor::from_data(TensorData::new(v, dims), &device)
    }
}

/// `torch.nn.LayerNorm` (weight and bias), statistics in float32.
pub struct LayerNorm {
    pub weight: Tensor<1>,
    pub bias: Tensor<1>,
    pub eps: f64,
}

impl LayerNorm {
    /// `<prefix>.weight` and `<prefix>.bias`, both `[dim]`.
    pub fn load(w: &Weights, prefix: &str, dim: usize, eps: f64) -> Result<Self, TeacherError> {
        Ok(Self {
            weight: w.get(&format!("{prefix}.weight"), [dim])?,
            bias: w.get(&format!("{prefix}.bias"), [dim])?,
            eps,
        })
    }

    /// Normalise over the last dimension; the result is float32.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let x = x.cast(DType::F32);
        let mean = x.clone().mean_dim(D - 1);
        let centred = x - mean;
        let var = centred.clone().square().mean_dim(D - 1);
        centred / (var + self.eps).sqrt() * self.weight.clone().cast(DType::F32).unsqueeze::<D>()
            + self.bias.clone().cast(DType::F32).unsqueeze::<D>()
    }
}

pub use ember_nn::{apply_rope, apply_rope_interleaved, repeat_kv};

/// Which keys each query may not see (`[b, 1, tq, tk]`, true = masked), where the queries are
/// the last `tq` of the `tk` positions (`tk > tq` when earlier keys come from a KV cache):
/// keys after the query, keys `window` or more positions before it (sliding window), and
/// padding keys (`pad`, `[b, tk]`, true = padding). A query never loses its own key, so no
/// row is fully masked (a padding query's output is garbage, but finite).
pub fn attention_mask(
    b: usize,
    tq: usize,
    tk: usize,
    pad: Option<&Tensor<2, Bool>>,
    window: Option<usize>,
    device: &Device,
) -> Tensor<4, Bool> {
    let off = tk - tq;
    let masked = |i: usize, j: usize| j > i + off || window.is_some_and(|w| i + off - j >= w);
    let causal = if off == 0 && window.is_none_or(|w| w >= tq) {
        Tensor::<2, Bool>::tril_mask([tq, tq], 0, device)
    } else {
        let m: Vec<bool> = (0..tq * tk).map(|ij| masked(ij / tk, ij % tk)).collect();
        Tensor::<2, Bool>::from_data(TensorData::new(m, [tq, tk]), device)
    };
    let mut mask = causal.unsqueeze::<4>().expand([b, 1, tq, tk]);
    if let Some(pad) = pad {
        let keys = pad.clone().reshape([b, 1, 1, tk]).expand([b, 1, tq, tk]);
        let own: Vec<bool> = (0..tq * tk).map(|ij| ij % tk == ij / tk + off).collect();
        let own = Tensor::<2, Bool>::from_data(TensorData::new(own, [tq, tk]), device)
            .unsqueeze::<4>()
            .expand([b, 1, tq, tk]);
        mask = mask.bool_or(keys.bool_and(own.bool_not()));
    }
    mask
}

/// Causal attention, `q: [b, h, tq, dq]`, `k: [b, hkv, tk, dq]`, `v: [b, hkv, tk, dv]`
/// (`hkv` divides `h`: each key/value head serves `h / hkv` query heads), masked as
/// [`attention_mask`] says. Softmax in float32.
pub fn causal_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    pad: Option<&Tensor<2, Bool>>,
    window: Option<usize>,
) -> Tensor<4> {
    let [b, _, t, _] = q.dims();
    let tk = k.dims()[2];
    let plain = pad.is_none() && window.is_none_or(|w| w >= tk);
    if plain && fused(&q) {
        // Burn's own kernel masks causally (queries are the last `t` of `tk` positions)
        return fused_attention(q, k, v, scale, None, t > 1);
    }
    if t == 1 && plain {
        // one decoding step: the last position sees every cached key
        return masked_attention(q, k, v, scale, None);
    }
    let mask = attention_mask(b, t, tk, pad, window, &q.device());
    masked_attention(q, k, v, scale, Some(mask))
}

/// `softmax(q k^T * scale, masked) v`, the mask `[b, 1, tq, tk]` (true = masked) broadcast
/// over heads; keys and values may have fewer heads than the queries (grouped-query
/// attention). Softmax in float32.
pub fn masked_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    mask: Option<Tensor<4, Bool>>,
) -> Tensor<4> {
    if fused(&q) {
        return fused_attention(q, k, v, scale, mask, false);
    }
    let [b, h, t, _] = q.dims();
    let groups = h / k.dims()[1];
    let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
    let tk = k.dims()[2];
    let dtype = q.dtype();
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(scale)
        .cast(DType::F32);
    let scores = match mask {
        Some(m) => scores.mask_fill(m.expand([b, h, t, tk]), f32::NEG_INFINITY),
        None => scores,
    };
    softmax(scores, 3).cast(dtype).matmul(v)
}

/// Whether attention over `q` runs through Burn's fused kernel: float32 on the CPU (flex),
/// where it computes the scores, the softmax and the product per head in parallel with
/// no score tensor in between (the same numbers as the composed path within float32
/// rounding, tested against transformers). Other devices and bf16 compose the ops as
/// transformers' eager attention does (bf16 scores, float32 softmax).
fn fused(q: &Tensor<4>) -> bool {
    q.dtype() == DType::F32 && q.device() == Device::flex()
}

fn fused_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    mask: Option<Tensor<4, Bool>>,
    is_causal: bool,
) -> Tensor<4> {
    let options = AttentionModuleOptions {
        scale: Some(scale),
        softcap: None,
        is_causal,
    };
    attention(q, k, v, mask, None, options)
}

/// HF's names of the SwiGLU projections (gate, up, down).
pub const MLP_NAMES: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// SwiGLU MLP `down(silu(gate(x)) * up(x))` at `<prefix>.{gate,up,down}_proj`.
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl Mlp {
    pub fn load(
        w: &Weights,
        prefix: &str,
        hidden: usize,
        inter: usize,
    ) -> Result<Self, TeacherError> {
        Self::load_named(w, prefix, MLP_NAMES, hidden, inter)
    }

    /// Same with other projection names (Mixtral experts use `w1`, `w3`, `w2`).
    pub fn load_named(
        w: &Weights,
        prefix: &str,
        names: [&str; 3],
        hidden: usize,
        inter: usize,
    ) -> Result<Self, TeacherError> {
        Ok(Self {
            gate: Linear::load(w, &format!("{prefix}.{}", names[0]), hidden, inter, false)?,
            up: Linear::load(w, &format!("{prefix}.{}", names[1]), hidden, inter, false)?,
            down: Linear::load(w, &format!("{prefix}.{}", names[2]), inter, hidden, false)?,
        })
    }

    /// `x: [n, hidden]`
    pub fn forward_rows(&self, x: Tensor<2>) -> Tensor<2> {
        if self.on_host()
            && let Some(rows) = host_rows(&x)
        {
            let [n, d] = x.dims();
            if let Some(y) = self.forward_host(&rows, n) {
                return Tensor::from_data(TensorData::new(y, [n, d]), &x.device());
            }
        }
        self.down
            .forward_rows(silu(self.gate.forward_rows(x.clone())) * self.up.forward_rows(x))
    }

    /// Whether all three products run on the host ([`Linear::on_host`]).
    fn on_host(&self) -> bool {
        [&self.gate, &self.up, &self.down]
            .iter()
            .all(|l| l.on_host())
    }

    /// The same on host rows `x: [n, hidden]`, when all three weights are on the host
    /// (BLAS): two products, `silu(g) * u` in one pass over rayon's pool, the third product.
    fn forward_host(&self, x: &[f32], n: usize) -> Option<Vec<f32>> {
        let mut g = self.gate.forward_host(x, n)?;
        let u = self.up.forward_host(x, n)?;
        swiglu_in_place(&mut g, &u);
        self.down.forward_host(&g, n)
    }
}

/// `g = silu(g) * u` element-wise (`silu(x) = x / (1 + e^-x)`, as Burn computes it).
fn swiglu_in_place(g: &mut [f32], u: &[f32]) {
    const CHUNK: usize = 16 * 1024;
    g.par_chunks_mut(CHUNK)
        .zip(u.par_chunks(CHUNK))
        .for_each(|(g, u)| {
            for (g, &u) in g.iter_mut().zip(u) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
        });
}

/// The float32 values of `x` on the host, when the teacher multiplies on the host: BLAS in
/// use and `x` float32 on the CPU (flex) device.
fn host_rows(x: &Tensor<2>) -> Option<Vec<f32>> {
    if blas().is_none() || x.dtype() != DType::F32 || x.device() != Device::flex() {
        return None;
    }
    x.clone().into_data().try_into_vec::<f32>().ok()
}

/// A routed expert: in memory, or left in the checkpoint file and read each time tokens
/// are routed to it ([`Weights::with_streamed_experts`]), or a zero-computation expert
/// that returns its input (LongCat-Flash).
pub enum Expert {
    Loaded(Mlp),
    Identity,
    Streamed {
        gate: LazyTensor,
        up: LazyTensor,
        down: LazyTensor,
    },
}

impl Expert {
    /// The SwiGLU expert at `<prefix>.{names}` (gate, up, down).
    pub fn load_named(
        w: &Weights,
        prefix: &str,
        names: [&str; 3],
        hidden: usize,
        inter: usize,
    ) -> Result<Self, TeacherError> {
        if !w.streams_experts() {
            return Ok(Expert::Loaded(Mlp::load_named(
                w, prefix, names, hidden, inter,
            )?));
        }
        let key = |n: &str| format!("{prefix}.{n}.weight");
        Ok(Expert::Streamed {
            gate: w.lazy(&key(names[0]), [inter, hidden])?,
            up: w.lazy(&key(names[1]), [inter, hidden])?,
            down: w.lazy(&key(names[2]), [hidden, inter])?,
        })
    }

    pub fn load(
        w: &Weights,
        prefix: &str,
        hidden: usize,
        inter: usize,
    ) -> Result<Self, TeacherError> {
        Self::load_named(w, prefix, MLP_NAMES, hidden, inter)
    }

    /// `x: [m, hidden]` host rows -> `[m, hidden]`, when the expert's products run on the
    /// host (BLAS); `None` otherwise.
    fn forward_host(&self, x: Vec<f32>, m: usize) -> Option<Vec<f32>> {
        match self {
            Expert::Loaded(mlp) => mlp.forward_host(&x, m),
            Expert::Identity => Some(x),
            Expert::Streamed { .. } => self.read_streamed()?.forward_host(&x, m),
        }
    }

    /// `x: [n, hidden]`
    pub fn forward_rows(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Expert::Loaded(mlp) => mlp.forward_rows(x),
            Expert::Identity => x,
            // the same code as a loaded expert's, so the same numbers
            Expert::Streamed { .. } => self
                .read_streamed()
                .expect("a streamed expert")
                .forward_rows(x),
        }
    }

    /// A streamed expert's weights read from the checkpoint now, as a loaded expert holds
    /// them (`None` for the other kinds).
    fn read_streamed(&self) -> Option<Mlp> {
        let Expert::Streamed { gate, up, down } = self else {
            return None;
        };
        let linear = |w: &LazyTensor| Linear::new(w.load().transpose(), None);
        Some(Mlp {
            gate: linear(gate),
            up: linear(up),
            down: linear(down),
        })
    }
}

/// Per token: the chosen experts and their mixing weights.
pub struct Routing {
    pub experts: Vec<Vec<usize>>,
    pub weights: Vec<Vec<f32>>,
}

/// Run `x: [n, hidden]` through the routed experts and sum their weighted outputs.
/// Tokens are grouped per expert on the host, so each expert runs one matmul over
/// exactly the tokens routed to it.
pub fn dispatch_experts(x: Tensor<2>, experts: &[Expert], routing: &Routing) -> Tensor<2> {
    let [n, d] = x.dims();
    let device = x.device();
    let mut per_expert: Vec<(Vec<i32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); experts.len()];
    for (tok, (ids, ws)) in routing.experts.iter().zip(&routing.weights).enumerate() {
        for (&e, &w) in ids.iter().zip(ws) {
            per_expert[e].0.push(tok as i32);
            per_expert[e].1.push(w);
        }
    }
    if let Some(rows) = host_rows(&x)
        && let Some(out) = dispatch_on_host(&rows, d, experts, &per_expert)
    {
        return Tensor::from_data(TensorData::new(out, [n, d]), &device);
    }
    let mut out = Tensor::<2>::zeros([n, d], (&device, x.dtype()));
    for (expert, (tokens, weights)) in experts.iter().zip(per_expert) {
        if tokens.is_empty() {
            continue;
        }
        let m = tokens.len();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(tokens, [m]), &device);
        let w = Tensor::<2>::from_data(TensorData::new(weights, [m, 1]), &device).cast(x.dtype());
        let y = expert.forward_rows(x.clone().select(0, idx.clone())) * w;
        out = out.select_assign(0, idx, y, IndexingUpdateOp::Add);
    }
    out
}

/// [`dispatch_experts`] on host rows `x: [n, d]` when every expert multiplies on the host:
/// gather each expert's tokens, its three products, and the weighted sum into the output
/// in expert order (the order of the device path, so the same sums). `None` (before any
/// work) when an expert's weights are not on the host.
fn dispatch_on_host(
    x: &[f32],
    d: usize,
    experts: &[Expert],
    per_expert: &[(Vec<i32>, Vec<f32>)],
) -> Option<Vec<f32>> {
    let on_host = |e: &Expert| match e {
        Expert::Loaded(mlp) => mlp.on_host(),
        // read as float32 host weights when routed (`x` is float32 on the CPU here)
        Expert::Identity | Expert::Streamed { .. } => true,
    };
    if !experts.iter().all(on_host) {
        return None;
    }
    let mut out = vec![0f32; x.len()];
    for (expert, (tokens, weights)) in experts.iter().zip(per_expert) {
        if tokens.is_empty() {
            continue;
        }
        let m = tokens.len();
        let mut rows = Vec::with_capacity(m * d);
        for &t in tokens {
            rows.extend_from_slice(&x[t as usize * d..(t as usize + 1) * d]);
        }
        let y = expert.forward_host(rows, m)?;
        for ((&t, &w), y) in tokens.iter().zip(weights).zip(y.chunks_exact(d)) {
            let o = &mut out[t as usize * d..(t as usize + 1) * d];
            for (o, &y) in o.iter_mut().zip(y) {
                *o += y * w;
            }
        }
    }
    Some(out)
}

/// Read a small 2-D tensor to host rows.
pub fn to_rows(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [n, m] = t.dims();
    let v: Vec<f32> = t
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("float tensor");
    (0..n).map(|i| v[i * m..(i + 1) * m].to_vec()).collect()
}
