//! Top-k selection over host values.

/// Indices of the `k` largest values, largest first; ties go to the lower index (like
/// torch.topk on CPU). A partial sort: O(n + k log k). The one top-k of Ember: the teacher's routers
/// and recorded log-probabilities, `ember serve`, remote teachers and sampling.
pub fn topk_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let by = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, by);
        idx.truncate(k);
    }
    idx.sort_unstable_by(by);
    idx
}

#[cfg(test)]
mod tests {
    use super::topk_indices;

    #[test]
    fn largest_first_ties_to_the_lower_index() {
        let v = [0.5, 2.0, -1.0, 2.0, 0.5, 3.0];
        assert_eq!(topk_indices(&v, 3), [5, 1, 3]);
        assert_eq!(topk_indices(&v, 6), [5, 1, 3, 0, 4, 2]);
        assert_eq!(
            topk_indices(&v, 10),
            [5, 1, 3, 0, 4, 2],
            "k beyond the length"
        );
        assert!(topk_indices(&v, 0).is_empty());
        assert_eq!(
            topk_indices(&[1.0, f32::NAN, 0.0], 2),
            [1, 0],
            "NaN sorts above all, as total_cmp says"
        );
    }
}
