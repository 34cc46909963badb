//! Llama-style decoder with HF module names (`model.layers.N.self_attn.q_proj`, ...),
//! so the HF checkpoint keys map onto Burn parameter paths with no remapping table.
//! Reference: transformers `models/llama/modeling_llama.py`.

use burn::module::Module;
use burn::nn::{
    Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig, RmsNorm, RmsNormConfig,
};
use burn::prelude::*;
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::StudentConfig;
use crate::fused::causal_attention;
use ember_nn::{apply_rope, repeat_kv, rope_tables};

/// The full causal LM: `model` (embeddings, layers, final norm) plus `lm_head`
/// (absent when embeddings are tied).
#[derive(Module, Debug)]
pub struct Student {
    pub model: LlamaModel,
    pub lm_head: Option<Linear>,
    pub rope_theta: f64,
    pub head_dim: usize,
}

#[derive(Module, Debug)]
pub struct LlamaModel {
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
}

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// Keys and values of every layer for incremental decoding, `[b, kv_heads, t, head_dim]`,
/// and, for a batch of prompts of different lengths, which cached positions are padding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// `[b, positions]`, true where the position is padding that no real token may attend
    /// to; positions past its width (tokens added later) are real.
    padding: Option<Tensor<2, Bool>>,
}

impl KvCache {
    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dims()[2])
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty cache for a batch whose rows start with `pad[r]` padding tokens (prompts
    /// left-padded to one length): the padding is hidden from every real token, so each
    /// row decodes as it would alone (RoPE depends only on relative positions).
    pub fn left_padded(pad: &[usize], width: usize, device: &Device) -> Self {
        let mask: Vec<bool> = pad
            .iter()
            .flat_map(|&p| (0..width).map(move |j| j < p))
            .collect();
        Self {
            layers: Vec::new(),
            padding: Some(Tensor::from_data(
                TensorData::new(mask, [pad.len(), width]),
                device,
            )),
        }
    }

    /// The attention mask `[b, 1, t, start + t]` of `t` new queries after `start` cached
    /// positions (true = hidden): future keys (causality is in the mask, so backends whose
    /// causal flag cannot be combined with a mask, like libtorch's, read it the same) and
    /// padded keys, except each position's own key, so that a padding query still has one
    /// key and no row of the softmax is empty.
    fn attention_mask(&self, start: usize, t: usize) -> Option<Tensor<4, Bool>> {
        let pad = self.padding.as_ref()?;
        let [b, width] = pad.dims();
        let total = start + t;
        let device = pad.device();
        let keys = if width >= total {
            pad.clone().narrow(1, 0, total)
        } else {
            Tensor::cat(
                vec![
                    pad.clone(),
                    Tensor::<2, Bool>::from_data(
                        TensorData::new(vec![false; b * (total - width)], [b, total - width]),
                        &device,
                    ),
                ],
                1,
            )
        };
        let (own, future): (Vec<bool>, Vec<bool>) = (0..t)
            .flat_map(|i| (0..total).map(move |j| (j == start + i, j > start + i)))
            .unzip();
        let grid = |v: Vec<bool>| {
            Tensor::<2, Bool>::from_data(TensorData::new(v, [t, total]), &device)
                .unsqueeze::<4>()
                .expand([b, 1, t, total])
        };
        let keys = keys.reshape([b, 1, 1, total]).expand([b, 1, t, total]);
        Some(keys.bool_and(grid(own).bool_not()).bool_or(grid(future)))
    }
}

impl StudentConfig {
    /// Build a randomly initialised student on `device`.
    pub fn init(&self, device: &Device) -> Student {
        let init = Initializer::Normal {
            mean: 0.0,
            std: self.initializer_range,
        };
        let linear = |i, o| {
            LinearConfig::new(i, o)
                .with_bias(false)
                .with_initializer(init.clone())
                .init(device)
        };
        let norm = || {
            RmsNormConfig::new(self.hidden_size)
                .with_epsilon(self.rms_norm_eps)
                .init(device)
        };
        let (h, hd) = (self.hidden_size, self.head_dim);
        let layers = (0..self.num_hidden_layers)
            .map(|_| DecoderLayer {
                self_attn: Attention {
                    q_proj: linear(h, self.num_attention_heads * hd),
                    k_proj: linear(h, self.num_key_value_heads * hd),
                    v_proj: linear(h, self.num_key_value_heads * hd),
                    o_proj: linear(self.num_attention_heads * hd, h),
                    num_heads: self.num_attention_heads,
                    num_kv_heads: self.num_key_value_heads,
                    head_dim: hd,
                },
                mlp: Mlp {
                    gate_proj: linear(h, self.intermediate_size),
                    up_proj: linear(h, self.intermediate_size),
                    down_proj: linear(self.intermediate_size, h),
                },
                input_layernorm: norm(),
                post_attention_layernorm: norm(),
            })
            .collect();
        Student {
            model: LlamaModel {
                embed_tokens: EmbeddingConfig::new(self.vocab_size, h)
                    .with_initializer(init.clone())
                    .init(device),
                layers,
                norm: norm(),
            },
            lm_head: (!self.tie_word_embeddings).then(|| linear(h, self.vocab_size)),
            rope_theta: self.rope_theta,
            head_dim: hd,
        }
    }
}

impl Student {
    /// Logits `[b, t, vocab]` for every position of `input_ids: [b, t]`.
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let hidden = self.forward_hidden(input_ids, None);
        self.lm_logits(hidden)
    }

    /// Logits for `input_ids` continuing the sequence held in `cache`, which is extended.
    pub fn forward_cached(&self, input_ids: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        let hidden = self.forward_hidden(input_ids, Some(cache));
        self.lm_logits(hidden)
    }

    /// Final hidden states `[b, t, hidden]` (after the last norm).
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<2, Int>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let device = input_ids.device();
        let t = input_ids.dims()[1];
        let start = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let (cos, sin) = rope_tables(start, t, self.head_dim, self.rope_theta, &device);
        let mut x = self.model.embed_tokens.forward(input_ids);
        let mut mask = None;
        if let Some(c) = cache.as_mut() {
            c.layers.resize(self.model.layers.len(), None);
            mask = c.attention_mask(start, t);
        }
        for (i, layer) in self.model.layers.iter().enumerate() {
            let slot = cache.as_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, &cos, &sin, slot, mask.as_ref());
        }
        self.model.norm.forward(x)
    }

    /// Project hidden states onto the vocabulary (through the tied embedding if there is no head).
    pub fn lm_logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => hidden.matmul(
                self.model
                    .embed_tokens
                    .weight
                    .val()
                    .transpose()
                    .unsqueeze::<3>(),
            ),
        }
    }

    /// The output projection as `[hidden, vocab]` (`logits = hidden @ weight`): the head's
    /// weight, or the transposed embedding when they are tied.
    pub fn head_weight(&self) -> Tensor<2> {
        match &self.lm_head {
            Some(head) => head.weight.val(),
            None => self.model.embed_tokens.weight.val().transpose(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.model.embed_tokens.weight.shape().dims::<2>()[0]
    }
}

impl DecoderLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
        mask: Option<&Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), cos, sin, cache, mask);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

impl Attention {
    fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
        mask: Option<&Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |y: Tensor<3>, n| y.reshape([b, t, n, hd]).swap_dims(1, 2);
        let q = apply_rope(heads(self.q_proj.forward(x.clone()), nh), cos, sin);
        let mut k = apply_rope(heads(self.k_proj.forward(x.clone()), nkv), cos, sin);
        let mut v = heads(self.v_proj.forward(x), nkv);
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.take() {
                k = Tensor::cat(vec![pk, k], 2);
                v = Tensor::cat(vec![pv, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let (k, v) = (repeat_kv(k, nh / nkv), repeat_kv(v, nh / nkv));
        let y = if q.device().is_autodiff() && k.dims()[2] == t && mask.is_none() {
            // training: one graph node with a hand-derived backward pass
            causal_attention(q, k, v)
        } else {
            // Causal mask aligned bottom-right, so cached decoding attends to the whole prefix;
            // a padding mask carries causality itself and goes in as an additive bias (0 or
            // -1e9): burn-tch hands boolean masks to libtorch, whose `true` means "attend",
            // the opposite of Burn's, while every backend adds a bias the same way.
            let options = AttentionModuleOptions {
                is_causal: mask.is_none(),
                ..Default::default()
            };
            let bias = mask.map(|m| {
                let [_, _, tq, tk] = m.dims();
                m.clone()
                    .expand([b, nh, tq, tk])
                    .float()
                    .mul_scalar(-1e9)
                    .cast(q.dtype())
            });
            attention(q, k, v, None, bias, options)
        };
        self.o_proj
            .forward(y.swap_dims(1, 2).reshape([b, t, nh * hd]))
    }
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down_proj
            .forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}
