//! Grouped-query attention: key/value heads shared by groups of query heads.

use burn::prelude::*;

/// `[b, kv, t, d] -> [b, kv * n_rep, t, d]`, each kv head repeated for its query group
/// (HF `repeat_kv`, i.e. repeat_interleave on the head axis).
pub fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, h, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, h, n_rep, t, d])
        .reshape([b, h * n_rep, t, d])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kv_head_serves_its_query_group() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1f32, 2., 3., 4.], [1, 2, 1, 2]),
            &device,
        );
        let y = repeat_kv(x, 2).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(y, vec![1., 2., 1., 2., 3., 4., 3., 4.]);
    }
}
