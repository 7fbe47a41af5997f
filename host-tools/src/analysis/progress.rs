//! Progress bars and parallelism shared by the analysis commands.
//!
//! Bars draw on stderr only when it is a terminal (a pipe or a test sees nothing).
//! Parallel analyses run on the current rayon pool — the global one that `--threads N`
//! sizes ([`crate::engine::set_threads`]) — for rayon's loops and faer's products alike
//! ([`par`]).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

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

/// faer's parallelism inside the current pool (one thread: sequential).
pub fn par() -> faer::Par {
    if rayon::current_num_threads() <= 1 {
        faer::Par::Seq
    } else {
        faer::Par::rayon(0)
    }
}
