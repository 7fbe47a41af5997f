//! What quantization did to the model's circuits: the quantized blob against the float
//! weights on the calibration data — KL and top-1 agreement of the predictions, and per
//! head the previous-token and induction scores (TransformerLens's head detector on the
//! patterns each model computes) and the copying score of the full OV circuit, before
//! and after, with the largest change named.

use nalgebra::DMatrix;
use serde::Serialize;
use tinylens_core::{HookPoint, Hooks, Model, Session, Site};

use crate::analysis::circuits::copying_scores;
use crate::analysis::heads::{detect_batch, DetectOptions, HeadKind, LayerPatterns};
use crate::analysis::vocab::Vocab;
use crate::convert::weights_from_model;
use crate::Result;

use super::{agreement_on, Agreement};

/// One score of one head, before and after quantization.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Change {
    pub float: f64,
    pub quantized: f64,
}

impl Change {
    pub fn delta(&self) -> f64 {
        self.quantized - self.float
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HeadSurvival {
    pub layer: usize,
    pub head: usize,
    pub previous_token: Change,
    pub induction: Change,
    /// None when the full OV circuit has no eigenvalues (d_vocab != d_vocab_out).
    pub copying: Option<Change>,
}

/// The largest change of any head score.
#[derive(Debug, Clone, Serialize)]
pub struct LargestChange {
    pub layer: usize,
    pub head: usize,
    pub score: &'static str,
    pub float: f64,
    pub quantized: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Survival {
    pub agreement: Agreement,
    /// The head detector's options (TL's `exclude_bos` is set when every prompt starts
    /// with the same token).
    pub detect: DetectOptions,
    pub sequences: usize,
    pub heads: Vec<HeadSurvival>,
    pub largest_change: Option<LargestChange>,
    /// Heads with an induction score of at least 0.5 in float that fell below it.
    pub lost_induction_heads: Vec<(usize, usize)>,
}

/// Attention patterns of every head over one prompt.
struct Patterns {
    rows: Vec<Vec<Vec<Vec<f32>>>>,
}

impl Hooks for Patterns {
    fn wants(&self, point: HookPoint) -> bool {
        point == HookPoint::Pattern
    }

    fn hook(&mut self, site: Site, value: &mut [f32]) {
        if let Some(h) = site.head {
            self.rows[site.layer as usize][h as usize].push(value.to_vec());
        }
    }
}

fn patterns(model: &Model<'_>, tokens: &[u32]) -> Result<Vec<Vec<DMatrix<f32>>>> {
    let c = model.config();
    let (nl, nh) = (c.n_layers as usize, c.n_heads as usize);
    let mut p = Patterns {
        rows: vec![vec![Vec::new(); nh]; nl],
    };
    let mut ws = vec![0.0f32; c.workspace_len()];
    let mut s = Session::new(model, &mut ws)?;
    s.prefill(tokens, &mut p)?;
    let n = tokens.len();
    Ok(p.rows
        .into_iter()
        .map(|layer| {
            layer
                .into_iter()
                .map(|rows| DMatrix::from_fn(n, n, |q, k| rows[q].get(k).copied().unwrap_or(0.0)))
                .collect()
        })
        .collect())
}

/// `[previous_token, induction]`, each `[layer][head]`, of `model` over `prompts` (TL's
/// mean of per-sequence scores).
pub fn head_scores(
    model: &Model<'_>,
    prompts: &[Vec<u32>],
    opts: DetectOptions,
) -> Result<[Vec<Vec<f64>>; 2]> {
    let pats = prompts
        .iter()
        .map(|p| patterns(model, p))
        .collect::<Result<Vec<_>>>()?;
    let batch: Vec<(&[u32], &LayerPatterns)> = prompts
        .iter()
        .map(|p| p.as_slice())
        .zip(pats.iter().map(|p| p.as_slice()))
        .collect();
    Ok([
        detect_batch(&batch, HeadKind::PreviousToken, opts)?,
        detect_batch(&batch, HeadKind::Induction, opts)?,
    ])
}

/// Survival of the circuits of `float` in `quantized` over `prompts` (each of at least
/// two tokens; longer prompts than the context are refused by the core).
pub fn survival(
    float: &Model<'_>,
    quantized: &Model<'_>,
    prompts: &[Vec<u32>],
) -> Result<Survival> {
    let prompts: Vec<Vec<u32>> = prompts.iter().filter(|p| p.len() >= 2).cloned().collect();
    let agreement = agreement_on(float, quantized, &prompts)?;
    // TL's defaults, except that a BOS column (attention parked on the first token)
    // is left out when the prompts start with the same token, as the demo's do.
    let opts = DetectOptions {
        exclude_bos: prompts.len() > 1 && prompts.iter().all(|p| p[0] == prompts[0][0]),
        exclude_current_token: false,
    };
    let [prev_f, ind_f] = head_scores(float, &prompts, opts)?;
    let [prev_q, ind_q] = head_scores(quantized, &prompts, opts)?;
    let copying = |m: &Model<'_>| {
        let w = weights_from_model(m);
        copying_scores(&Vocab::new(&w)).ok()
    };
    let (copy_f, copy_q) = (copying(float), copying(quantized));
    let mut heads = Vec::new();
    let mut largest: Option<LargestChange> = None;
    let mut lost = Vec::new();
    for l in 0..prev_f.len() {
        for h in 0..prev_f[l].len() {
            let change = |f: &[Vec<f64>], q: &[Vec<f64>]| Change {
                float: f[l][h],
                quantized: q[l][h],
            };
            let hs = HeadSurvival {
                layer: l,
                head: h,
                previous_token: change(&prev_f, &prev_q),
                induction: change(&ind_f, &ind_q),
                copying: copy_f
                    .as_ref()
                    .zip(copy_q.as_ref())
                    .map(|(f, q)| change(f, q)),
            };
            if hs.induction.float >= 0.5 && hs.induction.quantized < 0.5 {
                lost.push((l, h));
            }
            for (score, c) in [
                ("previous_token", Some(hs.previous_token)),
                ("induction", Some(hs.induction)),
                ("copying", hs.copying),
            ] {
                let Some(c) = c else { continue };
                if c.delta().is_finite()
                    && largest
                        .as_ref()
                        .is_none_or(|b| c.delta().abs() > (b.quantized - b.float).abs())
                {
                    largest = Some(LargestChange {
                        layer: l,
                        head: h,
                        score,
                        float: c.float,
                        quantized: c.quantized,
                    });
                }
            }
            heads.push(hs);
        }
    }
    Ok(Survival {
        agreement,
        detect: opts,
        sequences: prompts.len(),
        heads,
        largest_change: largest,
        lost_induction_heads: lost,
    })
}

/// The survival report as text lines.
pub fn text(s: &Survival) -> String {
    let mut out = String::new();
    let a = &s.agreement;
    // Positions where the float model predicts (top-1 probability >= 0.5); an untrained
    // model has none, and a percentage of none is not a figure.
    let predicted = if a.predicted > 0 {
        format!(
            "{:.2}% of {} predicted positions",
            100.0 * a.top1_predicted,
            a.predicted
        )
    } else {
        "no position where the float model predicts (top-1 >= 0.5)".to_string()
    };
    out.push_str(&format!(
        "circuit survival over {} calibration sequences: mean KL(float || quantized) {:.5}, top-1 {predicted} ({:.2}% of all)\n",
        s.sequences,
        a.mean_kl,
        100.0 * a.top1_all
    ));
    out.push_str(&format!(
        "  {:<6} {:>17} {:>17} {:>17}\n",
        "head", "previous-token", "induction", "copying"
    ));
    let cell = |c: Option<Change>| match c {
        Some(c) => format!("{:>7.3} -> {:>6.3}", c.float, c.quantized),
        None => format!("{:>17}", "-"),
    };
    for h in &s.heads {
        out.push_str(&format!(
            "  {:<6} {} {} {}\n",
            format!("L{}H{}", h.layer, h.head),
            cell(Some(h.previous_token)),
            cell(Some(h.induction)),
            cell(h.copying)
        ));
    }
    if let Some(c) = &s.largest_change {
        out.push_str(&format!(
            "  largest change: L{}H{} {} score {:.3} -> {:.3} ({:+.3})\n",
            c.layer,
            c.head,
            c.score,
            c.float,
            c.quantized,
            c.quantized - c.float
        ));
    }
    out
}
