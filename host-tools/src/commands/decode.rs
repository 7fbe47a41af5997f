//! `tinylens decode`: a trace stream → a TransformerLens-shaped cache.

use std::path::PathBuf;

use clap::Args;

use crate::trace::decode_stream;
use crate::{cli, export, Error, Result};

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Trace file, or `-` for standard input (a serial capture, QEMU's output).
    pub trace: PathBuf,
    /// json, npy (a NumPy .npz archive) or safetensors.
    #[arg(long, default_value = "json")]
    pub format: String,
    /// Output path (`-` for standard output).
    #[arg(short, long, default_value = "-")]
    pub output: PathBuf,
    /// Which run of the stream (0 = first).
    #[arg(long, default_value_t = 0)]
    pub run: usize,
    /// Print the loss report as JSON on stderr.
    #[arg(long)]
    pub report_json: bool,
}

pub fn run(a: DecodeArgs) -> Result<()> {
    let bytes = cli::read_input(&a.trace)?;
    if bytes.is_empty() {
        return Err(Error::Trace(format!("{}: empty trace", a.trace.display())));
    }
    let (runs, report) = decode_stream(&bytes);
    let run = runs.get(a.run).ok_or_else(|| {
        Error::Trace(format!(
            "{}: no run {} ({} runs, {} good frames, {} bad frames)",
            a.trace.display(),
            a.run,
            runs.len(),
            report.frames_ok,
            report.bad_frames
        ))
    })?;
    let mut cache = run.cache();
    let tokens: Vec<f32> = run
        .token_list()
        .iter()
        .map(|t| t.map_or(f32::NAN, |t| t as f32))
        .collect();
    cache.insert("tokens".into(), (vec![tokens.len()], tokens));
    export::write(&cache, &a.format, &a.output)?;
    let l = &run.loss;
    if a.report_json {
        eprintln!("{}", serde_json::json!({ "stream": report, "run": l }));
    } else {
        eprintln!(
            "decoded run {} of {}: {} positions, {} records; {} bad frames, {} lost frames, {} duplicates, {} missing records, {} dropped on device{}",
            a.run,
            runs.len(),
            run.positions(),
            run.records.len(),
            report.bad_frames,
            l.lost_frames,
            l.duplicate_frames,
            l.missing_records.len(),
            l.dropped_on_device,
            if l.end_seen { "" } else { "; end frame missing (stream cut?)" }
        );
        for m in l.missing_records.iter().take(10) {
            eprintln!("  missing: {m}");
        }
        if l.missing_records.len() > 10 {
            eprintln!("  ... and {} more", l.missing_records.len() - 10);
        }
    }
    Ok(())
}
