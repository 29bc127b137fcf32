//! The rotary-embedding angles every engine rotates by, computed once here so the CPU engine, the
//! GPU engine and the trainer turn the same positions by the same amounts.

/// `pos * theta^(-2i / head_dim)` in f64 for positions `0..positions` and pairs
/// `0..head_dim / 2`, position-major (`[pos][i]`).
pub fn angles(head_dim: usize, theta: f32, positions: usize) -> impl Iterator<Item = f64> {
    let half = head_dim / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| 1.0 / f64::from(theta).powf(2.0 * i as f64 / head_dim as f64))
        .collect();
    (0..positions * half).map(move |k| (k / half) as f64 * inv_freq[k % half])
}

#[cfg(test)]
mod tests {
    #[test]
    fn angles_grow_with_position_and_shrink_with_the_pair_index() {
        let a: Vec<f64> = super::angles(4, 10_000.0, 3).collect();
        // head_dim 4: frequencies 1 and 10000^(-1/2) = 0.01.
        let expected = [0.0, 0.0, 1.0, 0.01, 2.0, 0.02];
        assert_eq!(a.len(), expected.len());
        for (x, y) in a.iter().zip(expected) {
            assert!((x - y).abs() < 1e-12, "{a:?}");
        }
    }
}
