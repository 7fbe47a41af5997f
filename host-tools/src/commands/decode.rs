//! `tinylens decode`: a trace stream → a TransformerLens-shaped cache.

use std::path::PathBuf;

use clap::Args;

use crate::trace::read_run;
use crate::{export, Error, Result};

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Trace file, or `-` for standard input (a serial capture, QEMU's output). Read as
    /// it comes, up to the end frame of the selected run: a pipe need not close.
    #[arg(required_unless_present = "serial")]
    pub trace: Option<PathBuf>,
    /// Live: decode frames as they arrive, for every run, as JSON lines (`run_started`,
    /// `token`, `record`, `run_ended`, `run_cut`, `bad`) on the output, resynchronising
    /// after garbage; a growing file is followed like `tail -f`. Memory stays bounded.
    #[arg(long)]
    pub follow: bool,
    /// Live from a serial port (implies --follow), e.g. /dev/ttyACM0.
    #[arg(long, value_name = "PORT", conflicts_with = "trace")]
    pub serial: Option<String>,
    /// Baud rate of --serial (the example firmware sends at 1 Mbaud).
    #[arg(long, default_value_t = 1_000_000, requires = "serial")]
    pub baud: u32,
    /// With --follow/--serial: stop after this many seconds without data (default: run
    /// until the input ends or Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub idle: Option<f64>,
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
    if a.follow || a.serial.is_some() {
        return follow(&a);
    }
    export::check_format(&a.format)?;
    let trace = a.trace.as_deref().unwrap_or(std::path::Path::new("-"));
    let (run, report) = read_run(trace, a.run)?;
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

/// `--follow` / `--serial`: live JSON lines (see [`crate::live`]).
fn follow(a: &DecodeArgs) -> Result<()> {
    use crate::live::{self, Source};
    let idle = match a.idle {
        Some(s) if !(0.0..1e9).contains(&s) => {
            return Err(Error::Argument(format!("--idle {s}: expected seconds")))
        }
        s => s.map(std::time::Duration::from_secs_f64),
    };
    let source = match (&a.serial, &a.trace) {
        (Some(port), _) => Source::Serial { port, baud: a.baud },
        (None, Some(path)) => Source::Path(path),
        (None, None) => Source::Path(std::path::Path::new("-")),
    };
    let out: Box<dyn std::io::Write> = if a.output.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        // A live log grows as frames arrive: written in place, not atomically.
        Box::new(std::fs::File::create(&a.output).map_err(|e| Error::io(&a.output, e))?)
    };
    let name = if a.output.as_os_str() == "-" {
        std::path::Path::new("<stdout>")
    } else {
        a.output.as_path()
    };
    let t = live::follow(
        source,
        idle,
        name,
        live::json_lines(std::io::BufWriter::new(out)),
    )?;
    note!(
        "followed {} bytes: {} runs ended, {} cut, {} good frames, {} bad frames",
        t.bytes,
        t.runs_ended,
        t.runs_cut,
        t.frames_ok,
        t.bad_frames
    );
    Ok(())
}
