//! `tinylens`: convert TransformerLens models to blobs, run them with probes, decode
//! traces and analyse circuits.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use tinylens_host::{cli, commands};

#[derive(Parser)]
#[command(
    name = "tinylens",
    version,
    about = "Tiny attention-only transformers on microcontrollers, with TransformerLens hooks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Threads for every command that runs the model (default: one per core); the
    /// results are the same bits for any number.
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Convert TransformerLens weights (safetensors + config JSON) to a model blob.
    Convert(commands::convert::ConvertArgs),
    /// Run a blob on the host: next-token predictions, probes, traces, interventions.
    Run(commands::run::RunArgs),
    /// Decode a trace into a TransformerLens-shaped cache (JSON, NumPy, safetensors).
    Decode(commands::decode::DecodeArgs),
    /// Live terminal view of a device's trace: tokens, each head's attention, losses.
    Monitor(commands::monitor::MonitorArgs),
    /// Show what a blob holds and the memory it needs on a device.
    Info(commands::info::InfoArgs),
    /// Weight-only circuit analysis: copying, composition, eigenvalues, bigrams, virtual heads.
    Circuits(commands::circuits::CircuitsArgs),
    /// TransformerLens head-detector scores (previous-token, duplicate-token, induction).
    Heads(commands::heads::HeadsArgs),
    /// Direct logit attribution per head and position, summing to the logits.
    Attribute(commands::attribute::AttributeArgs),
    /// Frozen-attention path expansion: direct, head and virtual-head terms; term importance.
    Paths(commands::paths::PathsArgs),
    /// Loss increase per ablated head over a data set (zero or mean ablation).
    Ablate(commands::ablate::AblateArgs),
    /// A self-contained HTML report: attention heatmaps, circuit tables, attribution.
    Report(commands::report::ReportArgs),
    /// The bundled two-layer demo model end to end: find its induction circuit, write report.html.
    Demo(commands::demo::DemoArgs),
    /// Measure prompt-processing and decoding tokens/s, probes off and all hooks recorded.
    Bench(commands::bench::BenchArgs),
}

/// The exit-status contract (README, "What is guaranteed for malformed input"):
/// - 0: done; also `--help` and `--version`, printed on standard output;
/// - 1: the command ran and failed (bad input, a file that cannot be read or written,
///   standard output that cannot be written): one line `error: ...` on standard error;
/// - 2: the command line itself is not valid (unknown subcommand or option, a missing
///   or malformed argument), clap's convention: one line `error: ...` with clap's tip
///   and usage on the same line; `tinylens` without a subcommand prints the help on
///   standard error.
fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of our output goes away
    // (`tinylens run ... | head`) instead of panicking on a broken pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE at start-up, before any
    // thread exists, is what a C program starts with.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Keep freed memory for reuse rather than handing it back to the kernel at each free
    // (glibc trims the heap top above 128 KiB and maps larger blocks afresh): the hook
    // arrays of a batch, megabytes freed after every `run_with_cache`, otherwise cost a
    // page fault per 4 KiB on every call — a quarter of the demo model's time.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: two malloc parameters set at start-up, before any thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    if let Err(e) = tinylens_host::engine::set_threads(cli.threads) {
        cli::note(format_args!("error: {e}"));
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Convert(a) => commands::convert::run(a),
        Command::Run(a) => commands::run::run(a),
        Command::Decode(a) => commands::decode::run(a),
        Command::Monitor(a) => commands::monitor::run(a),
        Command::Info(a) => commands::info::run(a),
        Command::Circuits(a) => commands::circuits::run(a),
        Command::Heads(a) => commands::heads::run(a),
        Command::Attribute(a) => commands::attribute::run(a),
        Command::Paths(a) => commands::paths::run(a),
        Command::Ablate(a) => commands::ablate::run(a),
        Command::Report(a) => commands::report::run(a),
        Command::Demo(a) => commands::demo::run(a),
        Command::Bench(a) => commands::bench::run(a),
    };
    match result.and_then(|()| cli::flush_out()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cli::note(format_args!("error: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Help and version on standard output (exit 0); a command line clap refused as one
/// escaped line (exit 2).
fn usage_error(e: &clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let text = e.render().to_string();
            match cli::out(format_args!("{text}")).and_then(|()| cli::flush_out()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    cli::note(format_args!("error: {err}"));
                    ExitCode::FAILURE
                }
            }
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            // clap's message, tip and usage, each on its own line: joined into one.
            let text = e.render().to_string();
            let parts: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
                .collect();
            let line = parts.join("; ");
            let line = line.strip_prefix("error: ").unwrap_or(&line);
            cli::note(format_args!("error: {line}"));
            ExitCode::from(2)
        }
    }
}
