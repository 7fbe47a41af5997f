//! `tinylens heads`: TransformerLens's head detector ('mul' measure) on attention
//! patterns recorded through the probe/trace path — from a prompt, from TL's induction
//! test (random tokens repeated twice), or from a trace file recorded elsewhere (a
//! device, `tinylens run --probe 'blocks.*.attn.hook_pattern' --trace T`).

use std::path::PathBuf;

use clap::Args;
use rayon::prelude::*;
use serde::Serialize;
use tinylens_core::Model;

use crate::analysis::dynamic::{score, top_heads};
use crate::analysis::heads::DetectOptions;
use crate::analysis::progress::progress_bar;
use crate::analysis::recorded::record;
use crate::cli::grid_text;
use crate::prompts::trace_recording;
/// Kept here for callers of the library that knew it as `heads::PromptArgs`.
pub use crate::prompts::PromptArgs;
use crate::{cli, Error, Result};

#[derive(Debug, Args)]
pub struct HeadsArgs {
    /// Model blob.
    pub model: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Score the patterns of a recorded trace instead of running the model (it must
    /// hold `blocks.*.attn.hook_pattern`).
    #[arg(long, conflicts_with_all = ["tokens", "text", "repeated"])]
    pub trace: Option<PathBuf>,
    /// Which run of the trace (0 = first).
    #[arg(long, default_value_t = 0)]
    pub run: usize,
    /// With --repeated: how many sequences (scores are averaged, as TL does for a list).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// TL's exclude_bos: leave attention to position 0 out of both sums.
    #[arg(long)]
    pub exclude_bos: bool,
    /// TL's exclude_current_token: leave the diagonal out of both sums.
    #[arg(long)]
    pub exclude_current_token: bool,
    /// Print `{"previous_token": [layer][head], "duplicate_token": ..., "induction": ..., ...}`.
    #[arg(long)]
    pub json: bool,
}

/// The scores `tinylens heads` reports (its JSON).
#[derive(Debug, Clone, Serialize)]
pub struct HeadsReport {
    /// `[layer][head]`, averaged over the sequences.
    pub previous_token: Vec<Vec<f64>>,
    pub duplicate_token: Vec<Vec<f64>>,
    pub induction: Vec<Vec<f64>>,
    /// `tokens`, `text`, `repeated` or `trace`.
    pub source: &'static str,
    pub sequences: Vec<Vec<u32>>,
    pub options: DetectOptions,
}

pub fn report(a: &HeadsArgs) -> Result<HeadsReport> {
    let bytes = cli::read_input(&a.model)?;
    let model = Model::from_bytes(&bytes)?;
    let opts = DetectOptions {
        exclude_bos: a.exclude_bos,
        exclude_current_token: a.exclude_current_token,
    };
    let (recordings, source) = if let Some(path) = &a.trace {
        (vec![trace_recording(path, a.run, &model)?], "trace")
    } else {
        if a.batch == 0 {
            return Err(Error::Argument("--batch must be at least 1".into()));
        }
        let prompts = a.prompt.prompts(&model, &bytes, a.batch)?;
        let probes = vec!["blocks.*.attn.hook_pattern".to_string()];
        let pb = progress_bar(prompts.len() as u64, "recording", "sequences");
        let recs = prompts
            .par_iter()
            .map(|p| {
                let r = record(&model, &p.tokens, &probes);
                pb.inc(1);
                r
            })
            .collect::<Result<Vec<_>>>()?;
        pb.finish_and_clear();
        let source = if a.prompt.repeated.is_some() {
            "repeated"
        } else if a.prompt.text.is_some() {
            "text"
        } else {
            "tokens"
        };
        (recs, source)
    };
    if let Some(r) = recordings.iter().find(|r| r.len() < 2) {
        return Err(Error::Argument(format!(
            "head detection needs at least 2 positions, got {}",
            r.len()
        )));
    }
    let [previous_token, duplicate_token, induction] = score(&recordings, opts)?;
    Ok(HeadsReport {
        previous_token,
        duplicate_token,
        induction,
        source,
        sequences: recordings.into_iter().map(|r| r.tokens).collect(),
        options: opts,
    })
}

/// What `tinylens heads --json` prints.
pub fn json(a: &HeadsArgs) -> Result<serde_json::Value> {
    serde_json::to_value(report(a)?).map_err(|e| Error::Argument(e.to_string()))
}

pub fn run(a: HeadsArgs) -> Result<()> {
    let r = report(&a)?;
    if a.json {
        cli::print_json(&r)?;
        return Ok(());
    }
    outln!(
        "TransformerLens head_detector ('mul'), {} sequence(s) of {} tokens ({}){}",
        r.sequences.len(),
        r.sequences[0].len(),
        r.source,
        if a.exclude_bos || a.exclude_current_token {
            format!(
                ", exclude_bos={}, exclude_current_token={}",
                a.exclude_bos, a.exclude_current_token
            )
        } else {
            String::new()
        }
    )?;
    let f = |v: f64| format!("{v:.3}");
    for (name, g) in [
        ("previous-token score", &r.previous_token),
        ("duplicate-token score", &r.duplicate_token),
        ("induction score", &r.induction),
    ] {
        outln!("\n{}", grid_text(name, g, f).trim_end())?;
    }
    for (name, g) in [
        ("previous-token", &r.previous_token),
        ("induction", &r.induction),
    ] {
        let top: Vec<String> = top_heads(g, 0.3)
            .iter()
            .map(|(l, h, v)| format!("L{l}H{h} ({v:.2})"))
            .collect();
        outln!(
            "\n{name} heads (score >= 0.3): {}",
            if top.is_empty() {
                "none".to_string()
            } else {
                top.join(", ")
            }
        )?;
    }
    Ok(())
}
