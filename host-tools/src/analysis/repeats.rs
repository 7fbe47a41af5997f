//! How a prompt's repeats are completed — the induction circuit seen on one real prompt:
//! at every position whose token (and next token) already appeared earlier, the
//! probability the model gives the right next token, the same with some heads ablated,
//! and where one head attends from there (the token after the earlier copy, for an
//! induction head).

use serde::Serialize;
use tinylens_core::intervene::{Ablation, AblationMode, HeadRef};
use tinylens_core::{Model, Session};

use super::recorded::record;
use crate::numerics::log_softmax;
use crate::Result;

/// One position inside a repeat.
#[derive(Debug, Clone, Serialize)]
pub struct RepeatPosition {
    /// Query position `q`: `tokens[q]` and `tokens[q + 1]` appeared at `earlier` and
    /// `earlier + 1`.
    pub pos: usize,
    pub earlier: usize,
    /// The token to predict, `tokens[q + 1]`.
    pub next: u32,
    /// P(next) with the whole model.
    pub p: f64,
    /// P(next) with the heads ablated.
    pub p_ablated: f64,
    /// The model's top token here.
    pub top: u32,
    /// The head's strongest keys: `(key position, attention)`, best first.
    pub attends: Vec<(usize, f32)>,
}

/// The repeats of a prompt and how the model completes them.
#[derive(Debug, Clone, Serialize)]
pub struct RepeatCompletion {
    pub tokens: Vec<u32>,
    /// The heads ablated for `p_ablated`, and the head whose attention is shown.
    pub ablated: Vec<[usize; 2]>,
    pub head: Option<[usize; 2]>,
    pub positions: Vec<RepeatPosition>,
}

/// Positions `q` (with `q + 1 < len`) whose bigram `tokens[q], tokens[q + 1]` occurred
/// before, with the latest such earlier `k`; BOS-like position 0 is never a match.
pub fn repeats(tokens: &[u32]) -> Vec<(usize, usize)> {
    let n = tokens.len();
    (1..n.saturating_sub(1))
        .filter_map(|q| {
            (1..q)
                .rev()
                .find(|&k| tokens[k] == tokens[q] && tokens[k + 1] == tokens[q + 1])
                .map(|k| (q, k))
        })
        .collect()
}

fn probabilities(
    model: &Model<'_>,
    tokens: &[u32],
    ablation: Option<(&[HeadRef], AblationMode<'_>)>,
) -> Result<Vec<Vec<f64>>> {
    let cfg = *model.config();
    let mut ws = vec![0.0f32; cfg.workspace_len()];
    let mut s = Session::new(model, &mut ws)?;
    let mut hook = match ablation {
        Some((heads, mode)) => Some(Ablation::new(&cfg, heads, mode)?),
        None => None,
    };
    let mut out = Vec::with_capacity(tokens.len());
    for &t in tokens {
        let logits = match hook.as_mut() {
            Some(h) => s.step_with(t, h)?,
            None => s.step(t)?,
        };
        out.push(log_softmax(logits).iter().map(|v| v.exp()).collect());
    }
    Ok(out)
}

/// The repeats of `tokens` completed by `model`, with `ablated` heads mean-ablated
/// (`means`: `[n_layers][n_heads][d_model]`) or zero-ablated (`means` None), and the
/// attention of `head` at each repeat position (its `top` strongest keys).
pub fn complete_repeats(
    model: &Model<'_>,
    tokens: &[u32],
    ablated: &[HeadRef],
    means: Option<&[f32]>,
    head: Option<HeadRef>,
    top: usize,
) -> Result<RepeatCompletion> {
    let full = probabilities(model, tokens, None)?;
    let mode = means.map_or(AblationMode::Zero, AblationMode::Mean);
    let abl = if ablated.is_empty() {
        full.clone()
    } else {
        probabilities(model, tokens, Some((ablated, mode)))?
    };
    let patterns = match head {
        // `patterns()` reads every layer's pattern.
        Some(_) => {
            let rec = record(model, tokens, &["blocks.*.attn.hook_pattern".to_string()])?;
            Some(rec.patterns()?)
        }
        None => None,
    };
    let positions = repeats(tokens)
        .into_iter()
        .map(|(q, k)| {
            let next = tokens[q + 1];
            let row = &full[q];
            let top_token = (0..row.len())
                .max_by(|a, b| row[*a].total_cmp(&row[*b]))
                .unwrap_or(0) as u32;
            let attends = match (&patterns, head) {
                (Some(p), Some((l, h))) => {
                    let m = &p[l as usize][h as usize];
                    let mut keys: Vec<(usize, f32)> = (0..=q).map(|j| (j, m[(q, j)])).collect();
                    keys.sort_by(|a, b| b.1.total_cmp(&a.1));
                    keys.truncate(top);
                    keys
                }
                _ => Vec::new(),
            };
            RepeatPosition {
                pos: q,
                earlier: k,
                next,
                p: row[next as usize],
                p_ablated: abl[q][next as usize],
                top: top_token,
                attends,
            }
        })
        .collect();
    Ok(RepeatCompletion {
        tokens: tokens.to_vec(),
        ablated: ablated
            .iter()
            .map(|&(l, h)| [l as usize, h as usize])
            .collect(),
        head: head.map(|(l, h)| [l as usize, h as usize]),
        positions,
    })
}

#[cfg(test)]
mod tests {
    use super::repeats;

    #[test]
    fn repeats_are_earlier_bigrams() {
        // BOS a b c x a b c
        let t = [0, 1, 2, 3, 9, 1, 2, 3];
        assert_eq!(repeats(&t), vec![(5, 1), (6, 2)]);
        assert!(repeats(&[0, 1, 2, 3]).is_empty());
    }
}
