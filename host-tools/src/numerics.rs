//! Small numeric helpers shared by the subcommands.

/// log-softmax of one row of logits, in f64.
pub fn log_softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
    let lse = x.iter().map(|v| (*v as f64 - m).exp()).sum::<f64>().ln() + m;
    x.iter().map(|v| *v as f64 - lse).collect()
}

/// Cross-entropy loss of predicting `target` from `logits` (`-log_softmax[target]`, the
/// same bits, without the row of probabilities: ablation takes one per position per run).
pub fn loss(logits: &[f32], target: u32) -> f64 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
    let lse = logits
        .iter()
        .map(|v| (*v as f64 - m).exp())
        .sum::<f64>()
        .ln()
        + m;
    lse - logits[target as usize] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_normalizes() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f64 = lp.iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!((loss(&[0.0, 0.0], 1) - 2f64.ln()).abs() < 1e-12);
        let x = [0.3f32, -2.0, 7.5, 1.25];
        for t in 0..4 {
            assert_eq!(loss(&x, t as u32), -log_softmax(&x)[t]);
        }
    }
}
