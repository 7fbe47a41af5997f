//! `tinylens paths`: the path expansion of the paper with attention frozen. The prompt
//! runs once with probes; its patterns and LayerNorm scales (from the trace) are frozen,
//! which makes the logits an affine function of the embeddings, split exactly into the
//! direct path, one term per head, one per virtual head `h1 → h2`, higher orders and the
//! bias terms. The sum is checked against the model's logits, and each term's (and each
//! order's) importance is the loss increase when it is dropped.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use tinylens_core::Model;

use super::heads::PromptArgs;
use crate::analysis::attribution::{expand, term_importance, Expansion, TermImportance};
use crate::analysis::progress::with_threads;
use crate::analysis::recorded::{analysis_probes, record, Recording};
use crate::convert::weights_from_model;
use crate::{cli, Error, Result};

#[derive(Debug, Args)]
pub struct PathsArgs {
    /// Model blob.
    pub model: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Rows of the table of terms.
    #[arg(long, default_value_t = 12)]
    pub top: usize,
    /// Print the expansion as JSON (sum_check, importance with orders and terms, next_token_logits).
    #[arg(long)]
    pub json: bool,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// How well the terms add up.
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
    let w = weights_from_model(model);
    let patterns = rec.patterns()?;
    let scales = rec.ln_scales()?;
    let e = expand(&w, &rec.tokens, &patterns, scales.as_deref())?;
    let logits = rec.logits()?;
    let (vs_model, vs_exact, max_logit) = e.sum_check(logits);
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
        importance: term_importance(&e),
        next_token_logits,
    };
    Ok((e, report))
}

pub fn report(a: &PathsArgs) -> Result<PathsReport> {
    let bytes = cli::read_input(&a.model)?;
    let model = Model::from_bytes(&bytes)?;
    let p = a.prompt.prompts(&model, 1)?.remove(0);
    if p.tokens.len() < 2 {
        return Err(Error::Argument(
            "the path expansion's loss needs at least 2 tokens".into(),
        ));
    }
    let rec = record(&model, &p.tokens, &analysis_probes(model.config()))?;
    with_threads(a.threads, || paths_of(&model, &rec).map(|r| r.1))?
}

/// What `tinylens paths --json` prints.
pub fn json(a: &PathsArgs) -> Result<serde_json::Value> {
    serde_json::to_value(report(a)?).map_err(|e| Error::Argument(e.to_string()))
}

pub fn run(a: PathsArgs) -> Result<()> {
    let r = report(&a)?;
    let quantized = {
        let bytes = cli::read_input(&a.model)?;
        super::circuits::storage_summary(&Model::from_bytes(&bytes)?) != "f32"
    };
    if a.json {
        cli::print_json(&r)?;
        return Ok(());
    }
    let c = &r.sum_check;
    println!(
        "frozen-attention path expansion of {} tokens: {} terms",
        r.tokens.len(),
        r.importance.terms.len()
    );
    println!(
        "sum of all terms vs the model's logits: max |error| {:.2e} (logits up to {:.2}); \
         vs the same frozen pass in f64: {:.2e}",
        c.max_abs_error_vs_model, c.max_abs_logit, c.max_abs_error_vs_exact
    );
    if quantized {
        println!(
            "(a quantized blob: the device rounds every matrix-vector input to int8, which no \
             linear split contains; an f32 blob of the same model agrees to float precision)"
        );
    }
    let t = &r.importance;
    println!(
        "\nloss: model {:.4}, all terms {:.4}, biases only {:.4}",
        r.model_loss, t.loss_all_terms, t.loss_biases_only
    );
    println!("order  terms  loss without  increase  loss with orders <= this");
    for o in &t.orders {
        println!(
            "{:>5} {:>6} {:>13.4} {:>+9.4} {:>25.4}",
            o.order, o.n_terms, o.loss_without, o.loss_increase_when_dropped, o.loss_up_to
        );
    }
    println!(
        "\nterm            order   RMS logit  mean next-token logit  loss increase when dropped"
    );
    for term in t.terms.iter().take(a.top) {
        println!(
            "{:<15} {:>5} {:>11.3} {:>22.3} {:>27.4}",
            term.name,
            term.order.map_or("-".into(), |o| o.to_string()),
            term.rms,
            term.mean_next_token_logit,
            term.loss_increase_when_dropped
        );
    }
    if t.terms.len() > a.top {
        println!("... {} more (--top, --json)", t.terms.len() - a.top);
    }
    Ok(())
}
