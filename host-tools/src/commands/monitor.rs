//! `tinylens monitor`: a live terminal view of a device's trace — the run, its tokens
//! so far, what every head's attention of the newest position looks at
//! (`hook_pattern`, when probed) and the loss counters — redrawn as frames arrive from
//! a serial port, a growing file or standard input (see [`crate::live`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;

use crate::live::{self, Source};
use crate::{Error, Result};

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Trace file (followed as it grows) or `-` for standard input.
    #[arg(required_unless_present = "serial", conflicts_with = "serial")]
    pub trace: Option<PathBuf>,
    /// Serial port, e.g. /dev/ttyACM0.
    #[arg(long, value_name = "PORT")]
    pub serial: Option<String>,
    /// Baud rate of --serial.
    #[arg(long, default_value_t = 1_000_000, requires = "serial")]
    pub baud: u32,
    /// Stop after this many seconds without data (default: until the input ends or Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub idle: Option<f64>,
}

/// Everything the view shows, updated event by event. Bounded: one run's tokens (at
/// most `n_ctx`) and one attention row per head.
#[derive(Debug, Default)]
pub struct View {
    run: Option<u64>,
    run_id: u64,
    model: String,
    shape: String,
    tokens: Vec<u64>,
    /// Newest position with a pattern row, and the rows by (layer, head).
    pattern_pos: u64,
    patterns: BTreeMap<(u64, u64), Vec<f64>>,
    runs_ended: u64,
    runs_cut: u64,
    bad: u64,
    records: u64,
    last: Option<String>,
}

impl View {
    /// Takes one event of [`crate::live`].
    pub fn update(&mut self, e: &Value) {
        let run = e["run"].as_u64();
        match e["event"].as_str().unwrap_or("") {
            "run_started" => {
                *self = View {
                    runs_ended: self.runs_ended,
                    runs_cut: self.runs_cut,
                    bad: self.bad,
                    last: self.last.take(),
                    run,
                    run_id: e["run_id"].as_u64().unwrap_or(0),
                    model: e["model_crc"].as_str().unwrap_or("?").to_string(),
                    shape: format!(
                        "{} layers x {} heads, d_model {}, n_ctx {}",
                        e["n_layers"], e["n_heads"], e["d_model"], e["n_ctx"]
                    ),
                    ..View::default()
                };
            }
            "token" if run == self.run => {
                let pos = e["pos"].as_u64().unwrap_or(0) as usize;
                if pos < 1 << 16 {
                    if self.tokens.len() <= pos {
                        self.tokens.resize(pos + 1, u64::MAX);
                    }
                    self.tokens[pos] = e["token"].as_u64().unwrap_or(u64::MAX);
                }
            }
            "record" if run == self.run => {
                self.records += 1;
                if e["hook"]
                    .as_str()
                    .is_some_and(|h| h.ends_with("attn.hook_pattern"))
                {
                    let pos = e["pos"].as_u64().unwrap_or(0);
                    if pos > self.pattern_pos || self.patterns.is_empty() {
                        self.patterns.clear();
                        self.pattern_pos = pos;
                    }
                    if pos == self.pattern_pos {
                        let layer = e["hook"]
                            .as_str()
                            .and_then(|h| h.split('.').nth(1))
                            .and_then(|l| l.parse().ok())
                            .unwrap_or(0);
                        let head = e["head"].as_u64().unwrap_or(0);
                        let row = e["values"]
                            .as_array()
                            .map(|v| v.iter().map(|x| x.as_f64().unwrap_or(0.0)).collect())
                            .unwrap_or_default();
                        self.patterns.insert((layer, head), row);
                    }
                }
            }
            "run_ended" | "run_cut" => {
                if e["event"] == "run_ended" {
                    self.runs_ended += 1;
                } else {
                    self.runs_cut += 1;
                }
                self.last = Some(format!(
                    "run {} (id {}) {}: {} positions, {} records, {} lost frames, {} dropped on device, {} missing records",
                    e["run"],
                    e["run_id"],
                    if e["event"] == "run_ended" { "ended" } else { "cut" },
                    e["positions"],
                    e["records"],
                    e["lost_frames"],
                    e["dropped_on_device"],
                    e["missing_records"]
                ));
            }
            "bad" => self.bad += 1,
            _ => {}
        }
    }

    /// The view as text (no terminal control codes).
    pub fn render(&self) -> String {
        let mut s = String::new();
        match self.run {
            None => s.push_str("waiting for a run header...\n"),
            Some(r) => {
                let _ = writeln!(
                    s,
                    "run {r} (id {}), model {}: {}",
                    self.run_id, self.model, self.shape
                );
                let shown: Vec<String> = self
                    .tokens
                    .iter()
                    .map(|t| {
                        if *t == u64::MAX {
                            "?".into()
                        } else {
                            t.to_string()
                        }
                    })
                    .collect();
                let _ = writeln!(s, "tokens ({}): {}", shown.len(), shown.join(" "));
                if self.patterns.is_empty() {
                    s.push_str("(no hook_pattern records yet: probe blocks.*.attn.hook_pattern to see attention)\n");
                } else {
                    let _ = writeln!(
                        s,
                        "attention of position {} over keys 0..={} (hook_pattern):",
                        self.pattern_pos, self.pattern_pos
                    );
                    for ((layer, head), row) in &self.patterns {
                        let (argmax, max) =
                            row.iter().enumerate().fold((0, f64::MIN), |m, (i, v)| {
                                if *v > m.1 {
                                    (i, *v)
                                } else {
                                    m
                                }
                            });
                        let bar: String = row.iter().map(|v| shade(*v)).collect();
                        let _ = writeln!(
                            s,
                            "  L{layer}H{head} {bar}  max key {argmax} ({max:.2}){}",
                            self.tokens
                                .get(argmax)
                                .filter(|t| **t != u64::MAX)
                                .map(|t| format!(", token {t}"))
                                .unwrap_or_default()
                        );
                    }
                }
            }
        }
        let _ = writeln!(
            s,
            "runs: {} ended, {} cut; bad frames: {}; records this run: {}",
            self.runs_ended, self.runs_cut, self.bad, self.records
        );
        if let Some(l) = &self.last {
            let _ = writeln!(s, "last: {l}");
        }
        s
    }
}

/// One character for an attention weight in [0, 1].
fn shade(v: f64) -> char {
    const LEVELS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let i = (v.clamp(0.0, 1.0) * 8.0).round() as usize;
    LEVELS[i.min(8)]
}

pub fn run(a: MonitorArgs) -> Result<()> {
    let idle = match a.idle {
        Some(s) if !(0.0..1e9).contains(&s) => {
            return Err(Error::Argument(format!("--idle {s}: expected seconds")))
        }
        s => s.map(Duration::from_secs_f64),
    };
    let source = match (&a.serial, &a.trace) {
        (Some(port), _) => Source::Serial { port, baud: a.baud },
        (None, Some(path)) => Source::Path(path),
        (None, None) => Source::Path(std::path::Path::new("-")),
    };
    let mut view = View::default();
    let mut last_draw: Option<Instant> = None;
    let draw = |view: &View| -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        // Home, clear, the view.
        write!(out, "\x1b[H\x1b[2J{}", view.render())?;
        out.flush()
    };
    let stdout = std::path::Path::new("<stdout>");
    live::follow(source, idle, stdout, |e| {
        view.update(&e);
        // At most ten redraws a second, and always at the end of a run.
        let due = last_draw.is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if due || matches!(e["event"].as_str(), Some("run_ended" | "run_cut")) {
            last_draw = Some(Instant::now());
            draw(&view)?;
        }
        Ok(())
    })?;
    draw(&view).map_err(|e| Error::io(stdout, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn view_shows_tokens_the_newest_attention_and_the_losses() {
        let mut v = View::default();
        for e in [
            json!({"event":"bad"}),
            json!({"event":"run_started","run":0,"run_id":3,"model_crc":"0badf00d","n_layers":1,"n_heads":2,"d_model":32,"n_ctx":24,"probes":1}),
            json!({"event":"token","run":0,"pos":0,"token":7}),
            json!({"event":"record","run":0,"hook":"blocks.0.attn.hook_pattern","head":0,"pos":0,"values":[1.0]}),
            json!({"event":"token","run":0,"pos":1,"token":9}),
            json!({"event":"record","run":0,"hook":"blocks.0.attn.hook_pattern","head":0,"pos":1,"values":[0.25,0.75]}),
            json!({"event":"record","run":0,"hook":"blocks.0.attn.hook_pattern","head":1,"pos":1,"values":[1.0,0.0]}),
            json!({"event":"run_cut","run":0,"run_id":3,"positions":2,"records":3,"lost_frames":1,"dropped_on_device":0,"missing_records":1}),
        ] {
            v.update(&e);
        }
        let text = v.render();
        assert!(
            text.contains("run 0 (id 3), model 0badf00d: 1 layers x 2 heads"),
            "{text}"
        );
        assert!(text.contains("tokens (2): 7 9"), "{text}");
        assert!(
            text.contains("attention of position 1 over keys 0..=1"),
            "{text}"
        );
        assert!(
            text.contains("L0H0 ▂▆  max key 1 (0.75), token 9"),
            "{text}"
        );
        assert!(
            text.contains("L0H1 █   max key 0 (1.00), token 7"),
            "{text}"
        );
        assert!(
            text.contains("runs: 0 ended, 1 cut; bad frames: 1"),
            "{text}"
        );
        assert!(text.contains("1 lost frames"), "{text}");
    }
}
