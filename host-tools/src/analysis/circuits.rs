//! Weight-only circuit analysis (Elhage et al. 2021), in TransformerLens's row-vector layout.
//!
//! All products are formed in f64 from the f32 weights, and vocabulary-sized matrices are
//! kept factored: `d_model`-sized OV/QK matrices as [`LowRank`] (norms from the small
//! factors), full circuits as [`FullCircuit`] (norms and eigenvalues from the model's
//! three `d_model x d_model` Gram/cross products, [`Vocab`]); entries only in the scans
//! that ask for them ([`super::scan`], blocked and parallel, and bounded by
//! [`ScanTokens`]).
//!
//! # Layer norm
//! Like TransformerLens's `model.OV`, `model.QK` and `all_composition_scores`, every
//! circuit here uses the weight matrices as stored and ignores layer norm entirely (its
//! per-position scale, its centring, and its `w`/`b` when present). For a model processed
//! with TL's `fold_ln` (LN becomes the parameter-free `LNPre`, `W_Q/W_K/W_V/W_U` are centred
//! along `d_model`) the centring is already a no-op on these products, so the circuits are
//! exact up to the positive per-position scale, which rescales a row but never reorders
//! it. For a model with an unfolded `LN` (parameters `w`, `b`) the numbers are TL's, but
//! are only an approximation of what the model computes: fold LN first.
//! Biases (`b_Q`, `b_K`, `b_V`, `b_O`, `b_U`) and positional embeddings are not part of any
//! circuit here (they do not depend on the token).

use indicatif::ProgressBar;
use nalgebra::{Complex, DMatrix};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{ChiSquared, StandardNormal};

use super::factored::{to_f64, Entry, LowRank};
use super::scan::ScanSpec;
use super::vocab::{norm_from_grams, FullCircuit, Right, Vocab};
use super::{
    BigramRow, CircuitReport, CompositionBaseline, CompositionScores, EigenStats, HeadReport,
    PathExpansion, PathTerm, Scores4, TokenScore, VirtualHead,
};
use crate::weights::Weights;
use crate::{Error, Result};

/// The default seed of the composition baseline (the paper's date; small enough to be
/// exact in any JSON reader).
pub const BASELINE_SEED: u64 = 20211222;
/// The default number of random samples of the composition baseline.
pub const BASELINE_SAMPLES: usize = 256;

/// Which later-head input an earlier head's output composes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompositionMode {
    /// Into the queries: `R = W_Q W_K^T` of the later head.
    Q,
    /// Into the keys: `R = (W_Q W_K^T)^T` of the later head.
    K,
    /// Into the values: `R = W_V W_O` of the later head.
    V,
}

/// TL's `W_V[h] @ W_O[h]` ([d_model, d_model]), factored.
pub fn ov(w: &Weights, layer: usize, head: usize) -> LowRank {
    let l = &w.layers[layer];
    LowRank::new(to_f64(&l.w_v[head]), to_f64(&l.w_o[head]))
}

/// TL's `W_Q[h] @ W_K[h]^T` ([d_model, d_model]), factored.
pub fn qk(w: &Weights, layer: usize, head: usize) -> LowRank {
    let l = &w.layers[layer];
    LowRank::new(to_f64(&l.w_q[head]), to_f64(&l.w_k[head]).transpose())
}

/// The full OV circuit `W_E W_V W_O W_U` ([d_vocab, d_vocab_out]), factored as
/// `W_E (W_V W_O) W_U`: row = source token (attended to), column = output logit.
pub fn full_ov(w: &Weights, layer: usize, head: usize) -> FullCircuit {
    let l = &w.layers[layer];
    FullCircuit::new(to_f64(&l.w_v[head]), to_f64(&l.w_o[head]), Right::Unembed)
}

/// The full QK circuit `W_E W_Q (W_E W_K)^T` ([d_vocab, d_vocab]), factored as
/// `W_E (W_Q W_K^T) W_E^T`: row = query token, column = key token.
pub fn full_qk(w: &Weights, layer: usize, head: usize) -> FullCircuit {
    let l = &w.layers[layer];
    FullCircuit::new(
        to_f64(&l.w_q[head]),
        to_f64(&l.w_k[head]).transpose(),
        Right::EmbedT,
    )
}

/// The direct path (zero-layer "bigram" term) `W_E W_U` ([d_vocab, d_vocab_out]), factored.
/// Layer norm ignored (see the module documentation); `b_U` is left out, as it adds the
/// same vector to every row.
pub fn direct_path() -> FullCircuit {
    FullCircuit {
        a: None,
        b: None,
        right: Right::Unembed,
    }
}

/// The OV circuit of the virtual head `h1 -> h2` (output of head 1 read by the values of
/// head 2, layer1 < layer2): `W_E W_OV^{h1} W_OV^{h2} W_U`, factored as
/// `W_E W_V1 (W_O1 W_V2 W_O2) W_U`.
pub fn virtual_ov(
    w: &Weights,
    (layer1, head1): (usize, usize),
    (layer2, head2): (usize, usize),
) -> FullCircuit {
    let l1 = &w.layers[layer1];
    let l2 = &w.layers[layer2];
    let b = to_f64(&l1.w_o[head1]) * to_f64(&l2.w_v[head2]) * to_f64(&l2.w_o[head2]);
    FullCircuit::new(to_f64(&l1.w_v[head1]), b, Right::Unembed)
}

/// Eigenvalues of the full OV circuit (the `d_head` eigenvalues of
/// `W_O W_U W_E W_V`, which is TL's `(W_E @ model.OV @ W_U).eigenvalues`). Needs
/// `d_vocab == d_vocab_out`.
pub fn ov_eigenvalues(v: &Vocab<'_>, layer: usize, head: usize) -> Result<Vec<Complex<f64>>> {
    let cfg = &v.w.cfg;
    if cfg.d_vocab != cfg.d_vocab_out {
        return Err(Error::Argument(format!(
            "the full OV circuit is not square (d_vocab {} != d_vocab_out {}): no eigenvalues",
            cfg.d_vocab, cfg.d_vocab_out
        )));
    }
    full_ov(v.w, layer, head).eigenvalues(v)
}

/// Copying score `Re(sum λ) / sum |λ|` (in [-1, 1]), as in TL's demo
/// (`eigenvalues.sum(-1).real / eigenvalues.abs().sum(-1)`). NaN if all λ are 0.
pub fn copying_score(eigenvalues: &[Complex<f64>]) -> f64 {
    let sum: Complex<f64> = eigenvalues.iter().sum();
    let abs: f64 = eigenvalues.iter().map(|z| z.norm()).sum();
    sum.re / abs
}

/// Copying score of every head, `[layer][head]`.
pub fn copying_scores(v: &Vocab<'_>) -> Result<Vec<Vec<f64>>> {
    (0..v.w.cfg.n_layers)
        .map(|l| {
            (0..v.w.cfg.n_heads)
                .map(|h| Ok(copying_score(&ov_eigenvalues(v, l, h)?)))
                .collect()
        })
        .collect()
}

/// Summary statistics of a spectrum; `top` eigenvalues kept (largest modulus first).
pub fn eigen_stats(eigenvalues: &[Complex<f64>], top: usize) -> EigenStats {
    let max_abs = eigenvalues.iter().map(|z| z.norm()).fold(0.0, f64::max);
    let tol = 1e-9 * max_abs;
    let (mut pos, mut neg, mut cplx, mut zero) = (0, 0, 0, 0);
    for z in eigenvalues {
        if z.norm() <= tol {
            zero += 1;
        } else if z.im.abs() > tol {
            cplx += 1;
        } else if z.re > 0.0 {
            pos += 1;
        } else {
            neg += 1;
        }
    }
    let mut sorted = eigenvalues.to_vec();
    sorted.sort_by(|a, b| {
        b.norm()
            .total_cmp(&a.norm())
            .then(b.re.total_cmp(&a.re))
            .then(b.im.total_cmp(&a.im))
    });
    sorted.truncate(top);
    let trace: f64 = eigenvalues.iter().map(|z| z.re).sum();
    let abs_sum: f64 = eigenvalues.iter().map(|z| z.norm()).sum();
    EigenStats {
        top_eigenvalues: sorted.iter().map(|z| [z.re, z.im]).collect(),
        n_positive_real: pos,
        n_negative_real: neg,
        n_complex: cplx,
        n_zero: zero,
        trace,
        abs_sum,
        trace_over_abs_sum: trace / abs_sum,
    }
}

/// Which rows (tokens) the vocabulary-sized scans read: top pairs and the
/// diagonal-argmax fraction of every full circuit, and the direct path's top next tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanTokens {
    /// No scans: no top pairs, no diagonal-argmax fraction, no bigram table.
    Off,
    /// Every token.
    All,
    /// `n` tokens evenly spaced over the vocabulary (`i * d_vocab / n`).
    Subset(usize),
    /// [`ScanTokens::All`] up to [`AUTO_FULL_SCAN_VOCAB`] tokens, else
    /// [`ScanTokens::Subset`]`(`[`AUTO_SUBSET`]`)`.
    Auto,
}

/// The largest vocabulary [`ScanTokens::Auto`] scans whole (the full scans of a 2-layer,
/// 8-head model of this vocabulary take about a second).
pub const AUTO_FULL_SCAN_VOCAB: usize = 8192;
/// Tokens [`ScanTokens::Auto`] scans in a larger vocabulary.
pub const AUTO_SUBSET: usize = 2048;

impl ScanTokens {
    /// The token ids scanned, ascending.
    pub fn tokens(&self, d_vocab: usize) -> Vec<usize> {
        match *self {
            ScanTokens::Off => Vec::new(),
            ScanTokens::All => (0..d_vocab).collect(),
            ScanTokens::Subset(n) if n >= d_vocab => (0..d_vocab).collect(),
            ScanTokens::Subset(n) => (0..n).map(|i| i * d_vocab / n).collect(),
            ScanTokens::Auto if d_vocab <= AUTO_FULL_SCAN_VOCAB => (0..d_vocab).collect(),
            ScanTokens::Auto => ScanTokens::Subset(AUTO_SUBSET).tokens(d_vocab),
        }
    }
}

/// Norm, spectrum and (when `tokens` is not empty) largest entries and diagonal-argmax
/// fraction over the rows `tokens` of one full circuit. Top-pair values are f64.
pub fn circuit_report(
    v: &Vocab<'_>,
    c: &FullCircuit,
    top_eigenvalues: usize,
    top_pairs: usize,
    tokens: &[usize],
    pb: &ProgressBar,
) -> Result<CircuitReport> {
    let square = c.nrows(v) == c.ncols(v);
    let eigen = if square {
        Some(eigen_stats(&c.eigenvalues(v)?, top_eigenvalues))
    } else {
        None
    };
    let (top_pairs, diagonal_argmax_fraction) = if tokens.is_empty() {
        (Vec::new(), None)
    } else {
        let out = c.scan(
            v,
            tokens,
            ScanSpec {
                top_pairs,
                diagonal: square,
                row_top: 0,
            },
            pb,
        );
        let top = out
            .top
            .iter()
            .map(|&(_, (row, col))| Entry {
                row,
                col,
                value: c.entry(v, row, col),
            })
            .collect();
        (
            top,
            square.then(|| out.diagonal_hits as f64 / out.rows as f64),
        )
    };
    Ok(CircuitReport {
        frobenius_norm: c.frobenius_norm(v),
        eigen,
        top_pairs,
        diagonal_argmax_fraction,
    })
}

/// Per-head OV and QK circuit reports, in order layer-major; the scans read the rows
/// `tokens` (none: no scans). `pb` advances by one per scanned block.
pub fn head_reports(
    v: &Vocab<'_>,
    top_eigenvalues: usize,
    top_pairs: usize,
    tokens: &[usize],
    pb: &ProgressBar,
) -> Result<Vec<HeadReport>> {
    let w = v.w;
    let mut out = Vec::new();
    for layer in 0..w.cfg.n_layers {
        for head in 0..w.cfg.n_heads {
            let report =
                |c: &FullCircuit| circuit_report(v, c, top_eigenvalues, top_pairs, tokens, pb);
            let ov = report(&full_ov(w, layer, head))?;
            let qk = report(&full_qk(w, layer, head))?;
            out.push(HeadReport {
                layer,
                head,
                copying: ov.eigen.as_ref().map(|e| e.trace_over_abs_sum),
                ov,
                qk,
            });
        }
    }
    Ok(out)
}

/// For every token of `tokens`, the `k` output tokens with the largest direct-path logit
/// `W_E W_U` (see [`direct_path`]); logits in f64.
pub fn bigram_top(v: &Vocab<'_>, k: usize, tokens: &[usize], pb: &ProgressBar) -> Vec<BigramRow> {
    if tokens.is_empty() || k == 0 {
        return Vec::new();
    }
    let c = direct_path();
    let out = c.scan(
        v,
        tokens,
        ScanSpec {
            row_top: k,
            ..Default::default()
        },
        pb,
    );
    tokens
        .iter()
        .zip(out.row_top)
        .map(|(&token, next)| BigramRow {
            token,
            next: next
                .into_iter()
                .map(|(t, _)| TokenScore {
                    token: t,
                    logit: c.entry(v, token, t),
                })
                .collect(),
        })
        .collect()
}

/// `||L R||_F / (||L||_F ||R||_F)`, TL's `utils.composition_scores` for one pair (TL
/// computes the norms through SVDs of the factors; the values agree to float precision).
/// NaN if either head's matrix is zero, as in TL.
pub fn composition_score(left: &LowRank, right: &LowRank) -> f64 {
    left.product_norm(right) / (left.frobenius_norm() * right.frobenius_norm())
}

fn zeros4(n_layers: usize, n_heads: usize) -> Scores4 {
    vec![vec![vec![vec![0.0; n_heads]; n_layers]; n_heads]; n_layers]
}

/// Most entries of one `[l1][h1][l2][h2]` composition table (`(n_layers n_heads)^2`):
/// 4M f64s, 32 MB per mode. The table and its work grow as the square of the heads, which
/// a small blob with very many tiny heads could make unbounded; above this the scores
/// are refused with an error instead (e.g. 64 layers x 32 heads fit).
pub const MAX_COMPOSITION_ENTRIES: usize = 1 << 22;

/// An error unless the composition tables of `n_layers x n_heads` heads fit in
/// [`MAX_COMPOSITION_ENTRIES`].
pub fn check_composition_size(n_layers: usize, n_heads: usize) -> Result<()> {
    let heads = n_layers.saturating_mul(n_heads);
    let entries = heads.saturating_mul(heads);
    if entries > MAX_COMPOSITION_ENTRIES {
        return Err(Error::Argument(format!(
            "composition scores of {heads} heads are {entries} pairs (at most \
             {MAX_COMPOSITION_ENTRIES}): too many heads for all_composition_scores"
        )));
    }
    Ok(())
}

/// TL's `model.all_composition_scores(mode)`: `[l1][h1][l2][h2]`, with L = OV of head
/// (l1, h1) and R from head (l2, h2) per `mode`; 0 unless `l1 < l2`. Refused above
/// [`MAX_COMPOSITION_ENTRIES`].
pub fn composition_scores_mode(w: &Weights, mode: CompositionMode) -> Result<Scores4> {
    let (nl, nh) = (w.cfg.n_layers, w.cfg.n_heads);
    check_composition_size(nl, nh)?;
    let left: Vec<Vec<LowRank>> = (0..nl)
        .map(|l| (0..nh).map(|h| ov(w, l, h)).collect())
        .collect();
    let right: Vec<Vec<LowRank>> = (0..nl)
        .map(|l| {
            (0..nh)
                .map(|h| match mode {
                    CompositionMode::Q => qk(w, l, h),
                    CompositionMode::K => qk(w, l, h).transpose(),
                    CompositionMode::V => left[l][h].clone(),
                })
                .collect()
        })
        .collect();
    let mut out = zeros4(nl, nh);
    for l1 in 0..nl {
        for h1 in 0..nh {
            for l2 in l1 + 1..nl {
                for h2 in 0..nh {
                    out[l1][h1][l2][h2] = composition_score(&left[l1][h1], &right[l2][h2]);
                }
            }
        }
    }
    Ok(out)
}

/// Q, K and V composition scores (refused above [`MAX_COMPOSITION_ENTRIES`]).
pub fn composition_scores(w: &Weights) -> Result<CompositionScores> {
    Ok(CompositionScores {
        q: composition_scores_mode(w, CompositionMode::Q)?,
        k: composition_scores_mode(w, CompositionMode::K)?,
        v: composition_scores_mode(w, CompositionMode::V)?,
    })
}

/// A [rows, cols] matrix of independent standard normal entries (ziggurat draws on `rng`,
/// column by column).
fn gaussian(rng: &mut StdRng, rows: usize, cols: usize) -> DMatrix<f64> {
    DMatrix::from_fn(rows, cols, |_, _| rng.sample(StandardNormal))
}

/// A `k x k` matrix with the law of `A^T A` for an `n x k` matrix `A` of independent
/// standard normals (the Wishart law `W_k(n, I)`), drawn by the Bartlett decomposition
/// `W = L L^T`: `L` lower triangular with `L_ii^2 ~ chi^2(n - i)` (`i = 0..k`) and
/// standard normal entries below the diagonal, row by row. That is `k(k+1)/2` draws
/// instead of `n k`, and no `k x n x k` product. Needs `n >= k`.
fn wishart(rng: &mut StdRng, k: usize, n: usize) -> DMatrix<f64> {
    let mut l = DMatrix::<f64>::zeros(k, k);
    for i in 0..k {
        for j in 0..i {
            l[(i, j)] = rng.sample(StandardNormal);
        }
        let chi2 = ChiSquared::new((n - i) as f64).expect("n > i: a positive degree of freedom");
        l[(i, i)] = rng.sample(chi2).sqrt();
    }
    &l * l.transpose()
}

/// `||A1 B1 A2 B2||_F / (||A1 B1||_F ||A2 B2||_F)` from the `k x k` Gram matrices
/// `ga1 = A1^T A1`, `gb2 = B2 B2^T` and the factors `B1`, `A2` (`||A B||_F^2 =
/// tr((A^T A)(B B^T))`), without a `d_model x d_model` product.
fn score_from_grams(
    ga1: &DMatrix<f64>,
    b1: &DMatrix<f64>,
    a2: &DMatrix<f64>,
    gb2: &DMatrix<f64>,
) -> f64 {
    let (gb1, ga2) = (b1 * b1.transpose(), a2.tr_mul(a2));
    let m = b1 * a2;
    let mgm = &m * gb2 * m.transpose();
    norm_from_grams(ga1, &mgm) / (norm_from_grams(ga1, &gb1) * norm_from_grams(&ga2, gb2))
}

/// [`score_from_grams`] of four explicit factors.
#[cfg(test)]
fn factored_score(
    a1: &DMatrix<f64>,
    b1: &DMatrix<f64>,
    a2: &DMatrix<f64>,
    b2: &DMatrix<f64>,
) -> f64 {
    score_from_grams(&a1.tr_mul(a1), b1, a2, &(b2 * b2.transpose()))
}

/// The composition score that random matrices of the model's shapes get, which the
/// paper subtracts.
///
/// Estimator: for each of `samples` draws, four independent matrices with i.i.d.
/// standard normal entries, `A1, A2` [d_model, d_head] and `B1, B2` [d_head, d_model], give
/// `L = A1 B1` and `R = A2 B2` (the shapes and rank min(d_model, d_head) of `W_V W_O` and
/// `W_Q W_K^T`); the sample is `||L R||_F / (||L||_F ||R||_F)`. The baseline is the mean
/// over the samples. As the score does not depend on the scale of any factor, the
/// variance of the entries is irrelevant, and as the transpose of a Gaussian product
/// `A B` has the law of a Gaussian product of the same shapes, the one estimate serves
/// all of Q-, K- and V-composition. Each sample's norms come from `d_head x d_head`
/// Gram matrices of the factors; `A1` and `B2` enter only through theirs, so those two
/// are drawn directly from their Wishart law ([`wishart`], when `d_model >= d_head`),
/// which has the same distribution and costs a fraction of the draws. The draws come
/// from `StdRng::seed_from_u64(seed)` (rand 0.8, ChaCha12; rand_distr 0.4's ziggurat
/// normals and chi-squared), in the order A1, B1, A2, B2 per sample (column by column
/// within a factor, row by row within a Bartlett factor), so the result is deterministic
/// for given (d_model, d_head, samples, seed). Defaults: [`BASELINE_SAMPLES`],
/// [`BASELINE_SEED`].
pub fn composition_baseline(
    d_model: usize,
    d_head: usize,
    samples: usize,
    seed: u64,
) -> CompositionBaseline {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(samples.min(1 << 20));
    for _ in 0..samples {
        // `B B^T` of a `k x n` standard normal `B` has the law of `A^T A` of an `n x k` one.
        let gram = |rng: &mut StdRng| {
            if d_model >= d_head {
                wishart(rng, d_head, d_model)
            } else {
                let a = gaussian(rng, d_model, d_head);
                a.tr_mul(&a)
            }
        };
        let ga1 = gram(&mut rng);
        let b1 = gaussian(&mut rng, d_head, d_model);
        let a2 = gaussian(&mut rng, d_model, d_head);
        let gb2 = gram(&mut rng);
        values.push(score_from_grams(&ga1, &b1, &a2, &gb2));
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    CompositionBaseline {
        mean,
        std: var.sqrt(),
        std_error: (var / n).sqrt(),
        samples,
        seed,
        d_model,
        d_head,
    }
}

/// `score - baseline` where `l1 < l2`, 0 elsewhere (as TL's mask).
pub fn subtract_baseline(scores: &Scores4, baseline: f64) -> Scores4 {
    let mut out = scores.clone();
    let nl = out.len();
    for (l1, by_h1) in out.iter_mut().enumerate() {
        for by_l2 in by_h1.iter_mut() {
            for (l2, by_h2) in by_l2.iter_mut().enumerate().take(nl) {
                if l1 < l2 {
                    for v in by_h2.iter_mut() {
                        *v -= baseline;
                    }
                }
            }
        }
    }
    out
}

/// Baseline-subtracted Q, K and V composition scores.
pub fn subtract_baseline_all(scores: &CompositionScores, baseline: f64) -> CompositionScores {
    CompositionScores {
        q: subtract_baseline(&scores.q, baseline),
        k: subtract_baseline(&scores.k, baseline),
        v: subtract_baseline(&scores.v, baseline),
    }
}

/// Sizes of the OV path-expansion terms (paths through at most two heads, all with the
/// attention patterns frozen): the direct path `W_E W_U`, each head's full OV circuit and
/// each virtual head `h1 -> h2` with `layer1 < layer2`. Sizes are Frobenius norms of the
/// token-to-logit matrices (from `d_head`-sized Gram matrices), also given relative to the
/// direct path.
pub fn path_expansion(v: &Vocab<'_>) -> PathExpansion {
    let w = v.w;
    let direct = direct_path().frobenius_norm(v);
    let (nl, nh) = (w.cfg.n_layers, w.cfg.n_heads);
    // Per head: W_V^T G_E W_V (what reaches its values from the tokens) and
    // W_O G_U W_O^T (what its output does to the logits), both d_head x d_head.
    let grams: Vec<Vec<(DMatrix<f64>, DMatrix<f64>)>> = (0..nl)
        .map(|l| {
            (0..nh)
                .map(|h| {
                    let c = full_ov(w, l, h);
                    (c.left_gram(v), c.right_gram(v))
                })
                .collect()
        })
        .collect();
    let mut heads = Vec::new();
    for (layer, by_head) in grams.iter().enumerate() {
        for (head, (x, y)) in by_head.iter().enumerate() {
            let norm = norm_from_grams(x, y);
            heads.push(PathTerm {
                layer,
                head,
                norm,
                relative_to_direct: norm / direct,
            });
        }
    }
    let mut virtual_heads = Vec::new();
    for layer1 in 0..nl {
        for head1 in 0..nh {
            for layer2 in layer1 + 1..nl {
                for head2 in 0..nh {
                    // ||W_E V1 (O1 V2) O2 W_U||^2 = tr(X1 P Y2 P^T), P = O1 V2.
                    let p =
                        to_f64(&w.layers[layer1].w_o[head1]) * to_f64(&w.layers[layer2].w_v[head2]);
                    let py = &p * &grams[layer2][head2].1 * p.transpose();
                    let norm = norm_from_grams(&grams[layer1][head1].0, &py);
                    virtual_heads.push(VirtualHead {
                        layer1,
                        head1,
                        layer2,
                        head2,
                        norm,
                        relative_to_direct: norm / direct,
                    });
                }
            }
        }
    }
    PathExpansion {
        direct_norm: direct,
        heads,
        virtual_heads,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::weights::{LayerWeights, ModelConfig, Normalization, PositionalEmbedding};
    use nalgebra::DVector;

    /// An attention-only model whose per-head matrices are given as f32 matrices.
    pub(crate) struct HeadMats {
        pub q: DMatrix<f32>,
        pub k: DMatrix<f32>,
        pub v: DMatrix<f32>,
        pub o: DMatrix<f32>,
    }

    pub(crate) fn model(
        w_e: DMatrix<f32>,
        w_u: DMatrix<f32>,
        layers: Vec<Vec<HeadMats>>,
    ) -> Weights {
        let d_model = w_e.ncols();
        let d_head = layers[0][0].q.ncols();
        let n_heads = layers[0].len();
        let d_vocab_out = w_u.ncols();
        let cfg = ModelConfig {
            n_layers: layers.len(),
            d_model,
            d_head,
            n_heads,
            d_vocab: w_e.nrows(),
            d_vocab_out,
            n_ctx: 16,
            normalization: Normalization::None,
            positional: PositionalEmbedding::Standard,
            eps: 1e-5,
            attn_scale: (d_head as f32).sqrt(),
        };
        let layers = layers
            .into_iter()
            .map(|heads| LayerWeights {
                ln1_w: None,
                ln1_b: None,
                w_q: heads.iter().map(|h| h.q.clone()).collect(),
                w_k: heads.iter().map(|h| h.k.clone()).collect(),
                w_v: heads.iter().map(|h| h.v.clone()).collect(),
                w_o: heads.iter().map(|h| h.o.clone()).collect(),
                b_q: vec![DVector::zeros(d_head); n_heads],
                b_k: vec![DVector::zeros(d_head); n_heads],
                b_v: vec![DVector::zeros(d_head); n_heads],
                b_o: DVector::zeros(d_model),
            })
            .collect();
        Weights {
            w_pos: DMatrix::zeros(cfg.n_ctx, d_model),
            cfg,
            w_e,
            layers,
            ln_final_w: None,
            ln_final_b: None,
            b_u: DVector::zeros(d_vocab_out),
            w_u,
        }
    }

    /// The full circuit as a dense f64 matrix (tests only).
    fn dense(w: &Weights, c: &FullCircuit) -> DMatrix<f64> {
        let e = to_f64(&w.w_e);
        let ea = c.a.as_ref().map_or(e.clone(), |a| &e * a);
        let m = c.b.as_ref().map_or(ea.clone(), |b| &ea * b);
        match c.right {
            Right::Unembed => m * to_f64(&w.w_u),
            Right::EmbedT => m * to_f64(&w.w_e).transpose(),
        }
    }

    /// Columns `cols` of the d x d identity, as a [d, cols.len()] matrix.
    pub(crate) fn basis(d: usize, cols: &[usize]) -> DMatrix<f32> {
        DMatrix::from_fn(d, cols.len(), |i, j| if i == cols[j] { 1.0 } else { 0.0 })
    }

    fn pseudo(rows: usize, cols: usize, seed: u64) -> DMatrix<f32> {
        DMatrix::from_fn(rows, cols, |i, j| {
            let x = ((i * 7919 + j * 104_729) as u64 ^ seed.wrapping_mul(0x9E37_79B9)) as f64;
            ((x * 0.618_033_988_7).sin() * 2.0) as f32
        })
    }

    /// Vocab 6, d_model 4, d_head 2, two layers of two heads:
    /// L0H0 copies (OV = projection on dims 0,1), L0H1 anti-copies on dims 2,3,
    /// L1H0 reads dims 0,1 (composes with L0H0 only), L1H1 reads dims 2,3.
    fn toy() -> Weights {
        let d = 4;
        let w_e = DMatrix::from_fn(6, d, |i, j| if i % d == j { 1.0 } else { 0.0 });
        let w_u = w_e.transpose();
        let p01 = basis(d, &[0, 1]);
        let p23 = basis(d, &[2, 3]);
        let l0 = vec![
            HeadMats {
                q: p01.clone(),
                k: p23.clone(),
                v: p01.clone(),
                o: p01.transpose(),
            },
            HeadMats {
                q: p23.clone(),
                k: p23.clone(),
                v: p23.clone(),
                o: -p23.transpose(),
            },
        ];
        let l1 = vec![
            HeadMats {
                q: p01.clone(),
                k: p01.clone(),
                v: p01.clone(),
                o: p01.transpose(),
            },
            HeadMats {
                q: p23.clone(),
                k: p23.clone(),
                v: p23.clone(),
                o: p23.transpose(),
            },
        ];
        model(w_e, w_u, vec![l0, l1])
    }

    #[test]
    fn copying_scores_of_identity_and_negated_heads() {
        let w = toy();
        let c = copying_scores(&Vocab::new(&w)).unwrap();
        assert!((c[0][0] - 1.0).abs() < 1e-12, "{c:?}");
        assert!((c[0][1] + 1.0).abs() < 1e-12, "{c:?}");
        assert!((c[1][0] - 1.0).abs() < 1e-12);
        // A rotation (90 degrees in the dims-0,1 plane): eigenvalues ±i, copying score 0.
        let mut w2 = toy();
        w2.layers[0].w_o[0] =
            DMatrix::from_row_slice(2, 4, &[0.0, 1.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0]);
        let e = ov_eigenvalues(&Vocab::new(&w2), 0, 0).unwrap();
        assert!(copying_score(&e).abs() < 1e-12);
        let s = eigen_stats(&e, 10);
        assert_eq!(
            (s.n_complex, s.n_positive_real, s.n_negative_real),
            (2, 0, 0)
        );
    }

    #[test]
    fn eigen_stats_counts_and_order() {
        let e = vec![
            Complex::new(2.0, 0.0),
            Complex::new(-3.0, 0.0),
            Complex::new(0.0, 0.0),
            Complex::new(1.0, 1.0),
            Complex::new(1.0, -1.0),
        ];
        let s = eigen_stats(&e, 2);
        assert_eq!(s.top_eigenvalues, vec![[-3.0, 0.0], [2.0, 0.0]]);
        assert_eq!(
            (s.n_positive_real, s.n_negative_real, s.n_complex, s.n_zero),
            (1, 1, 2, 1)
        );
        assert!((s.trace - 1.0).abs() < 1e-12);
        let abs = 2.0 + 3.0 + 2.0 * 2f64.sqrt();
        assert!((s.abs_sum - abs).abs() < 1e-12);
        assert!((s.trace_over_abs_sum - 1.0 / abs).abs() < 1e-12);
    }

    #[test]
    fn composition_of_orthogonal_and_aligned_subspaces() {
        let w = toy();
        let c = composition_scores(&w).unwrap();
        // L0H0 writes dims 0,1; L1H1 reads only dims 2,3: no composition of any kind.
        assert_eq!(c.q[0][0][1][1], 0.0);
        assert_eq!(c.k[0][0][1][1], 0.0);
        assert_eq!(c.v[0][0][1][1], 0.0);
        // L0H0 -> L1H0: OV and QK are the same rank-2 projection P: ||P P|| / ||P||^2 = 1/sqrt(2).
        let s = 0.5f64.sqrt();
        assert!((c.v[0][0][1][0] - s).abs() < 1e-12);
        assert!((c.q[0][0][1][0] - s).abs() < 1e-12);
        assert!((c.k[0][0][1][0] - s).abs() < 1e-12);
        // Same layer and backwards are zero.
        assert_eq!(c.v[0][0][0][1], 0.0);
        assert_eq!(c.v[1][0][0][0], 0.0);
        assert_eq!(c.v[1][0][1][1], 0.0);
    }

    #[test]
    fn q_and_k_composition_differ_for_asymmetric_qk() {
        // L0H0 in toy(): W_Q = P01, W_K = P23, so QK maps dims 2,3 -> 0,1 and is not symmetric.
        // Make it the later head and compose from a head writing dims 0,1.
        let d = 4;
        let w_e = DMatrix::from_fn(4, d, |i, j| if i == j { 1.0 } else { 0.0 });
        let p01 = basis(d, &[0, 1]);
        let p23 = basis(d, &[2, 3]);
        let writer = HeadMats {
            q: p01.clone(),
            k: p01.clone(),
            v: p01.clone(),
            o: p01.transpose(),
        };
        let reader = HeadMats {
            q: p01.clone(),
            k: p23.clone(),
            v: p23.clone(),
            o: p23.transpose(),
        };
        let w = model(
            w_e.clone(),
            w_e.transpose(),
            vec![vec![writer], vec![reader]],
        );
        let c = composition_scores(&w).unwrap();
        // OV(writer) = P01; QK(reader) = E01 E23^T: P01 * QK = QK (full overlap),
        // P01 * QK^T = 0 (QK^T has rows in dims 2,3).
        assert!((c.q[0][0][1][0] - 0.5f64.sqrt()).abs() < 1e-12, "{:?}", c.q);
        assert_eq!(c.k[0][0][1][0], 0.0);
    }

    #[test]
    fn composition_matches_dense_definition() {
        let d = 7;
        let dh = 3;
        let heads = |s: u64| -> Vec<HeadMats> {
            (0..2)
                .map(|h| HeadMats {
                    q: pseudo(d, dh, s + 10 * h),
                    k: pseudo(d, dh, s + 10 * h + 1),
                    v: pseudo(d, dh, s + 10 * h + 2),
                    o: pseudo(dh, d, s + 10 * h + 3),
                })
                .collect()
        };
        let w = model(
            pseudo(9, d, 1),
            pseudo(d, 9, 2),
            vec![heads(100), heads(200), heads(300)],
        );
        let c = composition_scores(&w).unwrap();
        let f = |m: &DMatrix<f32>| m.map(f64::from);
        for l1 in 0..3 {
            for h1 in 0..2 {
                for l2 in 0..3 {
                    for h2 in 0..2 {
                        // Dense products in f64 (Weights::ov/qk multiply in f32).
                        let (a, b) = (&w.layers[l1], &w.layers[l2]);
                        let ov1 = f(&a.w_v[h1]) * f(&a.w_o[h1]);
                        let qk2 = f(&b.w_q[h2]) * f(&b.w_k[h2]).transpose();
                        let ov2 = f(&b.w_v[h2]) * f(&b.w_o[h2]);
                        let sc = |r: &DMatrix<f64>| (&ov1 * r).norm() / (ov1.norm() * r.norm());
                        let (q, k, v) = if l1 < l2 {
                            (sc(&qk2), sc(&qk2.transpose()), sc(&ov2))
                        } else {
                            (0.0, 0.0, 0.0)
                        };
                        assert!((c.q[l1][h1][l2][h2] - q).abs() < 1e-10);
                        assert!((c.k[l1][h1][l2][h2] - k).abs() < 1e-10);
                        assert!((c.v[l1][h1][l2][h2] - v).abs() < 1e-10);
                    }
                }
            }
        }
    }

    #[test]
    fn wishart_draws_have_the_law_of_a_gram_matrix() {
        // E[A^T A] = n I; Var of a diagonal entry 2n, of an off-diagonal one n.
        let (k, n, draws) = (4, 16, 4000);
        let mut rng = StdRng::seed_from_u64(3);
        let mut mean = DMatrix::<f64>::zeros(k, k);
        let mut sq = DMatrix::<f64>::zeros(k, k);
        for _ in 0..draws {
            let w = wishart(&mut rng, k, n);
            assert_eq!(w, w.transpose());
            mean += &w;
            sq += w.component_mul(&w);
        }
        mean /= draws as f64;
        sq /= draws as f64;
        for i in 0..k {
            for j in 0..k {
                let (m, var) = (mean[(i, j)], sq[(i, j)] - mean[(i, j)].powi(2));
                let (want_m, want_var) = if i == j {
                    (n as f64, 2.0 * n as f64)
                } else {
                    (0.0, n as f64)
                };
                // 6 standard errors of the mean; the variance within 15%.
                let se = (want_var / draws as f64).sqrt();
                assert!((m - want_m).abs() < 6.0 * se, "E[W_{i}{j}] = {m}");
                assert!((var / want_var - 1.0).abs() < 0.15, "Var[W_{i}{j}] = {var}");
            }
        }
    }

    #[test]
    fn baseline_agrees_with_the_dense_gaussian_estimator() {
        // The same expectation estimated from four explicit Gaussian factors per sample
        // (no Wishart shortcut): the two means agree within their standard errors.
        let (d_model, d_head, samples) = (24, 4, 3000);
        let fast = composition_baseline(d_model, d_head, samples, 7);
        let mut rng = StdRng::seed_from_u64(8);
        let dense: Vec<f64> = (0..samples)
            .map(|_| {
                let a1 = gaussian(&mut rng, d_model, d_head);
                let b1 = gaussian(&mut rng, d_head, d_model);
                let a2 = gaussian(&mut rng, d_model, d_head);
                let b2 = gaussian(&mut rng, d_head, d_model);
                let (l, r) = (&a1 * &b1, &a2 * &b2);
                (&l * &r).norm() / (l.norm() * r.norm())
            })
            .collect();
        let n = samples as f64;
        let mean = dense.iter().sum::<f64>() / n;
        let var = dense.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let se = (fast.std_error.powi(2) + var / n).sqrt();
        assert!(
            (fast.mean - mean).abs() < 4.0 * se,
            "{} vs {mean} (se {se})",
            fast.mean
        );
        assert!(
            (fast.std / var.sqrt() - 1.0).abs() < 0.1,
            "{} vs {}",
            fast.std,
            var.sqrt()
        );
    }

    #[test]
    fn baseline_is_deterministic_and_plausible() {
        // One sample's score from Gram matrices equals the dense definition.
        let mut rng = StdRng::seed_from_u64(5);
        let m: Vec<DMatrix<f64>> = [(16, 4), (4, 16), (16, 4), (4, 16)]
            .iter()
            .map(|&(r, c)| gaussian(&mut rng, r, c))
            .collect();
        let (l, r) = (&m[0] * &m[1], &m[2] * &m[3]);
        let dense = (&l * &r).norm() / (l.norm() * r.norm());
        assert!((factored_score(&m[0], &m[1], &m[2], &m[3]) - dense).abs() < 1e-12);
        let a = composition_baseline(16, 4, 64, BASELINE_SEED);
        let b = composition_baseline(16, 4, 64, BASELINE_SEED);
        assert_eq!(a.mean, b.mean);
        assert!(a.mean > 0.0 && a.mean < 1.0, "{a:?}");
        assert!(a.std_error < 0.05);
        let c = composition_baseline(16, 4, 64, 1);
        assert_ne!(a.mean, c.mean);
        // Random composition shrinks with the residual width.
        let wide = composition_baseline(128, 4, 64, BASELINE_SEED);
        assert!(wide.mean < a.mean, "{} vs {}", wide.mean, a.mean);

        let w = toy();
        let s = composition_scores(&w).unwrap();
        let sub = subtract_baseline_all(&s, 0.25);
        assert!((sub.v[0][0][1][0] - (s.v[0][0][1][0] - 0.25)).abs() < 1e-15);
        assert_eq!(sub.v[0][0][0][1], 0.0);
        assert_eq!(sub.q[1][0][0][0], 0.0);
    }

    #[test]
    fn full_circuits_norms_and_top_pairs() {
        let w = toy();
        let v = Vocab::new(&w);
        let all: Vec<usize> = (0..6).collect();
        let pb = ProgressBar::hidden();
        // Full OV of L0H0 = W_E P01 W_U: tokens 0,4 -> 0,4 and 1,5 -> 1,5 (vocab 6, d 4).
        let c = full_ov(&w, 0, 0);
        let m = dense(&w, &c);
        assert!((c.frobenius_norm(&v) - m.norm()).abs() < 1e-12);
        assert_eq!(m[(4, 0)], 1.0);
        assert_eq!(m[(2, 2)], 0.0);
        assert_eq!(c.entry(&v, 4, 0), 1.0);
        let r = circuit_report(&v, &c, 4, 3, &all, &pb).unwrap();
        let top = &r.top_pairs;
        assert_eq!((top[0].row, top[0].col, top[0].value), (0, 0, 1.0));
        assert_eq!((top[1].row, top[1].col), (0, 4));
        // Rows 0,1,4,5 have their (first) maximum on the diagonal for 0,1 only
        // (4 -> 0 ties with 4 -> 4, first max is column 0); rows 2,3 are all zero (first max col 0).
        assert_eq!(r.diagonal_argmax_fraction, Some(2.0 / 6.0));
        // No scan rows: no scans.
        let r0 = circuit_report(&v, &c, 4, 3, &[], &pb).unwrap();
        assert!(r0.top_pairs.is_empty() && r0.diagonal_argmax_fraction.is_none());
        assert_eq!(r0.frobenius_norm, r.frobenius_norm);

        // Full QK is formed from W_E only on both sides.
        let qc = full_qk(&w, 1, 0);
        let q = dense(&w, &qc);
        let expect =
            w.w_e.map(f64::from) * w.qk(1, 0).map(f64::from) * w.w_e.map(f64::from).transpose();
        assert!((&q - &expect).norm() < 1e-12);
        assert!((qc.frobenius_norm(&v) - expect.norm()).abs() < 1e-12);

        let r = circuit_report(&v, &full_ov(&w, 0, 1), 4, 2, &all, &pb).unwrap();
        let e = r.eigen.unwrap();
        assert_eq!(e.n_negative_real, 2);
        assert!((e.trace_over_abs_sum + 1.0).abs() < 1e-12);
    }

    #[test]
    fn composition_tables_are_bounded() {
        assert!(check_composition_size(2, 8).is_ok());
        assert!(check_composition_size(64, 32).is_ok());
        let e = check_composition_size(255, 4096).unwrap_err().to_string();
        assert!(e.contains("1044480 heads"), "{e}");
        assert!(check_composition_size(usize::MAX, 2).is_err());
    }

    #[test]
    fn bigram_and_path_expansion() {
        let w = toy();
        let v = Vocab::new(&w);
        let pb = ProgressBar::hidden();
        let b = bigram_top(&v, 2, &(0..6).collect::<Vec<_>>(), &pb);
        assert_eq!(b.len(), 6);
        assert_eq!(b[2].next[0].token, 2);
        assert_eq!(b[2].next[0].logit, 1.0);
        assert_eq!(
            b[5].next.iter().map(|t| t.token).collect::<Vec<_>>(),
            vec![1, 5]
        );

        let p = path_expansion(&v);
        // W_E W_U has six ones on its "diagonal blocks": 0,4 x 0,4 and 1,5 x 1,5 (4+4), 2,2 and 3,3.
        assert!((p.direct_norm - 10f64.sqrt()).abs() < 1e-12);
        assert_eq!(p.heads.len(), 4);
        assert_eq!(p.virtual_heads.len(), 4);
        let find = |l1, h1, l2, h2| {
            p.virtual_heads
                .iter()
                .find(|v| (v.layer1, v.head1, v.layer2, v.head2) == (l1, h1, l2, h2))
                .unwrap()
        };
        // L0H0 -> L1H0: P01 P01 = P01 → same as the head's full OV (norm sqrt(8)).
        assert!((find(0, 0, 1, 0).norm - 8f64.sqrt()).abs() < 1e-12);
        // L0H0 -> L1H1: orthogonal.
        assert_eq!(find(0, 0, 1, 1).norm, 0.0);
        // L0H1 -> L1H1: -P23 P23: tokens 2,3 only.
        let v = find(0, 1, 1, 1);
        assert!((v.norm - 2f64.sqrt()).abs() < 1e-12);
        assert!((v.relative_to_direct - (2.0f64 / 10.0).sqrt()).abs() < 1e-12);

        // Dense check of a virtual head on a random model.
        let d = 5;
        let hm = |s| HeadMats {
            q: pseudo(d, 2, s),
            k: pseudo(d, 2, s + 1),
            v: pseudo(d, 2, s + 2),
            o: pseudo(2, d, s + 3),
        };
        let w = model(
            pseudo(11, d, 1),
            pseudo(d, 11, 2),
            vec![vec![hm(10)], vec![hm(20)]],
        );
        let f = |m: &DMatrix<f32>| m.map(f64::from);
        let ov = |l: usize| f(&w.layers[l].w_v[0]) * f(&w.layers[l].w_o[0]);
        let want = f(&w.w_e) * ov(0) * ov(1) * f(&w.w_u);
        let voc = Vocab::new(&w);
        let vh = virtual_ov(&w, (0, 0), (1, 0));
        assert!((vh.frobenius_norm(&voc) - want.norm()).abs() < 1e-9 * want.norm());
        assert!((dense(&w, &vh) - &want).norm() < 1e-9 * want.norm());
        let p = path_expansion(&voc);
        assert!((p.virtual_heads[0].norm - want.norm()).abs() < 1e-9 * want.norm());
        let direct = f(&w.w_e) * f(&w.w_u);
        assert!((p.direct_norm - direct.norm()).abs() < 1e-9 * direct.norm());
        let head = f(&w.w_e) * ov(1) * f(&w.w_u);
        assert!((p.heads[1].norm - head.norm()).abs() < 1e-9 * head.norm());
        // Subset scans read only their rows; f64 values.
        let sub = ScanTokens::Subset(4).tokens(11);
        assert_eq!(sub, vec![0, 2, 5, 8]);
        let rows = bigram_top(&voc, 3, &sub, &ProgressBar::hidden());
        assert_eq!(rows.len(), 4);
        for r in &rows {
            let mut want: Vec<(usize, f64)> = (0..11).map(|j| (j, direct[(r.token, j)])).collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1));
            for (got, w) in r.next.iter().zip(&want) {
                assert_eq!(got.token, w.0);
                assert!((got.logit - w.1).abs() < 1e-9);
            }
        }
    }
}
