//! Choosing the next token from logits: greedy, or top-k with temperature from a
//! caller-seeded generator (no_std, no allocation).

/// A small, fast, seedable generator (SplitMix64); the same seed gives the same
/// tokens on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub const fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The index of the largest logit (the first one on ties; NaN never wins).
pub fn greedy(logits: &[f32]) -> u32 {
    crate::kernels::argmax(logits)
}

/// Samples among the `k` largest logits (at most `K`), with probabilities
/// `softmax(logit / temperature)`. `temperature <= 0` or `k <= 1` is greedy.
pub fn top_k<const K: usize>(logits: &[f32], k: usize, temperature: f32, rng: &mut Rng) -> u32 {
    let k = k.min(K).min(logits.len());
    if k <= 1 || temperature.is_nan() || temperature <= 0.0 {
        return greedy(logits);
    }
    // Keep the k best, sorted descending (insertion into a small array).
    let mut best: heapless::Vec<(f32, u32), K> = heapless::Vec::new();
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.len() == k && v <= best[k - 1].0 {
            continue;
        }
        if best.len() == k {
            best.pop();
        }
        let at = best.iter().position(|(b, _)| v > *b).unwrap_or(best.len());
        let _ = best.insert(at, (v, i as u32));
    }
    let Some(&(max, first)) = best.first() else {
        return 0;
    };
    let total: f32 = best
        .iter()
        .map(|(v, _)| libm::expf((v - max) / temperature))
        .sum();
    let mut r = rng.next_f32() * total;
    for &(v, i) in &best {
        r -= libm::expf((v - max) / temperature);
        if r < 0.0 {
            return i;
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_max() {
        assert_eq!(greedy(&[0.1, 3.0, -1.0, 3.0]), 1);
        assert_eq!(greedy(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn top_k_stays_in_top_k_and_follows_probabilities() {
        let logits = [0.0, 5.0, 4.0, -3.0, 4.5];
        let mut rng = Rng::new(7);
        let mut counts = [0u32; 5];
        for _ in 0..20_000 {
            counts[top_k::<8>(&logits, 2, 1.0, &mut rng) as usize] += 1;
        }
        assert_eq!(counts[0] + counts[2] + counts[3], 0);
        // p(1) / p(4) = e^0.5 ≈ 1.65
        let ratio = counts[1] as f32 / counts[4] as f32;
        assert!((ratio - 1.6487).abs() < 0.1, "ratio {ratio}");
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: std::vec::Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..20)
                .map(|_| top_k::<16>(&logits, 10, 0.8, &mut rng))
                .collect::<std::vec::Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
