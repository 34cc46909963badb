//! The decoder every supported teacher shares: embeddings, `L` layers, final norm, LM head.
//! A layer is one pre-norm block of (token mixer, feed-forward), or, for LongCat-Flash, two
//! such blocks with a shortcut MoE beside them. Token mixers are standard GQA attention
//! (optional bias, q/k norms, output gate), DeepSeek's multi-head latent attention (with
//! DeepSeek-V3.2's sparse indexer or LongCat's latent scaling), or Gated DeltaNet linear
//! attention (Qwen3-Next); feed-forwards are dense SwiGLU or routed experts. Each
//! architecture file assembles these from its checkpoint.

use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softmax};

use crate::delta_net::{DeltaState, GatedDeltaNet};
use crate::dsa::Indexer;
use crate::layers::{
    Expert, Linear, Mlp, RmsNorm, Routing, apply_rope, apply_rope_interleaved, attention_mask,
    causal_attention, dispatch_experts, masked_attention, to_rows,
};
use crate::rope::Rope;
use crate::{Arch, HfConfig};
use ember_nn::topk_indices;

/// A loaded teacher. Its pieces are the crate's own; callers see the config, the
/// vocabulary size and the forward passes.
pub struct Teacher {
    pub config: HfConfig,
    pub(crate) embed_tokens: Tensor<2>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: RmsNorm,
    /// `[hidden -> vocab]`; the transposed embedding when tied.
    pub(crate) lm_head: Linear,
    /// Rotary embedding shared by every layer.
    pub(crate) rope: Rope,
}

/// One decoder layer.
pub enum Layer {
    /// `x += mixer(norm(x)); x += ffn(norm(x))`: every architecture but LongCat-Flash.
    PreNorm(Block),
    /// LongCat-Flash: two pre-norm blocks (MLA + dense MLP each); the MoE reads the first
    /// block's post-attention norm output and its result joins the residual at the end.
    Shortcut { blocks: [Block; 2], moe: MoeBlock },
}

impl Layer {
    /// The layer's routed feed-forwards.
    pub fn moe_blocks(&self) -> Vec<&MoeBlock> {
        fn of(b: &Block) -> Option<&MoeBlock> {
            match &b.ffn {
                FeedForward::Moe(m) => Some(m),
                FeedForward::Dense(_) => None,
            }
        }
        match self {
            Layer::PreNorm(b) => of(b).into_iter().collect(),
            Layer::Shortcut { blocks, moe } => blocks
                .iter()
                .filter_map(of)
                .chain(std::iter::once(moe))
                .collect(),
        }
    }
}

/// `x += mixer(input_layernorm(x)); x += ffn(post_attention_layernorm(x))`.
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub ffn: FeedForward,
}

/// The token mixer of a block.
pub enum Attention {
    Standard(StandardAttention),
    Latent(LatentAttention),
    /// Linear attention (Qwen3-Next).
    DeltaNet(GatedDeltaNet),
}

/// GQA attention; `bias` on q/k/v (Qwen2), RMSNorm on q and k before RoPE, per head
/// (Qwen3, GLM-4.5) or over the whole projection (MiniMax-M2); optionally a sigmoid output
/// gate from a second half of each query head (Qwen3-Next).
pub struct StandardAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    /// q/k norms over all heads at once (`[heads * head_dim]` weights) rather than per head.
    pub qk_norm_over_heads: bool,
    /// `q_proj` gives `[query, gate]` per head; the output is multiplied by `sigmoid(gate)`.
    pub output_gate: bool,
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
    /// Factor on the queries (LongCat: `sqrt(hidden / q_lora_rank)`; else 1).
    pub q_scale: f64,
    /// Factor on the normalised key/value latent (LongCat: `sqrt(hidden / kv_lora_rank)`).
    pub kv_scale: f64,
    /// DeepSeek-V3.2's sparse-attention indexer (needs the low-rank query path).
    pub indexer: Option<Indexer>,
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
    /// Router `[hidden, experts]` (identity experts included).
    pub gate: Linear,
    pub experts: Vec<Expert>,
    pub shared_experts: Option<Mlp>,
    /// Qwen3-Next: the shared expert's output is scaled by `sigmoid(x . w)`, `w` `[hidden, 1]`.
    pub shared_expert_gate: Option<Linear>,
    pub top_k: usize,
    pub router: Router,
}

pub enum Router {
    /// Softmax over all experts, top-k, optionally renormalised (Qwen3-MoE, Mixtral).
    Softmax { norm_topk_prob: bool },
    /// LongCat-Flash: softmax over all experts; the choice on probabilities + correction
    /// bias; weights the un-biased probabilities times `scale`, not renormalised.
    SoftmaxBiased { bias: Vec<f32>, scale: f32 },
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
        self.lm_head.d_out()
    }

    /// Logits `[b, t, vocab]` (float32 whatever the compute dtype) at every position. `pad` (`[b, t]`, true = padding) masks
    /// padded keys; with right padding, valid positions are unaffected by the padding.
    pub fn forward(&self, input_ids: Tensor<2, Int>, pad: Option<&Tensor<2, Bool>>) -> Tensor<3> {
        self.run(input_ids, pad, None)
    }

    /// An empty cache for [`Teacher::forward_cached`].
    pub fn new_cache(&self) -> KvCache {
        let mixers = self
            .layers
            .iter()
            .map(|l| match l {
                Layer::PreNorm(_) => 1,
                Layer::Shortcut { .. } => 2,
            })
            .sum();
        KvCache {
            mixers: (0..mixers).map(|_| MixerState::default()).collect(),
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
        let ctx = Context { rope: &rope, pad };
        let mut states = cache.as_mut().map(|c| c.mixers.iter_mut());
        let mut next = || {
            states
                .as_mut()
                .map(|s| s.next().expect("one state per mixer"))
        };
        for layer in &self.layers {
            x = match layer {
                Layer::PreNorm(block) => block.forward(x, &ctx, next()).0,
                Layer::Shortcut { blocks, moe } => {
                    let (x1, h) = blocks[0].forward(x, &ctx, next());
                    let shortcut = moe.forward(h);
                    blocks[1].forward(x1, &ctx, next()).0 + shortcut
                }
            };
        }
        if let Some(c) = cache {
            c.len += t;
        }
        let x = self.norm.forward(x);
        self.lm_head
            .forward_rows(x.reshape([b * t, d]))
            .reshape([b, t, self.vocab_size()])
    }
}

/// What every token mixer of one forward pass shares.
struct Context<'a> {
    /// `(cos, sin)` of the pass's positions, `[t, rotary dims]`.
    rope: &'a (Tensor<2>, Tensor<2>),
    pad: Option<&'a Tensor<2, Bool>>,
}

/// What each token mixer keeps of the positions decoded so far, for
/// [`Teacher::forward_cached`].
pub struct KvCache {
    mixers: Vec<MixerState>,
    /// Positions held.
    pub len: usize,
}

/// One token mixer's cache: keys and values (`[b, heads, positions, dim]`, after RoPE), the
/// sparse indexer's keys, or a Gated DeltaNet's conv and recurrent state.
#[derive(Default)]
struct MixerState {
    keys: Option<Tensor<4>>,
    values: Option<Tensor<4>>,
    index_keys: Option<Tensor<4>>,
    delta: Option<DeltaState>,
}

/// `x` appended (along the positions, dim 2) to what `slot` holds, which then holds the result.
fn extend(slot: Option<&mut Option<Tensor<4>>>, x: Tensor<4>) -> Tensor<4> {
    let Some(slot) = slot else {
        return x;
    };
    let all = match slot.take() {
        Some(prev) => Tensor::cat(vec![prev, x], 2),
        None => x,
    };
    *slot = Some(all.clone());
    all
}

/// Append the new keys/values to a mixer's cache (if any) and return all of them.
fn extend_kv(state: Option<&mut MixerState>, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
    match state {
        Some(s) => (extend(Some(&mut s.keys), k), extend(Some(&mut s.values), v)),
        None => (k, v),
    }
}

impl Block {
    /// The block's output, and the post-attention norm's output (what LongCat's MoE reads).
    fn forward(
        &self,
        x: Tensor<3>,
        ctx: &Context<'_>,
        state: Option<&mut MixerState>,
    ) -> (Tensor<3>, Tensor<3>) {
        let h = self.input_layernorm.forward(x.clone());
        let x = x + self.attn.forward(h, ctx, state);
        let h = self.post_attention_layernorm.forward(x.clone());
        (x + self.ffn.forward(h.clone()), h)
    }
}

impl Attention {
    fn forward(
        &self,
        x: Tensor<3>,
        ctx: &Context<'_>,
        state: Option<&mut MixerState>,
    ) -> Tensor<3> {
        match self {
            Attention::Standard(a) => a.forward(x, ctx, state),
            Attention::Latent(a) => a.forward(x, ctx, state),
            Attention::DeltaNet(a) => a.forward(x, ctx.pad, state.map(|s| &mut s.delta)),
        }
    }
}

impl StandardAttention {
    fn forward(
        &self,
        x: Tensor<3>,
        ctx: &Context<'_>,
        state: Option<&mut MixerState>,
    ) -> Tensor<3> {
        let (cos, sin) = ctx.rope;
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
        let (q, gate) = if self.output_gate {
            let qg = self.q_proj.forward(x.clone()).reshape([b, t, nh, 2 * hd]);
            (
                qg.clone().narrow(3, 0, hd).reshape([b, t, nh * hd]),
                Some(qg.narrow(3, hd, hd).reshape([b, t, nh * hd])),
            )
        } else {
            (self.q_proj.forward(x.clone()), None)
        };
        let q = apply_rope(heads(q, nh, &self.q_norm), cos, sin);
        let k = apply_rope(
            heads(self.k_proj.forward(x.clone()), nkv, &self.k_norm),
            cos,
            sin,
        );
        let v = heads(self.v_proj.forward(x), nkv, &None);
        let (k, v) = extend_kv(state, k, v);
        let scale = 1.0 / (hd as f64).sqrt();
        let y = causal_attention(q, k, v, scale, ctx.pad, self.sliding_window);
        let y = y.swap_dims(1, 2).reshape([b, t, nh * hd]);
        let y = match gate {
            Some(g) => y * sigmoid(g),
            None => y,
        };
        self.o_proj.forward(y)
    }
}

impl LatentAttention {
    fn forward(
        &self,
        x: Tensor<3>,
        ctx: &Context<'_>,
        mut state: Option<&mut MixerState>,
    ) -> Tensor<3> {
        let (cos, sin) = ctx.rope;
        let [b, t, _] = x.dims();
        let (nh, nope, rope_d, vd) = (
            self.num_heads,
            self.qk_nope_head_dim,
            self.qk_rope_head_dim,
            self.v_head_dim,
        );
        let qk_d = nope + rope_d;
        let (q, q_latent) = match &self.q {
            QueryPath::Direct(q) => (q.forward(x.clone()), None),
            QueryPath::LowRank { a, norm, b: qb } => {
                let latent = norm.forward(a.forward(x.clone()));
                (qb.forward(latent.clone()), Some(latent))
            }
        };
        let q = if self.q_scale != 1.0 {
            q.mul_scalar(self.q_scale)
        } else {
            q
        };
        let q = q.reshape([b, t, nh, qk_d]).swap_dims(1, 2);
        let q_nope = q.clone().narrow(3, 0, nope);
        let q_pe = q.narrow(3, nope, rope_d);

        let ckv = self.kv_a_proj_with_mqa.forward(x.clone());
        let compressed = ckv.clone().narrow(2, 0, self.kv_lora_rank);
        let k_pe = ckv
            .narrow(2, self.kv_lora_rank, rope_d)
            .reshape([b, 1, t, rope_d]);
        let latent = self.kv_a_layernorm.forward(compressed);
        let latent = if self.kv_scale != 1.0 {
            latent.mul_scalar(self.kv_scale)
        } else {
            latent
        };
        let kv = self
            .kv_b_proj
            .forward(latent)
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
        let (k, v) = extend_kv(state.as_deref_mut(), k, v);
        let y = match &self.indexer {
            None => causal_attention(q, k, v, self.softmax_scale, ctx.pad, None),
            Some(indexer) => {
                let keys = indexer.keys(x.clone(), cos, sin);
                let keys = extend(state.map(|s| &mut s.index_keys), keys);
                let tk = k.dims()[2];
                let base = attention_mask(b, t, tk, ctx.pad, None, &x.device());
                let latent = q_latent.expect("the indexer is only built with a query latent");
                let mask = indexer.restrict(x, latent, keys, (cos, sin), base);
                masked_attention(q, k, v, self.softmax_scale, Some(mask))
            }
        };
        self.o_proj
            .forward(y.swap_dims(1, 2).reshape([b, t, nh * vd]))
    }
}

impl FeedForward {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let x2 = x.reshape([b * t, d]);
        let y = match self {
            FeedForward::Dense(mlp) => mlp.forward_rows(x2),
            FeedForward::Moe(moe) => moe.forward_rows(x2),
        };
        y.reshape([b, t, d])
    }
}

impl MoeBlock {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        self.forward_rows(x.reshape([b * t, d])).reshape([b, t, d])
    }

    fn forward_rows(&self, x: Tensor<2>) -> Tensor<2> {
        // router in float32, as HF does
        let logits = self.gate.matmul_f32(x.clone());
        let routing = match &self.router {
            Router::Softmax { norm_topk_prob } => {
                softmax_routing(to_rows(softmax(logits, 1)), self.top_k, *norm_topk_prob)
            }
            Router::SoftmaxBiased { bias, scale } => {
                biased_routing(to_rows(softmax(logits, 1)), bias, self.top_k, *scale)
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
        let Some(shared) = &self.shared_experts else {
            return routed;
        };
        let y = shared.forward_rows(x.clone());
        let y = match &self.shared_expert_gate {
            Some(gate) => {
                let dims = y.dims();
                y * sigmoid(gate.forward_rows(x)).expand(dims)
            }
            None => y,
        };
        routed + y
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

/// Top-k of `probs + bias`; weights the un-biased probabilities times `scale` (LongCat-Flash).
pub fn biased_routing(probs: Vec<Vec<f32>>, bias: &[f32], k: usize, scale: f32) -> Routing {
    let mut experts = Vec::with_capacity(probs.len());
    let mut weights = Vec::with_capacity(probs.len());
    for p in probs {
        let biased: Vec<f32> = p.iter().zip(bias).map(|(a, b)| a + b).collect();
        let idx = topk_indices(&biased, k);
        weights.push(idx.iter().map(|&i| p[i] * scale).collect());
        experts.push(idx);
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
