//! `tinylens report`: one self-contained HTML file (no network) with the attention
//! patterns of a prompt as heatmaps per head, the head-detector, copying and
//! composition tables, direct logit attribution and the frozen-attention path terms.

use std::path::PathBuf;

use clap::Args;
use tinylens_core::Model;

pub use crate::analysis::report::{build, display_vocab, model_line, Extras};
use crate::prompts::PromptArgs;
use crate::{cli, Result};

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

pub fn run(a: ReportArgs) -> Result<()> {
    let bytes = cli::read_input(&a.model)?;
    let model = Model::from_bytes(&bytes)?;
    let prompt = a.prompt.prompt(&model, &bytes)?;
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
