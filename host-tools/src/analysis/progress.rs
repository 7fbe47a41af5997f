//! Progress bars and thread counts shared by the analysis commands.
//!
//! Bars draw on stderr only when it is a terminal (a pipe or a test sees nothing), and
//! every parallel analysis runs inside [`with_threads`], so `--threads N` bounds both
//! rayon's loops and faer's matrix products (faer's `Par::rayon(0)` uses the pool it
//! runs in).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{Error, Result};

/// A progress bar of `len` steps of `unit` on stderr, hidden when stderr is not a terminal.
pub fn progress_bar(len: u64, what: &str, unit: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let pb = ProgressBar::with_draw_target(Some(len), target);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{msg:>14}} [{{bar:40}}] {{pos}}/{{len}} {unit}, {{elapsed}} elapsed, {{eta}} left"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Runs `f` on a rayon pool of `threads` threads (0: one per core).
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> Result<T> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Argument(format!("--threads {threads}: {e}")))?;
    Ok(pool.install(f))
}

/// faer's parallelism inside the current pool (one thread: sequential).
pub fn par() -> faer::Par {
    if rayon::current_num_threads() <= 1 {
        faer::Par::Seq
    } else {
        faer::Par::rayon(0)
    }
}
