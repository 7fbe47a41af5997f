//! `tinylens convert`: TransformerLens weights → model blob.

use std::path::PathBuf;

use clap::Args;

use crate::convert::{write_blob, QuantPlan};
use crate::tokenizer::{append_trailer, TextTokenizer};
use crate::{cli, tl, Result};

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// TransformerLens state_dict saved with safetensors.
    #[arg(long)]
    pub weights: PathBuf,
    /// TransformerLens config (`cfg.to_dict()`) as JSON.
    #[arg(long)]
    pub config: PathBuf,
    /// Storage of the matrices: f32, f16, int8 or int4 (int4 keeps W_E, W_pos, W_U in int8
    /// unless --embed-quant says otherwise).
    #[arg(long, default_value = "int8")]
    pub quant: String,
    /// Storage of W_E, W_pos and W_U (default: follows --quant).
    #[arg(long)]
    pub embed_quant: Option<String>,
    /// Token strings, one per line (line i is token i), stored in the blob.
    #[arg(long, conflicts_with = "tokenizer")]
    pub vocab: Option<PathBuf>,
    /// A Hugging Face tokenizer.json: the blob's vocabulary becomes its token strings
    /// (each token decoded alone, TL's `to_str_tokens`), and the tokenizer itself goes
    /// into the blob's host-only trailer, so `--text` works with no other file (the
    /// device flashes only the blob's `total_len` bytes).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    #[arg(long)]
    pub fold_ln: bool,
    #[arg(long)]
    pub center_writing_weights: bool,
    #[arg(long)]
    pub center_unembed: bool,
    #[arg(long)]
    pub fold_value_biases: bool,
    /// Output blob.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let kind = cli::parse_kind(&a.quant)?;
    let mut plan = QuantPlan::for_kind(kind);
    if let Some(e) = &a.embed_quant {
        plan.embeddings = cli::parse_kind(e)?;
    }
    let mut w = tl::load_files(&a.weights, &a.config)?;
    let tokenizer = a
        .tokenizer
        .as_deref()
        .map(TextTokenizer::from_file)
        .transpose()?;
    let vocab = match &tokenizer {
        Some(t) => {
            t.check_fits(w.cfg.d_vocab as u32)?;
            Some(t.token_strings(w.cfg.d_vocab as u32))
        }
        None => a.vocab.as_deref().map(cli::read_vocab).transpose()?,
    };
    let requested = tl::Processing {
        fold_ln: a.fold_ln,
        center_writing_weights: a.center_writing_weights,
        center_unembed: a.center_unembed,
        fold_value_biases: a.fold_value_biases,
    };
    let processing = tl::process(&mut w, requested)?;
    let (mut blob, reports) = write_blob(&w, plan, processing, vocab.as_deref())?;
    let device_bytes = blob.len();
    if let Some(t) = &tokenizer {
        blob = append_trailer(&blob, t.json())?;
    }
    cli::write_output(&a.output, &blob)?;
    let params: usize = reports.iter().map(|r| r.shape[0] * r.shape[1]).sum();
    let skipped: Vec<&str> = [
        ("fold_ln", requested.fold_ln && !processing.fold_ln),
        (
            "center_writing_weights",
            requested.center_writing_weights && !processing.center_writing_weights,
        ),
        (
            "center_unembed",
            requested.center_unembed && !processing.center_unembed,
        ),
        (
            "fold_value_biases",
            requested.fold_value_biases && !processing.fold_value_biases,
        ),
    ]
    .iter()
    .filter(|(_, s)| *s)
    .map(|(n, _)| *n)
    .collect();
    if a.json {
        let j = serde_json::json!({
            "output": a.output,
            "blob_bytes": blob.len(),
            "device_bytes": device_bytes,
            "parameters": params,
            "config": crate::tl::config_to_json(&w.cfg).parse::<serde_json::Value>().unwrap_or_default(),
            "processing": {
                "fold_ln": processing.fold_ln,
                "center_writing_weights": processing.center_writing_weights,
                "center_unembed": processing.center_unembed,
                "fold_value_biases": processing.fold_value_biases,
            },
            "skipped_processing": skipped,
            "tensors": reports,
        });
        outln!("{j:#}")?;
    } else {
        outln!(
            "{:<28} {:>6} {:>12} {:>10} {:>12} {:>10}",
            "tensor",
            "kind",
            "shape",
            "bytes",
            "max |err|",
            "rel RMS"
        )?;
        for r in &reports {
            outln!(
                "{:<28} {:>6} {:>12} {:>10} {:>12.3e} {:>10.3e}",
                r.name,
                r.kind,
                format!("{}x{}", r.shape[0], r.shape[1]),
                r.bytes,
                r.max_abs_error,
                r.relative_rms_error
            )?;
        }
        for s in &skipped {
            note!("note: {s} was requested but does not apply to this model (TransformerLens skips it too)");
        }
        outln!(
            "wrote {} ({} bytes, {} parameters, {:.2} bytes/parameter)",
            a.output.display(),
            device_bytes,
            params,
            device_bytes as f64 / params.max(1) as f64
        )?;
        if blob.len() > device_bytes {
            outln!(
                "  + host-only trailer of {} bytes (the tokenizer; not flashed)",
                blob.len() - device_bytes
            )?;
        }
    }
    Ok(())
}
