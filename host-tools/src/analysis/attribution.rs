//! Linear decompositions of the logits of one prompt, with the nonlinear parts frozen
//! at the values a recorded run used (patterns and LayerNorm scales from the trace).
//!
//! - [`direct_logit_attribution`]: TransformerLens-style direct logit attribution
//!   (`cache.stack_head_results` + `apply_ln_to_stack` + the unembedding direction):
//!   the final residual stream is the sum of the token embedding, the positional
//!   embedding, every head's recorded `hook_result` and every `b_O`; with the final LN's
//!   scale frozen (its recorded `hook_scale`) the LN is affine, so each piece's logit
//!   is `center(piece) / scale * w · W_U[:, t]`, and the LN bias and `b_U` go to the
//!   bias term. The pieces sum to the logit.
//! - [`expand`]: the path expansion of "A Mathematical Framework for Transformer
//!   Circuits" with attention frozen: with every pattern and every LN scale fixed, the
//!   logits are an affine function of the embeddings and split exactly into the direct
//!   path (embeddings → unembedding), one term per head (embeddings → head → unembedding),
//!   one term per virtual head `h1 → h2` (the output of `h1` read by the values of a
//!   later `h2`), terms of order 3 and more (aggregated per order), and one term for
//!   everything that starts at a bias (LN biases, `b_V`, `b_O`, `b_U`, and their paths
//!   through later heads). [`term_importance`] measures, as the paper does, how much the
//!   loss rises when a term or a whole order of terms is dropped.
//!
//! All arithmetic is f64 on the weights of the blob (dequantized: what the device
//! multiplies by). The check against the model's own logits is exact for f32 blobs; for
//! quantized blobs it also contains the device's int8 quantization of activations
//! (a rounding of every matrix-vector input, which no linear decomposition has), so
//! [`Expansion::exact`] is also given: the same frozen forward pass computed densely.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef};
use nalgebra::{DMatrix, DVector, RowDVector};
use rayon::prelude::*;
use serde::Serialize;

use super::factored::to_f64;
use super::progress::par;
use crate::numerics::log_softmax;
use crate::weights::{Normalization, PositionalEmbedding, Weights};
use crate::{Error, Result};

/// Where a position's target token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetSource {
    /// The prompt's next token.
    Next,
    /// Given by the user (`--target`).
    Given,
    /// The last position has no next token: the model's own top prediction.
    Prediction,
}

/// Direct logit attribution of one prompt (see the module documentation).
#[derive(Clone, Debug, Serialize)]
pub struct Dla {
    pub tokens: Vec<u32>,
    /// The token whose logit is attributed, per position.
    pub targets: Vec<u32>,
    pub target_source: Vec<TargetSource>,
    /// `hook_embed` (the token embedding) per position.
    pub embed: Vec<f64>,
    /// `hook_pos_embed` per position (0 for shortformer models: there the positional
    /// embedding enters only queries and keys, never the residual stream).
    pub pos_embed: Vec<f64>,
    /// `embed + pos_embed`: the direct path.
    pub direct: Vec<f64>,
    /// `[layer][head][pos]`: each head's `hook_result`.
    pub heads: Vec<Vec<Vec<f64>>>,
    /// Every `b_O`, the final LN's bias and `b_U`, per position.
    pub biases: Vec<f64>,
    /// `direct + Σ heads + biases`.
    pub sum: Vec<f64>,
    /// The model's logit of the target.
    pub model_logit: Vec<f64>,
    /// `sum - model_logit`.
    pub residual_error: Vec<f64>,
    pub max_abs_residual_error: f64,
    /// The frozen `ln_final.hook_scale` per position (None without LayerNorm).
    pub ln_final_scale: Option<Vec<f64>>,
}

/// The direction in the final residual stream whose dot product with a piece gives the
/// piece's logit for `target` at a position whose final LN scale is `scale`, and the
/// constant (LN bias and `b_U`) of that logit.
fn unembed_direction(w: &Weights, target: usize, scale: Option<f64>) -> (DVector<f64>, f64) {
    let mut u: DVector<f64> = w.w_u.column(target).map(f64::from);
    let mut constant = f64::from(w.b_u[target]);
    if w.cfg.normalization != Normalization::None {
        if let Some(lw) = &w.ln_final_w {
            u.component_mul_assign(&lw.map(f64::from));
        }
        if let Some(lb) = &w.ln_final_b {
            constant += lb.map(f64::from).dot(&w.w_u.column(target).map(f64::from));
        }
        // (x - mean(x)) · u = x · (u - mean(u)): centring moves to the direction.
        let mean = u.mean();
        u.add_scalar_mut(-mean);
        u /= scale.unwrap_or(1.0);
    }
    (u, constant)
}

fn dot(v: &[f32], u: &DVector<f64>) -> f64 {
    v.iter().zip(u.iter()).map(|(a, b)| f64::from(*a) * b).sum()
}

/// Direct logit attribution from recorded values: `embed` and `pos_embed` are
/// `[pos][d_model]`, `results[layer][pos][head]` the heads' `hook_result`, `final_scale`
/// the recorded `ln_final.hook_scale` (None without LayerNorm), `logits` the model's
/// logits. `target`: attribute every position to this token; otherwise each position to
/// its next token and the last one to the model's top prediction.
#[allow(clippy::too_many_arguments)]
pub fn direct_logit_attribution(
    w: &Weights,
    tokens: &[u32],
    embed: &[Vec<f32>],
    pos_embed: &[Vec<f32>],
    results: &[Vec<Vec<Vec<f32>>>],
    final_scale: Option<&[f32]>,
    logits: &[Vec<f32>],
    target: Option<u32>,
) -> Result<Dla> {
    let cfg = &w.cfg;
    let n = tokens.len();
    if embed.len() != n
        || pos_embed.len() != n
        || logits.len() != n
        || results.len() != cfg.n_layers
        || results.iter().any(|r| r.len() != n)
        || final_scale.is_some_and(|s| s.len() != n)
    {
        return Err(Error::Trace(
            "attribution: recorded values do not cover every position of the prompt".into(),
        ));
    }
    if let Some(t) = target.filter(|t| *t as usize >= cfg.d_vocab_out) {
        return Err(Error::Argument(format!(
            "--target {t} is not a token of this model (d_vocab_out = {})",
            cfg.d_vocab_out
        )));
    }
    let mut dla = Dla {
        tokens: tokens.to_vec(),
        targets: Vec::with_capacity(n),
        target_source: Vec::with_capacity(n),
        embed: Vec::with_capacity(n),
        pos_embed: Vec::with_capacity(n),
        direct: Vec::with_capacity(n),
        heads: vec![vec![Vec::with_capacity(n); cfg.n_heads]; cfg.n_layers],
        biases: Vec::with_capacity(n),
        sum: Vec::with_capacity(n),
        model_logit: Vec::with_capacity(n),
        residual_error: Vec::with_capacity(n),
        max_abs_residual_error: 0.0,
        ln_final_scale: final_scale.map(|s| s.iter().map(|v| f64::from(*v)).collect()),
    };
    let b_o_total: DVector<f64> = w.layers.iter().fold(DVector::zeros(cfg.d_model), |acc, l| {
        acc + l.b_o.map(f64::from)
    });
    for p in 0..n {
        let (t, source) = match target {
            Some(t) => (t, TargetSource::Given),
            None if p + 1 < n => (tokens[p + 1], TargetSource::Next),
            None => (
                tinylens_core::sample::greedy(&logits[p]),
                TargetSource::Prediction,
            ),
        };
        let (u, constant) = unembed_direction(w, t as usize, final_scale.map(|s| f64::from(s[p])));
        let e = dot(&embed[p], &u);
        let pe = if cfg.positional == PositionalEmbedding::Standard {
            dot(&pos_embed[p], &u)
        } else {
            0.0
        };
        let mut sum = e + pe;
        for (l, layer) in results.iter().enumerate() {
            for (h, r) in layer[p].iter().enumerate() {
                let v = dot(r, &u);
                dla.heads[l][h].push(v);
                sum += v;
            }
        }
        let biases = b_o_total.dot(&u) + constant;
        sum += biases;
        let model = f64::from(logits[p][t as usize]);
        dla.targets.push(t);
        dla.target_source.push(source);
        dla.embed.push(e);
        dla.pos_embed.push(pe);
        dla.direct.push(e + pe);
        dla.biases.push(biases);
        dla.sum.push(sum);
        dla.model_logit.push(model);
        dla.residual_error.push(sum - model);
        dla.max_abs_residual_error = dla.max_abs_residual_error.max((sum - model).abs());
    }
    Ok(dla)
}

/// Which paths a term of the expansion collects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TermKind {
    /// Embeddings straight to the unembedding (order 0).
    Direct,
    /// Through one head (order 1).
    Head { layer: usize, head: usize },
    /// Through `h1` then `h2` (order 2): a virtual head.
    Virtual {
        layer1: usize,
        head1: usize,
        layer2: usize,
        head2: usize,
    },
    /// Every path through `order` >= 3 heads, summed.
    Higher { order: usize },
    /// Every path that starts at a bias.
    Bias,
}

impl TermKind {
    /// Number of heads on the path (None for the bias term).
    pub fn order(&self) -> Option<usize> {
        match self {
            TermKind::Direct => Some(0),
            TermKind::Head { .. } => Some(1),
            TermKind::Virtual { .. } => Some(2),
            TermKind::Higher { order } => Some(*order),
            TermKind::Bias => None,
        }
    }

    /// `direct`, `L1H2`, `L0H1>L1H2`, `order3`, `biases`.
    pub fn name(&self) -> String {
        match self {
            TermKind::Direct => "direct".into(),
            TermKind::Head { layer, head } => format!("L{layer}H{head}"),
            TermKind::Virtual {
                layer1,
                head1,
                layer2,
                head2,
            } => format!("L{layer1}H{head1}>L{layer2}H{head2}"),
            TermKind::Higher { order } => format!("order{order}"),
            TermKind::Bias => "biases".into(),
        }
    }

    /// The term a path of this kind becomes after one more head `(layer, head)`.
    fn then(&self, layer: usize, head: usize) -> TermKind {
        match *self {
            TermKind::Direct => TermKind::Head { layer, head },
            TermKind::Head {
                layer: layer1,
                head: head1,
            } => TermKind::Virtual {
                layer1,
                head1,
                layer2: layer,
                head2: head,
            },
            TermKind::Virtual { .. } => TermKind::Higher { order: 3 },
            TermKind::Higher { order } => TermKind::Higher { order: order + 1 },
            TermKind::Bias => TermKind::Bias,
        }
    }
}

/// One term, kept as its contribution to the unembedding's input: `[pos, d_model]`,
/// after the frozen final LayerNorm's linear part (plus that LN's bias for the bias
/// term). Its logits are `resid W_U` (plus `b_U` for the bias term), formed only a block
/// of the vocabulary at a time ([`Expansion::for_vocab_blocks`]).
#[derive(Clone, Debug)]
pub struct Term {
    pub kind: TermKind,
    pub resid: DMatrix<f64>,
}

impl Term {
    fn has_b_u(&self) -> bool {
        self.kind == TermKind::Bias
    }
}

/// The frozen-attention path expansion of one prompt.
#[derive(Clone, Debug)]
pub struct Expansion {
    pub tokens: Vec<u32>,
    /// Direct, heads (layer-major), virtual heads, higher orders, biases.
    pub terms: Vec<Term>,
    /// The same frozen forward pass computed densely (f64): the final LN's output
    /// `[pos, d_model]` (its logits are `exact_resid W_U + b_U`).
    pub exact_resid: DMatrix<f64>,
    /// `W_U` [d_model, d_vocab_out] (the blob's, dequantized) and `b_U`.
    w_u: DMatrix<f32>,
    b_u: DVector<f64>,
}

/// Vocabulary columns per block of [`Expansion::for_vocab_blocks`].
pub const VOCAB_BLOCK: usize = 256;

impl Expansion {
    /// Output vocabulary size.
    pub fn d_vocab_out(&self) -> usize {
        self.w_u.ncols()
    }

    /// `rows W_U` for the vocabulary block by block: `f(start, z)` with `z`
    /// [len, rows.nrows()] = the block's logits transposed (one row of `rows` per
    /// contiguous column). Products on faer's kernels in the current rayon pool.
    pub fn for_vocab_blocks(&self, rows: &DMatrix<f64>, mut f: impl FnMut(usize, &Mat<f64>)) {
        let (d, v) = (self.w_u.nrows(), self.w_u.ncols());
        let rows_v = MatRef::from_column_major_slice(rows.as_slice(), rows.nrows(), d);
        let mut z = Mat::<f64>::zeros(VOCAB_BLOCK.min(v), rows.nrows());
        for start in (0..v).step_by(VOCAB_BLOCK) {
            let len = VOCAB_BLOCK.min(v - start);
            let u = Mat::<f64>::from_fn(d, len, |i, j| f64::from(self.w_u[(i, start + j)]));
            if len < z.nrows() {
                z = Mat::zeros(len, rows.nrows());
            }
            matmul(
                &mut z,
                Accum::Replace,
                u.transpose(),
                rows_v.transpose(),
                1.0,
                par(),
            );
            f(start, &z);
        }
    }

    /// One term's logits `[pos, d_vocab_out]`, dense (small models and tests).
    pub fn term_logits(&self, i: usize) -> DMatrix<f64> {
        let t = &self.terms[i];
        self.dense_logits(&t.resid, t.has_b_u())
    }

    fn dense_logits(&self, resid: &DMatrix<f64>, with_b_u: bool) -> DMatrix<f64> {
        let mut out = resid * self.w_u.map(f64::from);
        if with_b_u {
            add_row(&mut out, &self.b_u);
        }
        out
    }

    /// The sum of all terms' logits, dense `[pos, d_vocab_out]`.
    pub fn total(&self) -> DMatrix<f64> {
        self.sum_where(|_| true)
    }

    /// The dense frozen pass's logits `[pos, d_vocab_out]`.
    pub fn exact(&self) -> DMatrix<f64> {
        self.dense_logits(&self.exact_resid, true)
    }

    /// The sum of the logits of the terms `keep` accepts, dense.
    pub fn sum_where(&self, keep: impl Fn(&TermKind) -> bool) -> DMatrix<f64> {
        let kept: Vec<&Term> = self.terms.iter().filter(|t| keep(&t.kind)).collect();
        let mut r = DMatrix::zeros(self.exact_resid.nrows(), self.exact_resid.ncols());
        for t in &kept {
            r += &t.resid;
        }
        self.dense_logits(&r, kept.iter().any(|t| t.has_b_u()))
    }

    /// The sum of every term's `resid`.
    fn total_resid(&self) -> DMatrix<f64> {
        let mut r = DMatrix::zeros(self.exact_resid.nrows(), self.exact_resid.ncols());
        for t in &self.terms {
            r += &t.resid;
        }
        r
    }

    /// Each term's logit for the next token at positions `0..n-1`, `[term][pos]`.
    pub fn next_token_logits(&self) -> Vec<Vec<f64>> {
        let n = self.tokens.len();
        self.terms
            .iter()
            .map(|t| {
                (0..n.saturating_sub(1))
                    .map(|p| {
                        let target = self.tokens[p + 1] as usize;
                        let u = self.w_u.column(target);
                        let dot: f64 = t
                            .resid
                            .row(p)
                            .iter()
                            .zip(u.iter())
                            .map(|(a, b)| a * f64::from(*b))
                            .sum();
                        dot + if t.has_b_u() { self.b_u[target] } else { 0.0 }
                    })
                    .collect()
            })
            .collect()
    }

    /// How well the terms add up, streamed over the vocabulary: max |Σ terms − `model`|,
    /// max |Σ terms − the dense frozen pass|, max |`model`| (`model`: the model's logits,
    /// one row per position).
    pub fn sum_check(&self, model: &[Vec<f32>]) -> (f64, f64, f64) {
        let n = self.tokens.len();
        let total = self.total_resid();
        let mut rows = DMatrix::zeros(2 * n, total.ncols());
        rows.rows_mut(0, n).copy_from(&total);
        rows.rows_mut(n, n).copy_from(&self.exact_resid);
        let (mut vs_model, mut vs_exact, mut max_logit) = (0.0f64, 0.0f64, 0.0f64);
        self.for_vocab_blocks(&rows, |start, z| {
            for (p, row) in model.iter().enumerate().take(n) {
                let (t, x) = (z.col_as_slice(p), z.col_as_slice(n + p));
                let row = &row[start..start + t.len()];
                let b_u = &self.b_u.as_slice()[start..start + t.len()];
                for j in 0..t.len() {
                    let m = f64::from(row[j]);
                    // b_U is in the sum (bias term) and in the exact pass alike.
                    vs_model = vs_model.max((t[j] + b_u[j] - m).abs());
                    vs_exact = vs_exact.max((t[j] - x[j]).abs());
                    max_logit = max_logit.max(m.abs());
                }
            }
        });
        (vs_model, vs_exact, max_logit)
    }
}

/// The LN of a layer with the scale frozen, split into its linear part (applied to
/// `c`, one position per row: centre, divide by the scale, times `w`) and its bias.
struct FrozenLn<'a> {
    normalization: Normalization,
    scale: Option<&'a [f32]>,
    w: Option<DVector<f64>>,
    b: Option<RowDVector<f64>>,
}

impl FrozenLn<'_> {
    fn linear(&self, c: &DMatrix<f64>) -> DMatrix<f64> {
        let mut out = c.clone();
        if self.normalization == Normalization::None {
            return out;
        }
        for (p, mut row) in out.row_iter_mut().enumerate() {
            let mean = row.mean();
            row.add_scalar_mut(-mean);
            row /= self.scale.map_or(1.0, |s| f64::from(s[p]));
            if let Some(w) = &self.w {
                row.component_mul_assign(&w.transpose());
            }
        }
        out
    }

    /// The full frozen LN (linear part plus bias).
    fn apply(&self, c: &DMatrix<f64>) -> DMatrix<f64> {
        let mut out = self.linear(c);
        self.add_bias(&mut out);
        out
    }

    fn add_bias(&self, out: &mut DMatrix<f64>) {
        if let Some(b) = &self.b {
            for mut row in out.row_iter_mut() {
                row += b;
            }
        }
    }
}

fn add_row(m: &mut DMatrix<f64>, v: &DVector<f64>) {
    for mut row in m.row_iter_mut() {
        row += v.transpose();
    }
}

/// The frozen-attention path expansion (see the module documentation).
/// `patterns[layer][head]` are the recorded [q_pos, k_pos] patterns; `scales` the
/// recorded LN scales `[n_layers + 1][pos]` (ln1 of every layer, then ln_final), None for
/// a model without LayerNorm.
pub fn expand(
    w: &Weights,
    tokens: &[u32],
    patterns: &[Vec<DMatrix<f32>>],
    scales: Option<&[Vec<f32>]>,
) -> Result<Expansion> {
    let cfg = &w.cfg;
    let n = tokens.len();
    let shape_ok = patterns.len() == cfg.n_layers
        && patterns
            .iter()
            .all(|l| l.len() == cfg.n_heads && l.iter().all(|a| a.nrows() == n && a.ncols() == n));
    let has_ln = cfg.normalization != Normalization::None;
    let scales_ok = match scales {
        Some(s) => s.len() == cfg.n_layers + 1 && s.iter().all(|r| r.len() == n),
        None => !has_ln,
    };
    if n == 0 || n > cfg.n_ctx || !shape_ok || !scales_ok {
        return Err(Error::Trace(
            "path expansion: the recorded patterns and LN scales do not cover the prompt".into(),
        ));
    }
    if let Some(t) = tokens.iter().find(|t| **t as usize >= cfg.d_vocab) {
        return Err(Error::Argument(format!("token {t} is out of range")));
    }
    let ln = |scale_row: usize, lw: &Option<DVector<f32>>, lb: &Option<DVector<f32>>| FrozenLn {
        normalization: cfg.normalization,
        scale: scales.map(|s| s[scale_row].as_slice()),
        w: lw.as_ref().map(|v| v.map(f64::from)),
        b: lb.as_ref().map(|v| v.map(f64::from).transpose()),
    };
    let mut embed = DMatrix::zeros(n, cfg.d_model);
    for (p, &t) in tokens.iter().enumerate() {
        for j in 0..cfg.d_model {
            let mut x = f64::from(w.w_e[(t as usize, j)]);
            if cfg.positional == PositionalEmbedding::Standard {
                x += f64::from(w.w_pos[(p, j)]);
            }
            embed[(p, j)] = x;
        }
    }

    // Residual-stream components, keyed by the path they travelled (paths through three
    // or more heads collapse into one component per order, so the count stays
    // 2 + heads + virtual heads + orders).
    let mut comps: Vec<(TermKind, DMatrix<f64>)> = vec![
        (TermKind::Direct, embed.clone()),
        (TermKind::Bias, DMatrix::zeros(n, cfg.d_model)),
    ];
    let mut resid = embed;
    for (l, layer) in w.layers.iter().enumerate() {
        let norm = ln(l, &layer.ln1_w, &layer.ln1_b);
        let a: Vec<DMatrix<f64>> = patterns[l].iter().map(to_f64).collect();
        let w_v: Vec<DMatrix<f64>> = layer.w_v.iter().map(to_f64).collect();
        let w_o: Vec<DMatrix<f64>> = layer.w_o.iter().map(to_f64).collect();
        let b_v: Vec<DVector<f64>> = layer.b_v.iter().map(|b| b.map(f64::from)).collect();
        let b_o = layer.b_o.map(f64::from);

        // Dense reference: the whole residual stream through the frozen layer.
        let x = norm.apply(&resid);
        let mut attn_out = DMatrix::zeros(n, cfg.d_model);
        for h in 0..cfg.n_heads {
            let mut v = &x * &w_v[h];
            add_row(&mut v, &b_v[h]);
            attn_out += &a[h] * v * &w_o[h];
        }
        add_row(&mut attn_out, &b_o);
        resid += attn_out;

        // Each component through each head; constants (LN bias, b_V) ride on the bias
        // path. Pattern rows sum to 1, so a constant stays a constant through a head.
        // New components are summed into `new` as they are made (never one matrix per
        // path), and join `comps` after the layer.
        let mut new: Vec<(TermKind, DMatrix<f64>)> = Vec::new();
        for (kind, c) in &comps {
            let mut x = norm.linear(c);
            if *kind == TermKind::Bias {
                norm.add_bias(&mut x);
            }
            for h in 0..cfg.n_heads {
                let mut v = &x * &w_v[h];
                if *kind == TermKind::Bias {
                    add_row(&mut v, &b_v[h]);
                }
                let out = &a[h] * v * &w_o[h];
                let target = kind.then(l, h);
                match new.iter_mut().find(|(k, _)| *k == target) {
                    Some((_, acc)) => *acc += out,
                    None => new.push((target, out)),
                }
            }
        }
        for (kind, c) in new {
            match comps.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, acc)) => *acc += c,
                None => comps.push((kind, c)),
            }
        }
        let bias = comps
            .iter_mut()
            .find(|(k, _)| *k == TermKind::Bias)
            .expect("bias component exists");
        add_row(&mut bias.1, &b_o);
    }

    let fin = ln(cfg.n_layers, &w.ln_final_w, &w.ln_final_b);
    let exact_resid = fin.apply(&resid);
    let mut terms: Vec<Term> = comps
        .into_iter()
        .map(|(kind, c)| {
            let mut x = fin.linear(&c);
            if kind == TermKind::Bias {
                fin.add_bias(&mut x);
            }
            Term { kind, resid: x }
        })
        .collect();
    terms.sort_by(|a, b| {
        let rank = |k: &TermKind| k.order().map_or(usize::MAX, |o| o);
        rank(&a.kind).cmp(&rank(&b.kind)).then(a.kind.cmp(&b.kind))
    });
    Ok(Expansion {
        tokens: tokens.to_vec(),
        terms,
        exact_resid,
        w_u: w.w_u.clone(),
        b_u: w.b_u.map(f64::from),
    })
}

/// Mean next-token loss of `logits` `[pos, vocab]` over positions `0..n-1` predicting
/// `tokens[1..]`.
pub fn next_token_loss(logits: &DMatrix<f64>, tokens: &[u32]) -> f64 {
    let n = tokens.len();
    if n < 2 {
        return f64::NAN;
    }
    let mut total = 0.0;
    for p in 0..n - 1 {
        let row: Vec<f32> = logits.row(p).iter().map(|v| *v as f32).collect();
        // log-softmax in f64 of the f32-rounded row: the rounding is far below the
        // loss differences reported.
        total -= log_softmax(&row)[tokens[p + 1] as usize];
    }
    total / (n - 1) as f64
}

/// Size of one term.
#[derive(Clone, Debug, Serialize)]
pub struct TermSize {
    pub name: String,
    #[serde(flatten)]
    pub kind: TermKind,
    pub order: Option<usize>,
    /// RMS over positions and tokens of the term's logits, each position's mean over
    /// the vocabulary removed (a shift of all logits changes no prediction).
    pub rms: f64,
    /// Mean over positions `0..n-1` of the term's logit for the next token.
    pub mean_next_token_logit: f64,
    /// Loss increase when only this term is dropped.
    pub loss_increase_when_dropped: f64,
}

/// Loss with the terms of one order dropped, and with only orders up to it kept.
#[derive(Clone, Debug, Serialize)]
pub struct OrderImportance {
    pub order: usize,
    pub n_terms: usize,
    /// Loss with every term of this order dropped (all others kept).
    pub loss_without: f64,
    pub loss_increase_when_dropped: f64,
    /// Loss with only the terms of orders `0..=order` (and the biases).
    pub loss_up_to: f64,
}

/// The paper's term-importance measure on one prompt.
#[derive(Clone, Debug, Serialize)]
pub struct TermImportance {
    /// Loss of all terms together (equals the model's loss, up to the sum check).
    pub loss_all_terms: f64,
    /// Loss with the biases alone (no token information).
    pub loss_biases_only: f64,
    pub orders: Vec<OrderImportance>,
    /// Every term, largest loss increase first.
    pub terms: Vec<TermSize>,
}

/// A running `log Σ exp` over a row streamed in chunks.
#[derive(Clone, Copy, Debug)]
struct Lse {
    max: f64,
    sum: f64,
}

impl Lse {
    const EMPTY: Lse = Lse {
        max: f64::NEG_INFINITY,
        sum: 0.0,
    };

    fn add(&mut self, chunk: impl Iterator<Item = f64> + Clone) {
        let m = chunk.clone().fold(self.max, f64::max);
        if m == f64::NEG_INFINITY {
            return;
        }
        let rescale = if self.max == f64::NEG_INFINITY {
            0.0
        } else {
            (self.max - m).exp()
        };
        self.sum = self.sum * rescale + chunk.map(|x| (x - m).exp()).sum::<f64>();
        self.max = m;
    }

    fn value(&self) -> f64 {
        self.max + self.sum.ln()
    }
}

/// Term importance of an expansion (next-token loss over the prompt), streamed over the
/// vocabulary: one product of every term's residual contribution with a block of `W_U`
/// at a time, reduced at once into running log-sum-exps of the logits each loss needs
/// (all terms, all but one term, all but one order, orders up to one, biases alone) and
/// into each term's sums for its RMS. Memory: `terms x positions x VOCAB_BLOCK` floats.
pub fn term_importance(e: &Expansion) -> TermImportance {
    term_importance_with(e, &|| {})
}

/// [`term_importance`], calling `progress` after each block of [`VOCAB_BLOCK`] tokens.
pub fn term_importance_with(e: &Expansion, progress: &dyn Fn()) -> TermImportance {
    let tokens = &e.tokens;
    let n = tokens.len();
    let nt = e.terms.len();
    let d_model = e.exact_resid.ncols();
    let orders: Vec<usize> = {
        let mut o: Vec<usize> = e.terms.iter().filter_map(|t| t.kind.order()).collect();
        o.sort_unstable();
        o.dedup();
        o
    };
    let order_of = |t: &Term| {
        t.kind
            .order()
            .map(|o| orders.iter().position(|x| *x == o).unwrap())
    };
    let term_order: Vec<Option<usize>> = e.terms.iter().map(order_of).collect();
    let bias_term = e.terms.iter().position(|t| t.kind == TermKind::Bias);
    let no = orders.len();
    // Queries per position: all, all - term t (nt), all - order o (no), orders <= o
    // (no), biases alone.
    let nq = 1 + nt + 2 * no + 1;
    let mut stacked = DMatrix::zeros(nt * n, d_model);
    for (i, t) in e.terms.iter().enumerate() {
        stacked.rows_mut(i * n, n).copy_from(&t.resid);
    }
    // Per position: the queries' running log-sum-exps, each term's Σ logit and Σ logit².
    struct PosState {
        lse: Vec<Lse>,
        sum: Vec<f64>,
        sq: Vec<f64>,
    }
    let mut state: Vec<PosState> = (0..n)
        .map(|_| PosState {
            lse: vec![Lse::EMPTY; nq],
            sum: vec![0.0; nt],
            sq: vec![0.0; nt],
        })
        .collect();
    let b_u = &e.b_u;
    e.for_vocab_blocks(&stacked, |start, z| {
        let len = z.nrows();
        state.par_iter_mut().enumerate().for_each(|(p, st)| {
            let b_u_blk = &b_u.as_slice()[start..start + len];
            let mut all = vec![0.0; len];
            let mut by_order = vec![vec![0.0; len]; no];
            let mut bias = vec![0.0; len];
            for (t, order) in term_order.iter().enumerate() {
                let col = z.col_as_slice(t * n + p);
                let is_bias = Some(t) == bias_term;
                let acc = match order {
                    Some(o) => &mut by_order[*o],
                    None => &mut bias,
                };
                let (mut s1, mut s2) = (0.0, 0.0);
                for j in 0..len {
                    let x = col[j] + if is_bias { b_u_blk[j] } else { 0.0 };
                    all[j] += x;
                    acc[j] += x;
                    s1 += x;
                    s2 += x * x;
                }
                st.sum[t] += s1;
                st.sq[t] += s2;
            }
            if p + 1 >= n {
                return;
            }
            st.lse[0].add(all.iter().copied());
            for t in 0..nt {
                let col = z.col_as_slice(t * n + p);
                let is_bias = Some(t) == bias_term;
                st.lse[1 + t].add(
                    (0..len).map(|j| all[j] - col[j] - if is_bias { b_u_blk[j] } else { 0.0 }),
                );
            }
            let mut up_to = bias.clone();
            for (o, without) in by_order.iter().enumerate() {
                st.lse[1 + nt + o].add(all.iter().zip(without).map(|(a, b)| a - b));
                for (u, b) in up_to.iter_mut().zip(without) {
                    *u += b;
                }
                st.lse[1 + nt + no + o].add(up_to.iter().copied());
            }
            st.lse[nq - 1].add(bias.iter().copied());
        });
        progress();
    });

    // Target logits of every query, from the terms' next-token logits.
    let next = e.next_token_logits();
    let scored = n.saturating_sub(1);
    let loss_of = |q: usize, target: &dyn Fn(usize) -> f64| -> f64 {
        if scored == 0 {
            return f64::NAN;
        }
        (0..scored)
            .map(|p| state[p].lse[q].value() - target(p))
            .sum::<f64>()
            / scored as f64
    };
    let all_t = |p: usize| (0..nt).map(|t| next[t][p]).sum::<f64>();
    let order_t = |o: usize, p: usize| {
        (0..nt)
            .filter(|t| term_order[*t] == Some(o))
            .map(|t| next[t][p])
            .sum::<f64>()
    };
    let bias_t = |p: usize| bias_term.map_or(0.0, |b| next[b][p]);
    let loss_all = loss_of(0, &all_t);
    let mut terms: Vec<TermSize> = e
        .terms
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v = e.d_vocab_out() as f64;
            let sq: f64 = state
                .iter()
                .map(|st| st.sq[i] - st.sum[i] * st.sum[i] / v)
                .sum();
            let rms = (sq.max(0.0) / (n as f64 * v).max(1.0)).sqrt();
            let mean_next = next[i].iter().sum::<f64>() / scored.max(1) as f64;
            let without = loss_of(1 + i, &|p| all_t(p) - next[i][p]);
            TermSize {
                name: t.kind.name(),
                kind: t.kind.clone(),
                order: t.kind.order(),
                rms,
                mean_next_token_logit: mean_next,
                loss_increase_when_dropped: without - loss_all,
            }
        })
        .collect();
    terms.sort_by(|a, b| {
        b.loss_increase_when_dropped
            .total_cmp(&a.loss_increase_when_dropped)
    });
    let orders_out = orders
        .iter()
        .enumerate()
        .map(|(oi, &o)| {
            let without = loss_of(1 + nt + oi, &|p| all_t(p) - order_t(oi, p));
            let up_to = loss_of(1 + nt + no + oi, &|p| {
                bias_t(p) + (0..=oi).map(|x| order_t(x, p)).sum::<f64>()
            });
            OrderImportance {
                order: o,
                n_terms: term_order.iter().filter(|x| **x == Some(oi)).count(),
                loss_without: without,
                loss_increase_when_dropped: without - loss_all,
                loss_up_to: up_to,
            }
        })
        .collect();
    TermImportance {
        loss_all_terms: loss_all,
        loss_biases_only: loss_of(nq - 1, &bias_t),
        orders: orders_out,
        terms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::circuits::tests::{model, HeadMats};

    fn pseudo(rows: usize, cols: usize, seed: u64) -> DMatrix<f32> {
        DMatrix::from_fn(rows, cols, |i, j| {
            let x = ((i * 7919 + j * 104_729) as u64 ^ seed.wrapping_mul(0x9E37_79B9)) as f64;
            ((x * 0.618_033_988_7).sin() * 0.7) as f32
        })
    }

    fn causal_uniform(n: usize) -> DMatrix<f32> {
        DMatrix::from_fn(n, n, |q, k| if k <= q { 1.0 / (q + 1) as f32 } else { 0.0 })
    }

    /// A three-layer model with LN parameters and every bias non-zero: the terms
    /// (orders 0..3 and biases) must add up to the dense frozen forward pass.
    #[test]
    fn terms_sum_to_the_dense_frozen_pass() {
        let (d, dh, v) = (6, 2, 7);
        let hm = |s| HeadMats {
            q: pseudo(d, dh, s),
            k: pseudo(d, dh, s + 1),
            v: pseudo(d, dh, s + 2),
            o: pseudo(dh, d, s + 3),
        };
        let mut w = model(
            pseudo(v, d, 1),
            pseudo(d, v, 2),
            vec![
                vec![hm(10), hm(20)],
                vec![hm(30), hm(40)],
                vec![hm(50), hm(60)],
            ],
        );
        w.cfg.normalization = Normalization::LN;
        w.w_pos = pseudo(w.cfg.n_ctx, d, 3);
        for (i, l) in w.layers.iter_mut().enumerate() {
            l.ln1_w = Some(pseudo(d, 1, 70 + i as u64).column(0).add_scalar(1.0));
            l.ln1_b = Some(pseudo(d, 1, 80 + i as u64).column(0).into_owned());
            l.b_o = pseudo(d, 1, 90 + i as u64).column(0).into_owned();
            for h in 0..2 {
                l.b_v[h] = pseudo(dh, 1, 100 + i as u64 * 2 + h as u64)
                    .column(0)
                    .into_owned();
            }
        }
        w.ln_final_w = Some(pseudo(d, 1, 5).column(0).add_scalar(1.0));
        w.ln_final_b = Some(pseudo(d, 1, 6).column(0).into_owned());
        w.b_u = pseudo(v, 1, 7).column(0).into_owned();
        let tokens = [1u32, 4, 2, 6, 0];
        let n = tokens.len();
        let patterns = vec![vec![causal_uniform(n); 2]; 3];
        let scales: Vec<Vec<f32>> = (0..4)
            .map(|l| (0..n).map(|p| 0.5 + 0.1 * (l * n + p) as f32).collect())
            .collect();
        let e = expand(&w, &tokens, &patterns, Some(&scales)).unwrap();
        let names: Vec<String> = e.terms.iter().map(|t| t.kind.name()).collect();
        // 1 direct + 6 heads + (2*4 + 2*2) virtual + order 3 + biases.
        assert_eq!(names.len(), 1 + 6 + 12 + 1 + 1, "{names:?}");
        assert_eq!(names[0], "direct");
        assert_eq!(names.last().unwrap(), "biases");
        assert!(names.contains(&"L0H1>L2H0".to_string()));
        assert!(names.contains(&"order3".to_string()));
        let exact = e.exact();
        let err = (e.total() - &exact).abs().max();
        assert!(err < 1e-10 * exact.abs().max().max(1.0), "{err}");

        // Each order's terms are non-trivial here (random weights), and dropping nothing
        // reproduces the full loss.
        let imp = term_importance(&e);
        assert_eq!(imp.orders.len(), 4);
        assert!(
            (imp.loss_all_terms - next_token_loss(&exact, &tokens)).abs() < 1e-6,
            "{imp:?}"
        );
        assert!((imp.orders[3].loss_up_to - imp.loss_all_terms).abs() < 1e-6);
    }

    /// A one-layer model with a single copying head that attends to the previous token:
    /// its term is exactly W_E[t_{p-1}] W_OV W_U.
    #[test]
    fn single_head_term_is_the_ov_circuit_of_the_attended_token() {
        let d = 4;
        let eye = DMatrix::<f32>::identity(d, d);
        let w = model(
            eye.clone(),
            eye.clone(),
            vec![vec![HeadMats {
                q: eye.clone(),
                k: eye.clone(),
                v: eye.clone(),
                o: eye.clone() * 2.0,
            }]],
        );
        let tokens = [0u32, 3, 1, 2];
        let n = tokens.len();
        let prev = DMatrix::from_fn(n, n, |q, k| {
            if k + 1 == q || (q == 0 && k == 0) {
                1.0
            } else {
                0.0
            }
        });
        let e = expand(&w, &tokens, &[vec![prev]], None).unwrap();
        assert_eq!(e.terms[1].kind, TermKind::Head { layer: 0, head: 0 });
        let head = e.term_logits(1);
        for p in 1..n {
            for t in 0..d {
                let want = if t as u32 == tokens[p - 1] { 2.0 } else { 0.0 };
                assert_eq!(head[(p, t)], want);
            }
        }
        // Direct path: identity embedding/unembedding.
        assert_eq!(e.term_logits(0)[(2, 1)], 1.0);
    }

    /// The streamed importance (vocabulary in blocks, running log-sum-exps) equals the
    /// dense computation on every term, order and RMS, with a vocabulary of several
    /// blocks and an uneven last one.
    #[test]
    fn streamed_importance_equals_the_dense_one() {
        let (d, dh, v) = (6, 2, 2 * VOCAB_BLOCK + 77);
        let hm = |s| HeadMats {
            q: pseudo(d, dh, s),
            k: pseudo(d, dh, s + 1),
            v: pseudo(d, dh, s + 2),
            o: pseudo(dh, d, s + 3),
        };
        let mut w = model(
            pseudo(v, d, 1),
            pseudo(d, v, 2),
            vec![
                vec![hm(10), hm(20)],
                vec![hm(30), hm(40)],
                vec![hm(50), hm(60)],
            ],
        );
        w.b_u = pseudo(v, 1, 7).column(0).into_owned();
        let tokens = [1u32, 400, 2, v as u32 - 1, 0, 77];
        let n = tokens.len();
        let patterns = vec![vec![causal_uniform(n); 2]; 3];
        let e = expand(&w, &tokens, &patterns, None).unwrap();
        let imp = term_importance(&e);
        let all = e.total();
        let loss_all = next_token_loss(&all, &tokens);
        assert!((imp.loss_all_terms - loss_all).abs() < 1e-6);
        for (i, t) in e.terms.iter().enumerate() {
            let logits = e.term_logits(i);
            let want = next_token_loss(&(&all - &logits), &tokens) - loss_all;
            let got = imp.terms.iter().find(|x| x.name == t.kind.name()).unwrap();
            assert!(
                (got.loss_increase_when_dropped - want).abs() < 1e-6,
                "{}: {} vs {want}",
                got.name,
                got.loss_increase_when_dropped
            );
            let mut sq = 0.0;
            for row in logits.row_iter() {
                let mean = row.mean();
                sq += row.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
            }
            let rms = (sq / logits.len() as f64).sqrt();
            assert!((got.rms - rms).abs() < 1e-9 * rms.max(1.0), "{}", got.name);
            let mean_next = (0..n - 1)
                .map(|p| logits[(p, tokens[p + 1] as usize)])
                .sum::<f64>()
                / (n - 1) as f64;
            assert!((got.mean_next_token_logit - mean_next).abs() < 1e-9);
        }
        for o in &imp.orders {
            let without = next_token_loss(&e.sum_where(|k| k.order() != Some(o.order)), &tokens);
            let up_to = next_token_loss(
                &e.sum_where(|k| k.order().is_none_or(|x| x <= o.order)),
                &tokens,
            );
            assert!((o.loss_without - without).abs() < 1e-6, "{o:?}");
            assert!((o.loss_up_to - up_to).abs() < 1e-6, "{o:?}");
        }
        let bias = next_token_loss(&e.sum_where(|k| *k == TermKind::Bias), &tokens);
        assert!((imp.loss_biases_only - bias).abs() < 1e-6);
        // The streamed sum check agrees with the dense one.
        let model: Vec<Vec<f32>> = (0..n)
            .map(|p| (0..v).map(|j| all[(p, j)] as f32 + 0.5).collect())
            .collect();
        let (vs_model, vs_exact, max_logit) = e.sum_check(&model);
        assert!((vs_model - 0.5).abs() < 1e-4, "{vs_model}");
        assert!(vs_exact < 1e-10);
        assert!(max_logit > 0.0);
    }
}
