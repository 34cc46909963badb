//! Causal self-attention with a hand-derived backward pass, for training.
//!
//! Under Burn's autodiff, `burn::tensor::module::attention` is composed from single ops
//! (scale, mask, a softmax built from max, sub, exp, sum and div, two matmuls), and each
//! keeps its inputs and runs its own backward pass over the `[b, h, t, t]` scores. This op
//! keeps the probabilities `P` of its forward pass and writes the three gradients directly:
//!
//! ```text
//! dV = Pᵀ dO      dP = dO Vᵀ      dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale
//! dQ = dS K       dK = dSᵀ Q
//! ```
//!
//! It is a Burn backend extension: the plain backends run the forward only (the same ops),
//! and `Autodiff<B>` records one graph node whose backward is the formulas above.

// burn-tch (LibTorch) is deprecated upstream but is the CUDA-through-libtorch backend here.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;

#[backend_extension(
    Flex,
    LibTorch: cfg(feature = "tch"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait TrainingAttention: Backend {
    /// `softmax(q kᵀ · scale + bias) v` for `q, k, v: [b, h, t, d]` and an additive
    /// `bias: [1, 1, t, t]` (0 where a query may attend, -inf elsewhere).
    fn biased_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        attention_forward::<Self>(q, k, v, bias, scale).0
    }
}

impl TrainingAttention for burn::backend::Flex {}
#[cfg(feature = "tch")]
impl TrainingAttention for burn::backend::LibTorch {}
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl TrainingAttention for burn::backend::Cube {}

/// The output and the probabilities `P`.
fn attention_forward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    bias: FloatTensor<B>,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let scores = B::float_matmul(q, B::float_swap_dims(k, 2, 3));
    let scores = B::float_add(B::float_mul_scalar(scores, scale.into()), bias);
    let p = B::softmax(scores, 3);
    (B::float_matmul(p.clone(), v), p)
}

/// `(dQ, dK, dV)` from the output gradient `g`.
fn attention_backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    p: FloatTensor<B>,
    g: FloatTensor<B>,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let dv = B::float_matmul(B::float_swap_dims(p.clone(), 2, 3), g.clone());
    let dp = B::float_matmul(g, B::float_swap_dims(v, 2, 3));
    let row = B::float_sum_dim(B::float_mul(p.clone(), dp.clone()), 3);
    let ds = B::float_mul_scalar(B::float_mul(p, B::float_sub(dp, row)), scale.into());
    let dq = B::float_matmul(ds.clone(), k);
    let dk = B::float_matmul(B::float_swap_dims(ds, 2, 3), q);
    (dq, dk, dv)
}

impl<B: Backend, C: CheckpointStrategy> TrainingAttention for Autodiff<B, C> {
    fn biased_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct BiasedAttention;

        impl<B: Backend> Backward<B, 3> for BiasedAttention {
            /// q, k, v, the probabilities, the scale
            type State = (
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                f64,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_q, node_k, node_v] = ops.parents;
                let g = grads.consume::<B>(&ops.node);
                let (q, k, v, p, scale) = ops.state;
                let (dq, dk, dv) = attention_backward::<B>(q, k, v, p, g, scale);
                for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        let bias = bias.into_primitive();
        match BiasedAttention
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
                let (out, p) = attention_forward::<B>(q.clone(), k.clone(), v.clone(), bias, scale);
                prep.finish((q, k, v, p, scale), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(
                attention_forward::<B>(
                    q.into_primitive(),
                    k.into_primitive(),
                    v.into_primitive(),
                    bias,
                    scale,
                )
                .0,
            ),
        }
    }
}

/// Causal self-attention of `q, k, v: [b, h, t, d]` (as many keys as queries), scaled by
/// `1 / sqrt(d)`, through [`TrainingAttention`].
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let [_, _, t, d] = q.dims();
    let mut bias = vec![0f32; t * t];
    for i in 0..t {
        bias[i * t + i + 1..(i + 1) * t].fill(f32::NEG_INFINITY);
    }
    let bias = Tensor::<4>::from_data(TensorData::new(bias, [1, 1, t, t]), &q.device());
    let bias = match q.dtype() {
        DType::F32 => bias,
        dtype => bias.cast(dtype),
    };
    Tensor::from_dispatch(<Dispatch as TrainingAttention>::biased_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        bias.into_dispatch(),
        1.0 / (d as f64).sqrt(),
    ))
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;

    use super::*;

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// Output and gradients of q, k, v under `f`, for a fixed random upstream gradient.
    fn run(
        f: impl Fn(Tensor<4>, Tensor<4>, Tensor<4>) -> Tensor<4>,
        inputs: &[Tensor<4>; 4],
    ) -> Vec<Tensor<4>> {
        let [q, k, v, w] = inputs.clone().map(|t| t.detach());
        let (q, k, v) = (q.require_grad(), k.require_grad(), v.require_grad());
        let out = f(q.clone(), k.clone(), v.clone());
        let grads = (out.clone() * w).sum().backward();
        let g = |t: &Tensor<4>| Tensor::from_inner(t.grad(&grads).expect("gradient"));
        vec![out.inner(), g(&q), g(&k), g(&v)]
    }

    #[test]
    fn matches_burns_composed_attention_values_and_gradients() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let inputs = [(); 4]
            .map(|_| Tensor::<4>::random([2, 3, 7, 8], Distribution::Normal(0.0, 1.0), &device));
        let ours = run(causal_attention, &inputs);
        let burn = run(
            |q, k, v| {
                let options = AttentionModuleOptions {
                    is_causal: true,
                    ..Default::default()
                };
                attention(q, k, v, None, None, options)
            },
            &inputs,
        );
        for (name, (a, b)) in ["output", "dq", "dk", "dv"]
            .iter()
            .zip(ours.into_iter().zip(burn))
        {
            let d = max_diff(a, b);
            assert!(d < 1e-5, "{name}: max diff {d}");
        }
    }
}
