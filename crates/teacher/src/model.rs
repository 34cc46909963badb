//! The decoder every supported teacher shares: embeddings, `L` pre-norm layers of
//! (attention, feed-forward), final norm, LM head. Architectures differ in the attention
//! (standard GQA with optional bias/q-k norms, or DeepSeek's multi-head latent attention)
//! and in the feed-forward (dense SwiGLU, or routed experts); each architecture file
//! assembles these from its checkpoint.

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::{sigmoid, softmax};

use crate::layers::{
    Expert, Linear, Mlp, RmsNorm, Routing, apply_rope, apply_rope_interleaved, causal_attention,
    dispatch_experts, repeat_kv, to_rows, topk_indices,
};
use crate::rope::Rope;
use crate::{Arch, HfConfig};

/// A loaded teacher.
pub struct Teacher {
    pub config: HfConfig,
    pub embed_tokens: Tensor<2>,
    pub layers: Vec<Layer>,
    pub norm: RmsNorm,
    /// `[hidden, vocab]`; the transposed embedding when tied.
    pub lm_head: Tensor<2>,
    /// Rotary embedding shared by every layer.
    pub rope: Rope,
}

pub struct Layer {
    pub input_layernorm: RmsNorm,
    pub attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub ffn: FeedForward,
}

pub enum Attention {
    Standard(StandardAttention),
    Latent(LatentAttention),
}

/// GQA attention; `bias` on q/k/v (Qwen2), RMSNorm on q and k before RoPE, per head
/// (Qwen3, GLM-4.5) or over the whole projection (MiniMax-M2).
pub struct StandardAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    /// q/k norms over all heads at once (`[heads * head_dim]` weights) rather than per head.
    pub qk_norm_over_heads: bool,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Attend to at most this many most recent keys (Mixtral/Mistral style).
    pub sliding_window: Option<usize>,
}

/// DeepSeek multi-head latent attention: queries through an optional low-rank
/// bottleneck, keys/values from a shared compressed latent, RoPE on a decoupled slice.
pub struct LatentAttention {
    /// `q_proj` when `q_lora_rank` is unset, else `(q_a_proj, q_a_layernorm, q_b_proj)`.
    pub q: QueryPath,
    pub kv_a_proj_with_mqa: Linear,
    pub kv_a_layernorm: RmsNorm,
    pub kv_b_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    pub kv_lora_rank: usize,
    pub rope_interleave: bool,
    pub softmax_scale: f64,
}

pub enum QueryPath {
    Direct(Linear),
    LowRank { a: Linear, norm: RmsNorm, b: Linear },
}

pub enum FeedForward {
    Dense(Mlp),
    Moe(MoeBlock),
}

pub struct MoeBlock {
    /// Router `[hidden, experts]`.
    pub gate: Linear,
    pub experts: Vec<Expert>,
    pub shared_experts: Option<Mlp>,
    pub top_k: usize,
    pub router: Router,
}

pub enum Router {
    /// Softmax over all experts, top-k, optionally renormalised (Qwen3-MoE, Mixtral).
    Softmax { norm_topk_prob: bool },
    /// DeepSeek-V3: sigmoid scores; selection on scores + correction bias, restricted to
    /// the best `topk_group` of `n_group` groups (a group's score is the sum of its top 2);
    /// weights are the un-biased scores, optionally renormalised, times `scale`.
    SigmoidGrouped {
        bias: Vec<f32>,
        n_group: usize,
        topk_group: usize,
        norm_topk_prob: bool,
        scale: f32,
    },
}

impl Teacher {
    pub fn arch(&self) -> Arch {
        self.config.arch
    }

    pub fn vocab_size(&self) -> usize {
        self.lm_head.dims()[1]
    }

    /// Logits `[b, t, vocab]` (float32 whatever the compute dtype) at every position. `pad` (`[b, t]`, true = padding) masks
    /// padded keys; with right padding, valid positions are unaffected by the padding.
    pub fn forward(&self, input_ids: Tensor<2, Int>, pad: Option<&Tensor<2, Bool>>) -> Tensor<3> {
        self.run(input_ids, pad, None)
    }

    /// An empty KV cache for [`Teacher::forward_cached`].
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: (0..self.layers.len()).map(|_| None).collect(),
            len: 0,
        }
    }

    /// Logits `[b, t, vocab]` of `input_ids`, the `t` positions that follow those already in
    /// `cache`, which grows by them: decoding token by token costs one position per step.
    /// The same numbers as [`Teacher::forward`] over the whole sequence (tested).
    pub fn forward_cached(&self, input_ids: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        self.run(input_ids, None, Some(cache))
    }

    fn run(
        &self,
        input_ids: Tensor<2, Int>,
        pad: Option<&Tensor<2, Bool>>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [b, t] = input_ids.dims();
        let d = self.embed_tokens.dims()[1];
        let mut x = self
            .embed_tokens
            .clone()
            .select(0, input_ids.reshape([b * t]))
            .reshape([b, t, d]);
        let device = x.device();
        let dtype = x.dtype();
        let off = cache.as_ref().map_or(0, |c| c.len);
        let rope = {
            // positions off..off + t (dynamic RoPE sizes its base for the whole length)
            let (cos, sin) = self.rope.tables_at(off, t, &device);
            (cos.cast(dtype), sin.cast(dtype))
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(x.clone());
            let layer_cache = cache.as_mut().map(|c| &mut c.layers[i]);
            x = x + layer.attn.forward(h, &rope, pad, layer_cache);
            let h = layer.post_attention_layernorm.forward(x.clone());
            x = x + layer.ffn.forward(h);
        }
        if let Some(c) = cache {
            c.len += t;
        }
        let x = self.norm.forward(x);
        x.reshape([b * t, d])
            .matmul(self.lm_head.clone())
            .reshape([b, t, self.vocab_size()])
    }
}

/// Keys and values (`[b, heads, positions, dim]`, after RoPE) of every layer for the
/// positions decoded so far.
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// Positions held.
    pub len: usize,
}

/// Append the new keys/values to a layer's cache (if any) and return all of them.
fn extend_cache(
    cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    k: Tensor<4>,
    v: Tensor<4>,
) -> (Tensor<4>, Tensor<4>) {
    let Some(slot) = cache else {
        return (k, v);
    };
    let (k, v) = match slot.take() {
        Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
        None => (k, v),
    };
    *slot = Some((k.clone(), v.clone()));
    (k, v)
}

type LayerCache<'a> = Option<&'a mut Option<(Tensor<4>, Tensor<4>)>>;

impl Attention {
    fn forward(
        &self,
        x: Tensor<3>,
        rope: &(Tensor<2>, Tensor<2>),
        pad: Option<&Tensor<2, Bool>>,
        cache: LayerCache<'_>,
    ) -> Tensor<3> {
        match self {
            Attention::Standard(a) => a.forward(x, rope, pad, cache),
            Attention::Latent(a) => a.forward(x, rope, pad, cache),
        }
    }
}

impl StandardAttention {
    fn forward(
        &self,
        x: Tensor<3>,
        (cos, sin): &(Tensor<2>, Tensor<2>),
        pad: Option<&Tensor<2, Bool>>,
        cache: LayerCache<'_>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let over_heads = self.qk_norm_over_heads;
        let heads = |y: Tensor<3>, n: usize, norm: &Option<RmsNorm>| {
            let y = match norm {
                Some(norm) if over_heads => norm.forward(y).reshape([b, t, n, hd]),
                Some(norm) => norm.forward(y.reshape([b, t, n, hd])),
                None => y.reshape([b, t, n, hd]),
            };
            y.swap_dims(1, 2)
        };
        let q = apply_rope(
            heads(self.q_proj.forward(x.clone()), nh, &self.q_norm),
            cos,
            sin,
        );
        let k = apply_rope(
            heads(self.k_proj.forward(x.clone()), nkv, &self.k_norm),
            cos,
            sin,
        );
        let v = heads(self.v_proj.forward(x), nkv, &None);
        let (k, v) = extend_cache(cache, k, v);
        let scale = 1.0 / (hd as f64).sqrt();
        let y = causal_attention(
            q,
            repeat_kv(k, nh / nkv),
            repeat_kv(v, nh / nkv),
            scale,
            pad,
            self.sliding_window,
        );
        self.o_proj
            .forward(y.swap_dims(1, 2).reshape([b, t, nh * hd]))
    }
}

impl LatentAttention {
    fn forward(
        &self,
        x: Tensor<3>,
        (cos, sin): &(Tensor<2>, Tensor<2>),
        pad: Option<&Tensor<2, Bool>>,
        cache: LayerCache<'_>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (nh, nope, rope_d, vd) = (
            self.num_heads,
            self.qk_nope_head_dim,
            self.qk_rope_head_dim,
            self.v_head_dim,
        );
        let qk_d = nope + rope_d;
        let q = match &self.q {
            QueryPath::Direct(q) => q.forward(x.clone()),
            QueryPath::LowRank { a, norm, b: qb } => qb.forward(norm.forward(a.forward(x.clone()))),
        };
        let q = q.reshape([b, t, nh, qk_d]).swap_dims(1, 2);
        let q_nope = q.clone().narrow(3, 0, nope);
        let q_pe = q.narrow(3, nope, rope_d);

        let ckv = self.kv_a_proj_with_mqa.forward(x);
        let compressed = ckv.clone().narrow(2, 0, self.kv_lora_rank);
        let k_pe = ckv
            .narrow(2, self.kv_lora_rank, rope_d)
            .reshape([b, 1, t, rope_d]);
        let kv = self
            .kv_b_proj
            .forward(self.kv_a_layernorm.forward(compressed))
            .reshape([b, t, nh, nope + vd])
            .swap_dims(1, 2);
        let k_nope = kv.clone().narrow(3, 0, nope);
        let v = kv.narrow(3, nope, vd);

        let (q_pe, k_pe) = if self.rope_interleave {
            (
                apply_rope_interleaved(q_pe, cos, sin),
                apply_rope_interleaved(k_pe, cos, sin),
            )
        } else {
            (apply_rope(q_pe, cos, sin), apply_rope(k_pe, cos, sin))
        };
        let q = Tensor::cat(vec![q_nope, q_pe], 3);
        let k = Tensor::cat(vec![k_nope, k_pe.expand([b, nh, t, rope_d])], 3);
        let (k, v) = extend_cache(cache, k, v);
        let y = causal_attention(q, k, v, self.softmax_scale, pad, None);
        self.o_proj
            .forward(y.swap_dims(1, 2).reshape([b, t, nh * vd]))
    }
}

impl FeedForward {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let x2 = x.reshape([b * t, d]);
        let y = match self {
            FeedForward::Dense(mlp) => mlp.forward2(x2),
            FeedForward::Moe(moe) => moe.forward2(x2),
        };
        y.reshape([b, t, d])
    }
}

impl MoeBlock {
    fn forward2(&self, x: Tensor<2>) -> Tensor<2> {
        // router in float32, as HF does
        let logits = x
            .clone()
            .cast(DType::F32)
            .matmul(self.gate.weight.clone().cast(DType::F32));
        let routing = match &self.router {
            Router::Softmax { norm_topk_prob } => {
                softmax_routing(to_rows(softmax(logits, 1)), self.top_k, *norm_topk_prob)
            }
            Router::SigmoidGrouped {
                bias,
                n_group,
                topk_group,
                norm_topk_prob,
                scale,
            } => grouped_routing(
                to_rows(sigmoid(logits)),
                bias,
                self.top_k,
                *n_group,
                *topk_group,
                *norm_topk_prob,
                *scale,
            ),
        };
        let routed = dispatch_experts(x.clone(), &self.experts, &routing);
        match &self.shared_experts {
            Some(shared) => routed + shared.forward2(x),
            None => routed,
        }
    }
}

/// Top-k of softmax probabilities, renormalised to sum to 1 if asked.
pub fn softmax_routing(probs: Vec<Vec<f32>>, k: usize, norm: bool) -> Routing {
    let mut experts = Vec::with_capacity(probs.len());
    let mut weights = Vec::with_capacity(probs.len());
    for p in probs {
        let idx = topk_indices(&p, k);
        let mut w: Vec<f32> = idx.iter().map(|&i| p[i]).collect();
        if norm {
            let s: f32 = w.iter().sum();
            w.iter_mut().for_each(|x| *x /= s);
        }
        experts.push(idx);
        weights.push(w);
    }
    Routing { experts, weights }
}

/// DeepSeek-V3 "noaux_tc" routing on sigmoid scores.
pub fn grouped_routing(
    scores: Vec<Vec<f32>>,
    bias: &[f32],
    k: usize,
    n_group: usize,
    topk_group: usize,
    norm: bool,
    scale: f32,
) -> Routing {
    let mut experts = Vec::with_capacity(scores.len());
    let mut weights = Vec::with_capacity(scores.len());
    for s in scores {
        let e = s.len();
        let per_group = e / n_group;
        let biased: Vec<f32> = s.iter().zip(bias).map(|(a, b)| a + b).collect();
        let group_scores: Vec<f32> = (0..n_group)
            .map(|g| {
                topk_indices(&biased[g * per_group..(g + 1) * per_group], 2)
                    .iter()
                    .map(|&i| biased[g * per_group + i])
                    .sum()
            })
            .collect();
        let keep = topk_indices(&group_scores, topk_group);
        let masked: Vec<f32> = (0..e)
            .map(|i| {
                if keep.contains(&(i / per_group)) {
                    biased[i]
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let idx = topk_indices(&masked, k);
        let mut w: Vec<f32> = idx.iter().map(|&i| s[i]).collect();
        if norm {
            let sum: f32 = w.iter().sum::<f32>() + 1e-20;
            w.iter_mut().for_each(|x| *x /= sum);
        }
        w.iter_mut().for_each(|x| *x *= scale);
        experts.push(idx);
        weights.push(w);
    }
    Routing { experts, weights }
}
