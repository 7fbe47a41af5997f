//! `tinylens paths`: the path expansion of the paper with attention frozen. The prompt
//! runs once with probes; its patterns and LayerNorm scales (from the trace) are frozen,
//! which makes the logits an affine function of the embeddings, split exactly into the
//! direct path, one term per head, one per virtual head `h1 → h2`, higher orders and the
//! bias terms. The sum is checked against the model's logits, and each term's (and each
//! order's) importance is the loss increase when it is dropped.

use std::path::PathBuf;

use clap::Args;
use tinylens_core::Model;

pub use crate::analysis::dynamic::{paths_of, paths_with_progress, PathsReport, SumCheck};
use crate::analysis::progress::progress_bar;
use crate::analysis::recorded::{analysis_probes, record};
use crate::prompts::PromptArgs;
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
}

pub fn report(a: &PathsArgs) -> Result<PathsReport> {
    let bytes = cli::read_input(&a.model)?;
    let model = Model::from_bytes(&bytes)?;
    let p = a.prompt.prompt(&model, &bytes)?;
    if p.tokens.len() < 2 {
        return Err(Error::Argument(
            "the path expansion's loss needs at least 2 tokens".into(),
        ));
    }
    let pb = progress_bar(1, "paths", "steps");
    let rec = record(&model, &p.tokens, &analysis_probes(model.config()))?;
    pb.inc(1);
    let r = paths_with_progress(&model, &rec, &pb)?.1;
    pb.finish_and_clear();
    Ok(r)
}

/// What `tinylens paths --json` prints.
pub fn json(a: &PathsArgs) -> Result<serde_json::Value> {
    serde_json::to_value(report(a)?).map_err(|e| Error::Argument(e.to_string()))
}

pub fn run(a: PathsArgs) -> Result<()> {
    let r = report(&a)?;
    let quantized = {
        let bytes = cli::read_input(&a.model)?;
        cli::storage_summary(&Model::from_bytes(&bytes)?) != "f32"
    };
    if a.json {
        cli::print_json(&r)?;
        return Ok(());
    }
    let c = &r.sum_check;
    outln!(
        "frozen-attention path expansion of {} tokens: {} terms",
        r.tokens.len(),
        r.importance.terms.len()
    )?;
    outln!(
        "sum of all terms vs the model's logits: max |error| {:.2e} (logits up to {:.2}); \
         vs the same frozen pass in f64: {:.2e}",
        c.max_abs_error_vs_model,
        c.max_abs_logit,
        c.max_abs_error_vs_exact
    )?;
    if quantized {
        outln!(
            "(a quantized blob: the device rounds every matrix-vector input to int8, which no \
             linear split contains; an f32 blob of the same model agrees to float precision)"
        )?;
    }
    let t = &r.importance;
    outln!(
        "\nloss: model {:.4}, all terms {:.4}, biases only {:.4}",
        r.model_loss,
        t.loss_all_terms,
        t.loss_biases_only
    )?;
    outln!("order  terms  loss without  increase  loss with orders <= this")?;
    for o in &t.orders {
        outln!(
            "{:>5} {:>6} {:>13.4} {:>+9.4} {:>25.4}",
            o.order,
            o.n_terms,
            o.loss_without,
            o.loss_increase_when_dropped,
            o.loss_up_to
        )?;
    }
    outln!(
        "\nterm            order   RMS logit  mean next-token logit  loss increase when dropped"
    )?;
    for term in t.terms.iter().take(a.top) {
        outln!(
            "{:<15} {:>5} {:>11.3} {:>22.3} {:>27.4}",
            term.name,
            term.order.map_or("-".into(), |o| o.to_string()),
            term.rms,
            term.mean_next_token_logit,
            term.loss_increase_when_dropped
        )?;
    }
    if t.terms.len() > a.top {
        outln!("... {} more (--top, --json)", t.terms.len() - a.top)?;
    }
    Ok(())
}
