//! One prompt's whole analysis put together for the HTML report: the prompt is recorded
//! (run with probes → trace → decode), analysed with the weights, and rendered by
//! [`super::html`]. `tinylens report` and the demo build their pages here.

use tinylens_core::Model;

use super::ablation::AblationReport;
use super::dynamic::{attribute, paths_of};
use super::heads::{detect_all, DetectOptions};
use super::html::{render, ReportInput};
use super::recorded::{analysis_probes, record};
use super::{analyze, AnalysisOptions, HeadDetection};
use crate::cli::storage_summary;
use crate::convert::{vocab_of, weights_from_model};
use crate::{Error, Result};

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
