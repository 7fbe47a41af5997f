//! The dynamic analyses of recorded runs, as the commands, the report and the demo use
//! them: head-detector scores averaged over recordings, direct logit attribution of a
//! recording, and the frozen-attention path expansion checked against its logits.

use indicatif::ProgressBar;
use serde::Serialize;
use tinylens_core::Model;

use super::attribution::{
    direct_logit_attribution, expand, term_importance_with, Dla, Expansion, TermImportance,
    VOCAB_BLOCK,
};
use super::heads::{detect_batch, DetectOptions, HeadKind, LayerPatterns};
use super::recorded::Recording;
use crate::convert::weights_from_model;
use crate::weights::Weights;
use crate::Result;

/// Previous-token, duplicate-token and induction scores `[layer][head]` of every head,
/// averaged over recordings (TL's mean of per-sequence scores).
pub fn score(recordings: &[Recording], opts: DetectOptions) -> Result<[Vec<Vec<f64>>; 3]> {
    let patterns = recordings
        .iter()
        .map(|r| r.patterns())
        .collect::<Result<Vec<_>>>()?;
    let batch: Vec<(&[u32], &LayerPatterns)> = recordings
        .iter()
        .zip(&patterns)
        .map(|(r, p)| (r.tokens.as_slice(), p.as_slice()))
        .collect();
    Ok([
        detect_batch(&batch, HeadKind::PreviousToken, opts)?,
        detect_batch(&batch, HeadKind::DuplicateToken, opts)?,
        detect_batch(&batch, HeadKind::Induction, opts)?,
    ])
}

/// Heads scoring at least `threshold`, best first, as `(layer, head, score)`.
pub fn top_heads(values: &[Vec<f64>], threshold: f64) -> Vec<(usize, usize, f64)> {
    let mut out: Vec<(usize, usize, f64)> = values
        .iter()
        .enumerate()
        .flat_map(|(l, row)| row.iter().enumerate().map(move |(h, v)| (l, h, *v)))
        .filter(|x| x.2 >= threshold)
        .collect();
    out.sort_by(|a, b| b.2.total_cmp(&a.2));
    out
}

/// Direct logit attribution of a recording.
pub fn attribute(model: &Model<'_>, rec: &Recording, target: Option<u32>) -> Result<Dla> {
    attribute_with(&weights_from_model(model), rec, target)
}

/// [`attribute`] with the model's weights already read (a report attributes many
/// prompts with one set of weights).
pub fn attribute_with(w: &Weights, rec: &Recording, target: Option<u32>) -> Result<Dla> {
    let results = (0..w.cfg.n_layers)
        .map(|l| rec.results(l))
        .collect::<Result<Vec<_>>>()?;
    direct_logit_attribution(
        w,
        &rec.tokens,
        &rec.rows("hook_embed")?,
        &rec.rows("hook_pos_embed")?,
        &results,
        rec.final_scale()?.as_deref(),
        rec.logits()?,
        target,
    )
}

/// How well the terms of a path expansion add up.
#[derive(Debug, Clone, Serialize)]
pub struct SumCheck {
    /// max |Σ terms − model logits| over every position and token.
    pub max_abs_error_vs_model: f64,
    /// max |Σ terms − the same frozen pass computed densely in f64|.
    pub max_abs_error_vs_exact: f64,
    /// max |model logits| (for scale).
    pub max_abs_logit: f64,
}

/// `tinylens paths` output (its JSON).
#[derive(Debug, Clone, Serialize)]
pub struct PathsReport {
    pub tokens: Vec<u32>,
    /// The model's own next-token loss on the prompt.
    pub model_loss: f64,
    pub sum_check: SumCheck,
    pub importance: TermImportance,
    /// Per term, its logit for the next token at each position `0..n-1`.
    pub next_token_logits: Vec<(String, Vec<f64>)>,
}

/// Expands a recording; checks the sum against the recorded logits.
pub fn paths_of(model: &Model<'_>, rec: &Recording) -> Result<(Expansion, PathsReport)> {
    paths_with_progress(model, rec, &ProgressBar::hidden())
}

/// [`paths_of`], advancing `pb` (its length set here) through the expansion, the sum
/// check and the term importance's vocabulary blocks.
pub fn paths_with_progress(
    model: &Model<'_>,
    rec: &Recording,
    pb: &ProgressBar,
) -> Result<(Expansion, PathsReport)> {
    let w = weights_from_model(model);
    let blocks = (w.cfg.d_vocab_out as u64).div_ceil(VOCAB_BLOCK as u64);
    pb.set_length(pb.position() + 2 + blocks);
    let patterns = rec.patterns()?;
    let scales = rec.ln_scales()?;
    let e = expand(&w, &rec.tokens, &patterns, scales.as_deref())?;
    pb.inc(1);
    let logits = rec.logits()?;
    let (vs_model, vs_exact, max_logit) = e.sum_check(logits);
    pb.inc(1);
    let n = rec.tokens.len();
    let model_loss = (0..n.saturating_sub(1))
        .map(|p| crate::numerics::loss(&logits[p], rec.tokens[p + 1]))
        .sum::<f64>()
        / n.saturating_sub(1).max(1) as f64;
    let next_token_logits = e
        .terms
        .iter()
        .map(|t| t.kind.name())
        .zip(e.next_token_logits())
        .collect();
    let report = PathsReport {
        tokens: rec.tokens.clone(),
        model_loss,
        sum_check: SumCheck {
            max_abs_error_vs_model: vs_model,
            max_abs_error_vs_exact: vs_exact,
            max_abs_logit: max_logit,
        },
        importance: term_importance_with(&e, &|| pb.inc(1)),
        next_token_logits,
    };
    Ok((e, report))
}
