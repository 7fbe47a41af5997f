//! Attention-head detection from attention patterns: TransformerLens 3.9's
//! `head_detector.detect_head` with the `"mul"` error measure, reproduced exactly.
//!
//! - Detection patterns (all [seq, seq], 0/1, lower triangular), for tokens `t`:
//!   - previous token: `P[q][q-1] = 1` for `q >= 1`;
//!   - duplicate token: `P[q][k] = 1` iff `k < q` and `t[k] == t[q]` (TL zeroes the
//!     diagonal, then keeps the lower triangle);
//!   - induction: the duplicate pattern shifted one column right, first column zero:
//!     `P[q][k] = 1` iff `1 <= k <= q` and `t[k-1] == t[q]` with `k-1 < q` (so `k == q`
//!     counts when `t[q-1] == t[q]`, as in TL).
//! - Score of one head on one sequence: `sum(A * P) / sum(A)`, where `A` is the head's
//!   pattern [q_pos, k_pos] after the optional exclusions (TL's defaults: both off):
//!   `exclude_bos` zeroes column 0 of `A`, `exclude_current_token` zeroes its diagonal —
//!   in both numerator and denominator. `sum(A) == 0` gives NaN, as in TL.
//! - Several sequences: TL runs each one separately and takes the mean of the per-head
//!   scores (not a pooled ratio); [`detect_batch`] does the same.
//! - TL takes `tokens = model.to_tokens(seq)`, which by default starts with BOS: pass the
//!   token sequence exactly as the model saw it, BOS included. TL requires
//!   `1 < seq_len < n_ctx`; the length check against `n_ctx` is the caller's.

use nalgebra::DMatrix;
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::HeadDetection;
use crate::{Error, Result};

/// Attention patterns of every head for one sequence: `[layer][head]`, each [q_pos, k_pos].
pub type LayerPatterns = [Vec<DMatrix<f32>>];

/// The three head types of TL's head detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    PreviousToken,
    DuplicateToken,
    Induction,
}

impl HeadKind {
    pub const ALL: [HeadKind; 3] = [
        HeadKind::PreviousToken,
        HeadKind::DuplicateToken,
        HeadKind::Induction,
    ];

    /// TL's head name (`"previous_token_head"`, ...).
    pub fn tl_name(self) -> &'static str {
        match self {
            HeadKind::PreviousToken => "previous_token_head",
            HeadKind::DuplicateToken => "duplicate_token_head",
            HeadKind::Induction => "induction_head",
        }
    }
}

/// TL's `exclude_bos` and `exclude_current_token` (both false by default, as in TL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DetectOptions {
    pub exclude_bos: bool,
    pub exclude_current_token: bool,
}

/// The 0/1 detection pattern [seq, seq] of `kind` for `tokens` (see the module docs).
pub fn detection_pattern(kind: HeadKind, tokens: &[u32]) -> DMatrix<f64> {
    let n = tokens.len();
    match kind {
        HeadKind::PreviousToken => {
            DMatrix::from_fn(n, n, |q, k| if q >= 1 && k == q - 1 { 1.0 } else { 0.0 })
        }
        HeadKind::DuplicateToken => DMatrix::from_fn(n, n, |q, k| {
            if k < q && tokens[k] == tokens[q] {
                1.0
            } else {
                0.0
            }
        }),
        HeadKind::Induction => DMatrix::from_fn(n, n, |q, k| {
            if k >= 1 && k <= q && tokens[k - 1] == tokens[q] {
                1.0
            } else {
                0.0
            }
        }),
    }
}

/// `sum(A * P) / sum(A)` for one head's pattern `A` [q_pos, k_pos] (TL's
/// `compute_head_attention_similarity_score` with `error_measure="mul"`).
pub fn head_score(
    pattern: &DMatrix<f32>,
    detection: &DMatrix<f64>,
    opts: DetectOptions,
) -> Result<f64> {
    if !pattern.is_square() || pattern.shape() != detection.shape() {
        return Err(Error::Argument(format!(
            "attention pattern has shape {:?}, expected {:?} (square, the sequence length)",
            pattern.shape(),
            detection.shape()
        )));
    }
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for k in 0..pattern.ncols() {
        if opts.exclude_bos && k == 0 {
            continue;
        }
        for q in 0..pattern.nrows() {
            if opts.exclude_current_token && q == k {
                continue;
            }
            let a = f64::from(pattern[(q, k)]);
            num += a * detection[(q, k)];
            den += a;
        }
    }
    Ok(num / den)
}

/// Scores of every head for one sequence: `patterns[layer][head]` is the head's
/// [q_pos, k_pos] pattern (TL's `cache["pattern", layer][head]`). Returns `[layer][head]`.
pub fn detect(
    patterns: &LayerPatterns,
    tokens: &[u32],
    kind: HeadKind,
    opts: DetectOptions,
) -> Result<Vec<Vec<f64>>> {
    if tokens.len() < 2 {
        return Err(Error::Argument(format!(
            "head detection needs a sequence of at least 2 tokens, got {}",
            tokens.len()
        )));
    }
    let det = detection_pattern(kind, tokens);
    patterns
        .iter()
        .map(|layer| layer.iter().map(|a| head_score(a, &det, opts)).collect())
        .collect()
}

/// Mean over sequences of the per-sequence scores (TL's behaviour for a list of prompts).
/// Each item is `(tokens, patterns[layer][head])`.
pub fn detect_batch(
    batch: &[(&[u32], &LayerPatterns)],
    kind: HeadKind,
    opts: DetectOptions,
) -> Result<Vec<Vec<f64>>> {
    let Some((first, rest)) = batch.split_first() else {
        return Err(Error::Argument("head detection on an empty batch".into()));
    };
    let mut sum = detect(first.1, first.0, kind, opts)?;
    for (tokens, patterns) in rest {
        let s = detect(patterns, tokens, kind, opts)?;
        if s.len() != sum.len() || s.iter().zip(&sum).any(|(a, b)| a.len() != b.len()) {
            return Err(Error::Argument(
                "head detection: sequences have different numbers of layers or heads".into(),
            ));
        }
        for (acc, row) in sum.iter_mut().zip(&s) {
            for (a, v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
    }
    let n = batch.len() as f64;
    for row in &mut sum {
        for v in row {
            *v /= n;
        }
    }
    Ok(sum)
}

/// All three detectors on one sequence.
pub fn detect_all(
    patterns: &LayerPatterns,
    tokens: &[u32],
    opts: DetectOptions,
) -> Result<HeadDetection> {
    Ok(HeadDetection {
        previous_token: detect(patterns, tokens, HeadKind::PreviousToken, opts)?,
        duplicate_token: detect(patterns, tokens, HeadKind::DuplicateToken, opts)?,
        induction: detect(patterns, tokens, HeadKind::Induction, opts)?,
        tokens: tokens.to_vec(),
        options: opts,
    })
}

/// TL's induction test input: `n` tokens drawn uniformly from `low..high`, then the same
/// `n` tokens again, optionally preceded by `bos` (as `model.to_tokens` would add; the
/// ARENA/TL demos draw from the whole vocabulary after BOS). Deterministic for a seed
/// (`StdRng::seed_from_u64`, rand 0.8). Panics if `low >= high`.
pub fn repeated_random_tokens(
    n: usize,
    low: u32,
    high: u32,
    seed: u64,
    bos: Option<u32>,
) -> Vec<u32> {
    assert!(
        low < high,
        "repeated_random_tokens: empty token range {low}..{high}"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let half: Vec<u32> = (0..n).map(|_| rng.gen_range(low..high)).collect();
    let mut out = Vec::with_capacity(2 * n + 1);
    out.extend(bos);
    out.extend_from_slice(&half);
    out.extend_from_slice(&half);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A causal pattern putting all attention of each query on `f(q)`.
    fn hard(n: usize, f: impl Fn(usize) -> usize) -> DMatrix<f32> {
        DMatrix::from_fn(n, n, |q, k| if k == f(q) { 1.0 } else { 0.0 })
    }

    #[test]
    fn detection_patterns_match_tl_construction() {
        // tokens: a b a b c c
        let t = [1, 2, 1, 2, 3, 3];
        let prev = detection_pattern(HeadKind::PreviousToken, &t);
        for q in 0..6 {
            for k in 0..6 {
                assert_eq!(prev[(q, k)], if q >= 1 && k + 1 == q { 1.0 } else { 0.0 });
            }
        }
        let dup = detection_pattern(HeadKind::DuplicateToken, &t);
        let ones: Vec<(usize, usize)> = (0..6)
            .flat_map(|q| (0..6).map(move |k| (q, k)))
            .filter(|&(q, k)| dup[(q, k)] == 1.0)
            .collect();
        // Strictly earlier keys with the same token; no diagonal.
        assert_eq!(ones, vec![(2, 0), (3, 1), (5, 4)]);
        let ind = detection_pattern(HeadKind::Induction, &t);
        let ones: Vec<(usize, usize)> = (0..6)
            .flat_map(|q| (0..6).map(move |k| (q, k)))
            .filter(|&(q, k)| ind[(q, k)] == 1.0)
            .collect();
        // dup shifted right: (2,1), (3,2), (5,5) - the last is on the diagonal (t[4] == t[5]).
        assert_eq!(ones, vec![(2, 1), (3, 2), (5, 5)]);
    }

    #[test]
    fn hand_made_patterns_score_one_or_zero() {
        let n = 8;
        let opts = DetectOptions::default();
        let tokens: Vec<u32> = vec![0, 5, 6, 7, 5, 6, 7, 5];
        // Previous-token head (query 0 can only attend to itself).
        let prev = hard(n, |q| q.saturating_sub(1));
        let s = head_score(
            &prev,
            &detection_pattern(HeadKind::PreviousToken, &tokens),
            opts,
        )
        .unwrap();
        assert!((s - 7.0 / 8.0).abs() < 1e-12, "{s}");
        let s = head_score(
            &prev,
            &detection_pattern(HeadKind::PreviousToken, &tokens),
            DetectOptions {
                exclude_bos: true,
                exclude_current_token: false,
            },
        )
        .unwrap();
        assert!((s - 1.0).abs() < 1e-12, "{s}");
        // Attending to self scores 0 for every detector.
        let diag = hard(n, |q| q);
        for kind in HeadKind::ALL {
            let s = head_score(&diag, &detection_pattern(kind, &tokens), opts).unwrap();
            assert_eq!(s, 0.0, "{kind:?}");
        }
        // Excluding the current token from an all-diagonal pattern: 0/0.
        let s = head_score(
            &diag,
            &detection_pattern(HeadKind::PreviousToken, &tokens),
            DetectOptions {
                exclude_bos: false,
                exclude_current_token: true,
            },
        )
        .unwrap();
        assert!(s.is_nan());

        // Induction on a repeated sequence: period 3 after BOS; query q >= 4 attends to q - 2.
        let ind = hard(n, |q| if q >= 4 { q - 2 } else { 0 });
        let det = detection_pattern(HeadKind::Induction, &tokens);
        let s = head_score(&ind, &det, opts).unwrap();
        assert!((s - 4.0 / 8.0).abs() < 1e-12, "{s}");
        let s = head_score(
            &ind,
            &det,
            DetectOptions {
                exclude_bos: true,
                exclude_current_token: false,
            },
        )
        .unwrap();
        assert!((s - 1.0).abs() < 1e-12, "{s}");
        // Duplicate head: q >= 4 attends to q - 3.
        let dup = hard(n, |q| if q >= 4 { q - 3 } else { 0 });
        let s = head_score(
            &dup,
            &detection_pattern(HeadKind::DuplicateToken, &tokens),
            DetectOptions {
                exclude_bos: true,
                exclude_current_token: false,
            },
        )
        .unwrap();
        assert!((s - 1.0).abs() < 1e-12, "{s}");
    }

    #[test]
    fn uniform_pattern_and_batch_mean() {
        // Uniform causal attention on 4 positions, tokens all distinct:
        // previous-token mass = 1/2 + 1/3 + 1/4 over a total of 4.
        let n = 4;
        let a = DMatrix::from_fn(n, n, |q, k| if k <= q { 1.0 / (q + 1) as f32 } else { 0.0 });
        let t1 = [1u32, 2, 3, 4];
        let patterns = vec![vec![a.clone()]];
        let s = detect(
            &patterns,
            &t1,
            HeadKind::PreviousToken,
            DetectOptions::default(),
        )
        .unwrap();
        let want = (0.5 + 1.0 / 3.0 + 0.25) / 4.0;
        assert!((s[0][0] - want).abs() < 1e-7);
        // Second sequence: a hard previous-token head gets 3/4; the batch score is the mean.
        let patterns2 = [vec![hard(n, |q| q.saturating_sub(1))]];
        let b = detect_batch(
            &[(&t1[..], &patterns[..]), (&t1[..], &patterns2[..])],
            HeadKind::PreviousToken,
            DetectOptions::default(),
        )
        .unwrap();
        assert!((b[0][0] - (want + 0.75) / 2.0).abs() < 1e-7);
        assert!(detect(
            &patterns,
            &[1],
            HeadKind::Induction,
            DetectOptions::default()
        )
        .is_err());
        assert!(head_score(&a, &DMatrix::zeros(3, 3), DetectOptions::default()).is_err());
        let all = detect_all(&patterns, &t1, DetectOptions::default()).unwrap();
        assert_eq!(all.duplicate_token[0][0], 0.0);
    }

    #[test]
    fn repeated_tokens_are_seeded_and_repeated() {
        let t = repeated_random_tokens(10, 3, 50, 42, Some(0));
        assert_eq!(t.len(), 21);
        assert_eq!(t[0], 0);
        assert_eq!(t[1..11], t[11..21]);
        assert!(t[1..].iter().all(|&x| (3..50).contains(&x)));
        assert_eq!(t, repeated_random_tokens(10, 3, 50, 42, Some(0)));
        assert_ne!(t, repeated_random_tokens(10, 3, 50, 43, Some(0)));
        assert_eq!(repeated_random_tokens(2, 0, 5, 1, None).len(), 4);
        // On such a sequence a perfect induction head scores 1 with BOS excluded.
        let n = t.len();
        let ind = hard(n, |q| if q >= 11 { q - 9 } else { 0 });
        let s = head_score(
            &ind,
            &detection_pattern(HeadKind::Induction, &t),
            DetectOptions {
                exclude_bos: true,
                exclude_current_token: false,
            },
        )
        .unwrap();
        // Random halves can contain chance repeats, but the detector counts every key
        // following an earlier copy, including the intended one.
        assert!((s - 1.0).abs() < 1e-12, "{s}");
    }
}
