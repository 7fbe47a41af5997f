//! `tinylens decode`: a trace stream → a TransformerLens-shaped cache.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;

use crate::trace::{Decoder, Keep, Run, StreamReport};
use crate::{cli, export, Error, Result};

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Trace file, or `-` for standard input (a serial capture, QEMU's output). Read as
    /// it comes, up to the end frame of the selected run: a pipe need not close.
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

/// Reads `path` (`-`: standard input) through the streaming decoder, keeping run
/// `index` only, until that run's end frame or the end of the input.
pub fn read_run(path: &std::path::Path, index: usize) -> Result<(Run, StreamReport)> {
    let mut input = cli::open_input(path)?;
    read_run_from(&mut input, path, index)
}

/// [`read_run`] from any reader (the Python binding's bytes); `path` names it in errors.
pub fn read_run_from(
    input: &mut dyn Read,
    path: &std::path::Path,
    index: usize,
) -> Result<(Run, StreamReport)> {
    let name = cli::escape(&path.display().to_string()).into_owned();
    let mut decoder = Decoder::new(Keep::Only(index));
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, e)),
        };
        decoder.push(&buf[..n], &mut |_, _| {});
        if decoder.run_ended(index) {
            break;
        }
    }
    if decoder.report().bytes == 0 {
        return Err(Error::Trace(format!("{name}: empty trace")));
    }
    let (mut runs, report) = decoder.finish();
    let run = runs.pop().ok_or_else(|| {
        Error::Trace(format!(
            "{name}: no run {index} ({} runs, {} good frames, {} bad frames)",
            report.runs, report.frames_ok, report.bad_frames
        ))
    })?;
    Ok((run, report))
}

pub fn run(a: DecodeArgs) -> Result<()> {
    export::check_format(&a.format)?;
    let (run, report) = read_run(&a.trace, a.run)?;
    // The binary formats carry TransformerLens's batch dimension and int64 tokens, as
    // the Python package's `load_trace` returns them; JSON stays one sequence.
    let view = run.cache_view(true);
    if a.format == "json" {
        export::write(&view, &a.format, &a.output)?;
    } else {
        export::write(&export::Batched(&view), &a.format, &a.output)?;
    }
    let l = &run.loss;
    if a.report_json {
        note!("{}", serde_json::json!({ "stream": report, "run": l }));
        return Ok(());
    }
    note!(
        "decoded run {} ({} runs read): {} positions, {} records; {} bad frames, {} lost frames, {} duplicates, {} missing records, {} dropped on device{}",
        a.run,
        report.runs,
        run.positions(),
        run.records.len(),
        report.bad_frames,
        l.lost_frames,
        l.duplicate_frames,
        l.missing_count,
        l.dropped_on_device,
        if l.end_seen { "" } else { "; end frame missing (stream cut?)" }
    );
    if l.shared_id || l.conflicting_frames > 0 {
        note!(
            "warning: another recording used run id {} at the same time ({} frames in conflict): values may be mixed",
            run.run_id,
            l.conflicting_frames
        );
    }
    for m in l.missing_records.iter().take(10) {
        note!("  missing: {m}");
    }
    let listed: u64 = l
        .missing_records
        .iter()
        .take(10)
        .map(|m| m.sites().count() as u64)
        .sum();
    if l.missing_count > listed {
        note!(
            "  ... and {} more missing records",
            l.missing_count - listed
        );
    }
    Ok(())
}
