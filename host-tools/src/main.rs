//! `tinylens`: convert TransformerLens models to blobs, run them with probes, decode
//! traces and analyse circuits.

use clap::{Parser, Subcommand};
use tinylens_host::commands;

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

fn main() {
    // Like other command-line tools, end quietly when the reader of our output goes away
    // (`tinylens run ... | head`) instead of panicking on a broken pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE at start-up, before any
    // thread exists, is what a C program starts with.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Err(e) = tinylens_host::engine::set_threads(cli.threads) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let result = match cli.command {
        Command::Convert(a) => commands::convert::run(a),
        Command::Run(a) => commands::run::run(a),
        Command::Decode(a) => commands::decode::run(a),
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
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
