//! `tinylens report`: one self-contained HTML file (no network) with the attention
//! patterns of a prompt as heatmaps per head, the head-detector, copying and
//! composition tables, direct logit attribution and the frozen-attention path terms.

use std::path::PathBuf;

use clap::Args;
use tinylens_core::Model;

use super::attribute::attribute;
use super::circuits::storage_summary;
use super::heads::PromptArgs;
use super::paths::paths_of;
use crate::analysis::ablation::AblationReport;
use crate::analysis::heads::{detect_all, DetectOptions};
use crate::analysis::html::{render, ReportInput};
use crate::analysis::recorded::{analysis_probes, record};
use crate::analysis::{analyze, AnalysisOptions, HeadDetection};
use crate::convert::{vocab_of, weights_from_model};
use crate::{cli, Error, Result};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Model blob.
    pub model: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Output file.
    #[arg(short, long, default_value = "report.html")]
    pub output: PathBuf,
    /// Title of the report (default: the blob's file name).
    #[arg(long)]
    pub title: Option<String>,
}

/// A display string per token id: the blob's vocabulary, else `#id`.
pub fn display_vocab(model: &Model<'_>) -> Vec<String> {
    match vocab_of(model) {
        Some(v) => v,
        None => (0..model.config().d_vocab)
            .map(|t| format!("#{t}"))
            .collect(),
    }
}

/// One line describing a blob.
pub fn model_line(model: &Model<'_>) -> String {
    let c = model.config();
    let p = model.processing();
    let mut steps = Vec::new();
    for (on, name) in [
        (p.fold_ln, "fold_ln"),
        (p.center_writing_weights, "center_writing_weights"),
        (p.center_unembed, "center_unembed"),
        (p.fold_value_biases, "fold_value_biases"),
    ] {
        if on {
            steps.push(name);
        }
    }
    format!(
        "{} layers × {} heads, d_model {}, d_head {}, vocab {}, n_ctx {}, {:?}; weights {}; processing: {}; crc {:08x}",
        c.n_layers,
        c.n_heads,
        c.d_model,
        c.d_head,
        c.d_vocab,
        c.n_ctx,
        c.normalization,
        storage_summary(model),
        if steps.is_empty() { "none".to_string() } else { steps.join(", ") },
        model.checksum()
    )
}

/// What goes into a report beyond the prompt's own analysis.
#[derive(Default)]
pub struct Extras {
    pub title: String,
    pub findings: Vec<String>,
    /// Head scores measured elsewhere (e.g. averaged over many sequences) and what on.
    pub detection: Option<(HeadDetection, String)>,
    pub ablation: Option<AblationReport>,
}

/// Records `tokens` (run with probes → trace → decode), analyses the recording and the
/// weights, and renders the HTML.
pub fn build(model: &Model<'_>, tokens: &[u32], extras: Extras) -> Result<String> {
    if tokens.len() < 2 {
        return Err(Error::Argument(
            "a report needs a prompt of at least 2 tokens".into(),
        ));
    }
    let rec = record(model, tokens, &analysis_probes(model.config()))?;
    let patterns = rec.patterns()?;
    let (detection, note) = match extras.detection {
        Some((d, note)) => (d, note),
        None => (
            detect_all(&patterns, tokens, DetectOptions::default())?,
            format!("Measured on the prompt shown ({} tokens).", tokens.len()),
        ),
    };
    let analysis = analyze(&weights_from_model(model), &AnalysisOptions::default())?;
    let dla = attribute(model, &rec, None)?;
    let (_, paths) = paths_of(model, &rec)?;
    Ok(render(&ReportInput {
        title: extras.title,
        model_line: model_line(model),
        findings: extras.findings,
        tokens,
        vocab: display_vocab(model),
        patterns: &patterns,
        analysis: &analysis,
        detection: Some(&detection),
        detection_note: note,
        dla: Some(&dla),
        importance: Some(&paths.importance),
        ablation: extras.ablation.as_ref(),
    }))
}

pub fn run(a: ReportArgs) -> Result<()> {
    let bytes = cli::read_input(&a.model)?;
    let model = Model::from_bytes(&bytes)?;
    let prompt = a.prompt.prompts(&model, 1)?.remove(0);
    let title = a.title.clone().unwrap_or_else(|| {
        format!(
            "tinylens report: {}",
            a.model
                .file_name()
                .map_or("model".into(), |f| f.to_string_lossy().to_string())
        )
    });
    let html = build(
        &model,
        &prompt.tokens,
        Extras {
            title,
            ..Default::default()
        },
    )?;
    cli::write_output(&a.output, html.as_bytes())?;
    note!("wrote {} ({} bytes)", a.output.display(), html.len());
    Ok(())
}
