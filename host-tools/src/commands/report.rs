//! `tinylens report`: one self-contained HTML file (no network) with the figures of "A
//! Mathematical Framework for Transformer Circuits" for several prompts — from the host
//! (`--tokens`, `--repeated N --sequences K`) or from every run of a device trace
//! (`--trace`, with the host re-running only what the trace did not record) — and,
//! with `--compare`, the model against another of its shape (a quantized blob against
//! its float original), head by head.

use std::path::PathBuf;

use clap::Args;
use tinylens_core::Model;

use crate::analysis::html::render;
use crate::analysis::report::{gather, host_recordings, trace_recordings, DlaTarget};
use crate::prompts::PromptArgs;
use crate::{cli, Error, Result};

pub use crate::analysis::report::{build, display_vocab, model_line, Extras};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Model blob.
    pub model: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// With --repeated: how many sequences (seeds S, S+1, …), each a prompt of the report.
    #[arg(long, default_value_t = 4)]
    pub sequences: usize,
    /// Report every run of a recorded trace (a device's) instead of running prompts: what
    /// it recorded is shown as from the device, what it did not is re-run on the host.
    #[arg(long, conflicts_with_all = ["tokens", "repeated"])]
    pub trace: Option<PathBuf>,
    /// Compare head by head with another blob of the same shape (e.g. the float model a
    /// quantized blob came from).
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Attribute this token's logit at every position (default: each position's next token).
    #[arg(long, conflicts_with = "target_diff")]
    pub target: Option<u32>,
    /// Attribute the logit difference `A,B` (logit A − logit B) at every position.
    #[arg(long, value_name = "A,B")]
    pub target_diff: Option<String>,
    /// Output file.
    #[arg(short, long, default_value = "report.html")]
    pub output: PathBuf,
    /// Title of the report (default: the blob's file name).
    #[arg(long)]
    pub title: Option<String>,
}

fn dla_target(a: &ReportArgs, d_vocab: u32) -> Result<DlaTarget> {
    let check = |t: u32| -> Result<u32> {
        if t >= d_vocab {
            return Err(Error::Argument(format!(
                "target token {t} is out of range (d_vocab = {d_vocab})"
            )));
        }
        Ok(t)
    };
    Ok(match (a.target, &a.target_diff) {
        (Some(t), _) => DlaTarget::Token(check(t)?),
        (None, Some(s)) => {
            let t = cli::parse_tokens(s)?;
            if t.len() != 2 {
                return Err(Error::Argument(format!(
                    "--target-diff `{s}`: expected two token ids A,B"
                )));
            }
            DlaTarget::Difference(check(t[0])?, check(t[1])?)
        }
        (None, None) => DlaTarget::NextToken,
    })
}

pub fn run(a: ReportArgs) -> Result<()> {
    let bytes = cli::read_input(&a.model)?;
    let model = Model::from_bytes(&bytes)?;
    let file_name = |p: &PathBuf| {
        p.file_name()
            .map_or("model".into(), |f| f.to_string_lossy().to_string())
    };
    let title = a
        .title
        .clone()
        .unwrap_or_else(|| format!("tinylens report: {}", file_name(&a.model)));
    let mut provenance = Vec::new();
    let recs = match &a.trace {
        Some(path) => {
            let trace = cli::read_input(path)?;
            let recs = trace_recordings(&model, &trace, &path.display().to_string())?;
            let rerun: std::collections::BTreeSet<&String> =
                recs.iter().flat_map(|r| &r.from_host).collect();
            provenance.push(format!(
                "From the device: {} run(s) of {} (model crc {:08x}, checked against the blob).",
                recs.len(),
                file_name(path),
                model.checksum()
            ));
            provenance.push(if rerun.is_empty() {
                "Every value shown was recorded by the device; nothing was re-run on the host."
                    .into()
            } else {
                format!(
                    "Re-run on the host because the trace did not record them: {}.",
                    rerun
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
            recs
        }
        None => {
            let prompts = a.prompt.prompts(
                &model,
                &bytes,
                if a.prompt.repeated.is_some() {
                    a.sequences.max(1)
                } else {
                    1
                },
            )?;
            let named: Vec<(String, Vec<u32>)> = prompts
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let name = match a.prompt.repeated {
                        Some(n) => {
                            format!("repeated {n} tokens, seed {}", a.prompt.seed + i as u64)
                        }
                        None => "prompt".to_string(),
                    };
                    (name, p.tokens)
                })
                .collect();
            provenance.push(format!(
                "Host run of {} prompt(s) through the probe/trace path.",
                named.len()
            ));
            host_recordings(&model, &named)?
        }
    };
    let compare_bytes = match &a.compare {
        Some(p) => Some(cli::read_input(p)?),
        None => None,
    };
    let other = match &compare_bytes {
        Some(b) => Some(Model::from_bytes(b)?),
        None => None,
    };
    let compare_name = a.compare.as_ref().map(file_name).unwrap_or_default();
    let extras = Extras {
        title,
        model_line: model_line(&model),
        dla_target: dla_target(&a, model.config().d_vocab)?,
        provenance,
        ..Default::default()
    };
    let data = gather(
        &model,
        &recs,
        extras,
        other.as_ref().map(|m| (m, compare_name.as_str())),
    )?;
    let html = render(&data);
    cli::write_output(&a.output, html.as_bytes())?;
    note!("wrote {} ({} bytes)", a.output.display(), html.len());
    Ok(())
}
