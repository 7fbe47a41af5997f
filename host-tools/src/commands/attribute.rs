//! `tinylens attribute`: direct logit attribution per head and position, from values
//! recorded through the probe/trace path, with the final LayerNorm's scale frozen at
//! its recorded value; the pieces (direct path, heads, biases) add up to the logit, and
//! the residual error against the model's own logit is printed.

use std::path::PathBuf;

use clap::Args;
use tinylens_core::Model;

use crate::analysis::attribution::{Dla, TargetSource};
pub use crate::analysis::dynamic::attribute;
use crate::analysis::progress::progress_bar;
use crate::analysis::recorded::{analysis_probes, Recording};
use crate::convert::vocab_of;
use crate::prompts::PromptArgs;
use crate::{cli, Error, Result};

#[derive(Debug, Args)]
pub struct AttributeArgs {
    /// Model blob.
    pub model: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Attribute from a recorded trace instead (it must hold hook_embed, hook_pos_embed,
    /// blocks.*.attn.hook_result, ln_final.hook_scale with LayerNorm, and logits).
    #[arg(long, conflicts_with_all = ["tokens", "text", "repeated"])]
    pub trace: Option<PathBuf>,
    /// Attribute the logit of this token at every position (default: each position's
    /// next token; the last position: the model's top prediction).
    #[arg(long)]
    pub target: Option<u32>,
    /// Print the attribution as JSON (targets, direct, heads [layer][head][pos], biases, sum, model_logit, residual_error).
    #[arg(long)]
    pub json: bool,
}

/// The recording of the prompt (or trace) with everything attribution needs.
pub fn recording(
    model: &Model<'_>,
    blob: &[u8],
    prompt: &PromptArgs,
    trace: Option<&PathBuf>,
) -> Result<Recording> {
    crate::prompts::recording(model, blob, prompt, trace, &analysis_probes(model.config()))
}

/// Records the prompt (or reads the trace) and attributes it, with a progress bar.
fn attribution(model: &Model<'_>, bytes: &[u8], a: &AttributeArgs) -> Result<Dla> {
    let pb = progress_bar(2, "attributing", "steps");
    let rec = recording(model, bytes, &a.prompt, a.trace.as_ref())?;
    pb.inc(1);
    let dla = attribute(model, &rec, a.target)?;
    pb.finish_and_clear();
    Ok(dla)
}

/// What `tinylens attribute --json` prints.
pub fn json(a: &AttributeArgs) -> Result<serde_json::Value> {
    let bytes = cli::read_input(&a.model)?;
    let model = Model::from_bytes(&bytes)?;
    let dla = attribution(&model, &bytes, a)?;
    serde_json::to_value(&dla).map_err(|e| Error::Argument(e.to_string()))
}

pub fn run(a: AttributeArgs) -> Result<()> {
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json(&a)?).map_err(|e| Error::Argument(e.to_string()))?
        )?;
        return Ok(());
    }
    let bytes = cli::read_input(&a.model)?;
    let model = Model::from_bytes(&bytes)?;
    let d = attribution(&model, &bytes, &a)?;
    let vocab = vocab_of(&model);
    let lab = |t: u32| cli::token_label(vocab.as_deref(), t);
    let (nl, nh) = (d.heads.len(), d.heads.first().map_or(0, |h| h.len()));
    outln!(
        "direct logit attribution: each piece's contribution to the target's logit through the \
         final LayerNorm{} (target: the next token{})",
        if d.ln_final_scale.is_some() {
            " with its recorded scale frozen"
        } else {
            ""
        },
        if a.target.is_some() {
            " replaced by --target"
        } else {
            "; at the last position the model's prediction"
        }
    )?;
    let mut header = format!(
        "{:>4} {:>10} {:>10} {:>8}",
        "pos", "token", "target", "direct"
    );
    for l in 0..nl {
        for h in 0..nh {
            header.push_str(&format!(" {:>7}", format!("L{l}H{h}")));
        }
    }
    header.push_str(&format!(
        " {:>7} {:>8} {:>8} {:>9}",
        "biases", "sum", "model", "error"
    ));
    outln!("{header}")?;
    for p in 0..d.tokens.len() {
        let mut line = format!(
            "{p:>4} {:>10} {:>10}{} {:>7.3}",
            lab(d.tokens[p]),
            lab(d.targets[p]),
            if d.target_source[p] == TargetSource::Prediction {
                "*"
            } else {
                " "
            },
            d.direct[p]
        );
        for l in 0..nl {
            for h in 0..nh {
                line.push_str(&format!(" {:>7.3}", d.heads[l][h][p]));
            }
        }
        line.push_str(&format!(
            " {:>7.3} {:>8.3} {:>8.3} {:>9.1e}",
            d.biases[p], d.sum[p], d.model_logit[p], d.residual_error[p]
        ));
        outln!("{line}")?;
    }
    outln!("(* the model's own prediction: the prompt has no next token there)")?;
    // Mean contribution per head over the positions with a real next token.
    let scored: Vec<usize> = (0..d.tokens.len())
        .filter(|p| d.target_source[*p] != TargetSource::Prediction)
        .collect();
    if !scored.is_empty() {
        let mut means: Vec<(String, f64)> = Vec::new();
        for l in 0..nl {
            for h in 0..nh {
                let m = scored.iter().map(|p| d.heads[l][h][*p]).sum::<f64>() / scored.len() as f64;
                means.push((format!("L{l}H{h}"), m));
            }
        }
        means.sort_by(|x, y| y.1.total_cmp(&x.1));
        let s: Vec<String> = means.iter().map(|(n, m)| format!("{n} {m:+.3}")).collect();
        outln!("mean contribution per head: {}", s.join(", "))?;
    }
    outln!(
        "direct + heads + biases = logits: max |sum - model logit| = {:.2e}{}",
        d.max_abs_residual_error,
        if cli::storage_summary(&model) == "f32" {
            ""
        } else {
            " (a quantized blob: the device rounds the unembedding's input to int8, which no \
             linear split contains)"
        }
    )?;
    Ok(())
}
