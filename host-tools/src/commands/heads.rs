//! `tinylens heads`: TransformerLens's head detector ('mul' measure) on attention
//! patterns recorded through the probe/trace path — from a prompt, from TL's induction
//! test (random tokens repeated twice), or from a trace file recorded elsewhere (a
//! device, `tinylens run --probe 'blocks.*.attn.hook_pattern' --trace T`).

use std::path::{Path, PathBuf};

use clap::Args;
use rayon::prelude::*;
use serde::Serialize;
use tinylens_core::Model;

use crate::analysis::ablation::{repeated_dataset, Prompt};
use crate::analysis::heads::{detect_batch, DetectOptions, HeadKind, LayerPatterns};
use crate::analysis::progress::{progress_bar, with_threads};
use crate::analysis::recorded::{from_run, record, Recording};
use crate::trace::decode_stream;
use crate::{cli, Error, Result};

/// Where the prompt of a dynamic analysis comes from; shared by `heads`, `attribute`,
/// `paths` and `report`.
#[derive(Debug, Clone, Args)]
pub struct PromptArgs {
    /// Prompt token ids, e.g. `0,5,7` or `"0 5 7"`.
    #[arg(long, conflicts_with = "repeated")]
    pub tokens: Option<String>,
    /// N random tokens repeated twice (TransformerLens's induction test), after BOS.
    #[arg(long, value_name = "N")]
    pub repeated: Option<usize>,
    /// Seed of the random tokens (with several sequences: seeds S, S+1, ...).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// BOS before --repeated sequences: a token id, `none`, or `auto` (token 0 when the
    /// blob's vocabulary spells it like `<bos>`, else none).
    #[arg(long, default_value = "auto")]
    pub bos: String,
}

/// The BOS token `spec` names for `model`.
pub fn resolve_bos(spec: &str, model: &Model<'_>) -> Result<Option<u32>> {
    match spec {
        "none" => Ok(None),
        "auto" => Ok(model
            .token_str(0)
            .filter(|s| s.starts_with('<') && s.ends_with('>'))
            .map(|_| 0)),
        s => {
            let t: u32 = s.parse().map_err(|_| {
                Error::Argument(format!(
                    "--bos `{s}`: expected a token id, `none` or `auto`"
                ))
            })?;
            if t >= model.config().d_vocab {
                return Err(Error::Argument(format!("--bos {t} is out of range")));
            }
            Ok(Some(t))
        }
    }
}

impl PromptArgs {
    /// `batch` prompts (only --repeated makes more than one).
    pub fn prompts(&self, model: &Model<'_>, batch: usize) -> Result<Vec<Prompt>> {
        let cfg = model.config();
        match (&self.tokens, self.repeated) {
            (Some(t), None) => {
                let tokens = cli::parse_tokens(t)?;
                if let Some(bad) = tokens.iter().find(|t| **t >= cfg.d_vocab) {
                    return Err(Error::Argument(format!(
                        "token {bad} is out of range (d_vocab = {})",
                        cfg.d_vocab
                    )));
                }
                if tokens.len() > cfg.n_ctx as usize {
                    return Err(Error::Argument(format!(
                        "{} tokens exceed the model's context of {}",
                        tokens.len(),
                        cfg.n_ctx
                    )));
                }
                Ok(vec![Prompt {
                    tokens,
                    repeat_from: None,
                }])
            }
            (None, Some(n)) => repeated_dataset(
                n,
                batch,
                self.seed,
                resolve_bos(&self.bos, model)?,
                cfg.d_vocab,
                cfg.n_ctx,
            ),
            _ => Err(Error::Argument(
                "give the prompt with --tokens or --repeated N".into(),
            )),
        }
    }
}

#[derive(Debug, Args)]
pub struct HeadsArgs {
    /// Model blob.
    pub model: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Score the patterns of a recorded trace instead of running the model (it must
    /// hold `blocks.*.attn.hook_pattern`).
    #[arg(long, conflicts_with_all = ["tokens", "repeated"])]
    pub trace: Option<PathBuf>,
    /// Which run of the trace (0 = first).
    #[arg(long, default_value_t = 0)]
    pub run: usize,
    /// With --repeated: how many sequences (scores are averaged, as TL does for a list).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// TL's exclude_bos: leave attention to position 0 out of both sums.
    #[arg(long)]
    pub exclude_bos: bool,
    /// TL's exclude_current_token: leave the diagonal out of both sums.
    #[arg(long)]
    pub exclude_current_token: bool,
    /// Print `{"previous_token": [layer][head], "duplicate_token": ..., "induction": ..., ...}`.
    #[arg(long)]
    pub json: bool,
    /// Worker threads for the sequences of a batch (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// The scores `tinylens heads` reports (its JSON).
#[derive(Debug, Clone, Serialize)]
pub struct HeadsReport {
    /// `[layer][head]`, averaged over the sequences.
    pub previous_token: Vec<Vec<f64>>,
    pub duplicate_token: Vec<Vec<f64>>,
    pub induction: Vec<Vec<f64>>,
    /// `tokens`, `repeated` or `trace`.
    pub source: &'static str,
    pub sequences: Vec<Vec<u32>>,
    pub options: DetectOptions,
}

/// Scores of every head averaged over recordings (TL's mean of per-sequence scores).
pub fn score(recordings: &[Recording], opts: DetectOptions) -> Result<[Vec<Vec<f64>>; 3]> {
    let patterns = recordings
        .iter()
        .map(|r| r.patterns())
        .collect::<Result<Vec<_>>>()?;
    let batch: Vec<(&[u32], &LayerPatterns)> = recordings
        .iter()
        .zip(&patterns)
        .map(|(r, p)| (r.tokens.as_slice(), p.as_slice()))
        .collect();
    Ok([
        detect_batch(&batch, HeadKind::PreviousToken, opts)?,
        detect_batch(&batch, HeadKind::DuplicateToken, opts)?,
        detect_batch(&batch, HeadKind::Induction, opts)?,
    ])
}

/// The first (or `index`-th) run of a trace file as a recording, checked against `model`.
pub fn trace_recording(path: &Path, index: usize, model: &Model<'_>) -> Result<Recording> {
    let bytes = cli::read_input(path)?;
    let (runs, report) = decode_stream(&bytes);
    let run = runs.get(index).ok_or_else(|| {
        Error::Trace(format!(
            "{}: no run {index} ({} runs, {} bad frames)",
            path.display(),
            runs.len(),
            report.bad_frames
        ))
    })?;
    if run.config != *model.config() {
        return Err(Error::Trace(format!(
            "{}: recorded with a model of another shape than {}",
            path.display(),
            "the given blob"
        )));
    }
    if run.model_crc != model.checksum() {
        eprintln!(
            "warning: {} was recorded with model {:08x}, this blob is {:08x}",
            path.display(),
            run.model_crc,
            model.checksum()
        );
    }
    from_run(run).map_err(|e| Error::Trace(format!("{}: {e}", path.display())))
}

pub fn report(a: &HeadsArgs) -> Result<HeadsReport> {
    let bytes = cli::read_input(&a.model)?;
    let model = Model::from_bytes(&bytes)?;
    let opts = DetectOptions {
        exclude_bos: a.exclude_bos,
        exclude_current_token: a.exclude_current_token,
    };
    let (recordings, source) = if let Some(path) = &a.trace {
        (vec![trace_recording(path, a.run, &model)?], "trace")
    } else {
        if a.batch == 0 {
            return Err(Error::Argument("--batch must be at least 1".into()));
        }
        let prompts = a.prompt.prompts(&model, a.batch)?;
        let probes = vec!["blocks.*.attn.hook_pattern".to_string()];
        let pb = progress_bar(prompts.len() as u64, "recording", "sequences");
        let recs = with_threads(a.threads, || {
            prompts
                .par_iter()
                .map(|p| {
                    let r = record(&model, &p.tokens, &probes);
                    pb.inc(1);
                    r
                })
                .collect::<Result<Vec<_>>>()
        })??;
        pb.finish_and_clear();
        let source = if a.prompt.repeated.is_some() {
            "repeated"
        } else {
            "tokens"
        };
        (recs, source)
    };
    if let Some(r) = recordings.iter().find(|r| r.len() < 2) {
        return Err(Error::Argument(format!(
            "head detection needs at least 2 positions, got {}",
            r.len()
        )));
    }
    let [previous_token, duplicate_token, induction] = score(&recordings, opts)?;
    Ok(HeadsReport {
        previous_token,
        duplicate_token,
        induction,
        source,
        sequences: recordings.into_iter().map(|r| r.tokens).collect(),
        options: opts,
    })
}

/// What `tinylens heads --json` prints.
pub fn json(a: &HeadsArgs) -> Result<serde_json::Value> {
    serde_json::to_value(report(a)?).map_err(|e| Error::Argument(e.to_string()))
}

/// A `[layer][head]` table as text.
pub fn grid_text(title: &str, values: &[Vec<f64>], fmt: impl Fn(f64) -> String) -> String {
    let nh = values.first().map_or(0, |r| r.len());
    let mut s = format!("{title}\n      ");
    for h in 0..nh {
        s.push_str(&format!("{:>8}", format!("H{h}")));
    }
    s.push('\n');
    for (l, row) in values.iter().enumerate() {
        s.push_str(&format!("  L{l:<3}"));
        for v in row {
            s.push_str(&format!("{:>8}", fmt(*v)));
        }
        s.push('\n');
    }
    s
}

/// Heads scoring at least `threshold`, best first, as `(layer, head, score)`.
pub fn top_heads(values: &[Vec<f64>], threshold: f64) -> Vec<(usize, usize, f64)> {
    let mut out: Vec<(usize, usize, f64)> = values
        .iter()
        .enumerate()
        .flat_map(|(l, row)| row.iter().enumerate().map(move |(h, v)| (l, h, *v)))
        .filter(|x| x.2 >= threshold)
        .collect();
    out.sort_by(|a, b| b.2.total_cmp(&a.2));
    out
}

pub fn run(a: HeadsArgs) -> Result<()> {
    let r = report(&a)?;
    if a.json {
        cli::print_json(&r)?;
        return Ok(());
    }
    println!(
        "TransformerLens head_detector ('mul'), {} sequence(s) of {} tokens ({}){}",
        r.sequences.len(),
        r.sequences[0].len(),
        r.source,
        if a.exclude_bos || a.exclude_current_token {
            format!(
                ", exclude_bos={}, exclude_current_token={}",
                a.exclude_bos, a.exclude_current_token
            )
        } else {
            String::new()
        }
    );
    let f = |v: f64| format!("{v:.3}");
    for (name, g) in [
        ("previous-token score", &r.previous_token),
        ("duplicate-token score", &r.duplicate_token),
        ("induction score", &r.induction),
    ] {
        println!("\n{}", grid_text(name, g, f).trim_end());
    }
    for (name, g) in [
        ("previous-token", &r.previous_token),
        ("induction", &r.induction),
    ] {
        let top: Vec<String> = top_heads(g, 0.3)
            .iter()
            .map(|(l, h, v)| format!("L{l}H{h} ({v:.2})"))
            .collect();
        println!(
            "\n{name} heads (score >= 0.3): {}",
            if top.is_empty() {
                "none".to_string()
            } else {
                top.join(", ")
            }
        );
    }
    Ok(())
}
