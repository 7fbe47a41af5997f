//! `tinylens run`: the core on the host, with probes, a trace and interventions.

use std::path::{Path, PathBuf};

use clap::Args;
use tinylens_core::Model;

use crate::prompts::{self, PromptArgs};
use crate::run::{parse_hook_name, run_batch, AblateMode, RunOptions, RunOutput};
use crate::tokenizer::{escape, TextTokenizer};
use crate::trace::read_run;
use crate::{cli, Error, Result};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Model blob.
    pub model: PathBuf,
    /// The prompt (--tokens, --text or --repeated); --seed also seeds the sampling.
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// How many of the most likely next tokens to show per position.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Print `{"tokens": [...], "logits": [[...], ...]}` (one row per position); with
    /// --batch-file one such object per line and sequence, with its `"sequence"` index.
    #[arg(long)]
    pub json: bool,
    /// Run every prompt of FILE, one per line, as one batch on all threads (--threads):
    /// text when the blob has a tokenizer (or --tokenizer is given), else token ids
    /// (the format of `ablate --data`; `#` lines skipped). The output, trace included
    /// (one run per sequence), has every sequence in file order.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["tokens", "text", "repeated"])]
    pub batch_file: Option<PathBuf>,
    /// Record a hook: a TransformerLens name with wildcards, `[HEAD]`, `@POS` or
    /// `@START..END`, `:f32|:f16|:int8` (e.g. `blocks.*.attn.hook_pattern`).
    #[arg(long = "probe")]
    pub probes: Vec<String>,
    /// Write the trace of the probes here.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Ablate a head: `L.H` (zero), `L.H=zero` or `L.H=mean` (needs --means).
    #[arg(long)]
    pub ablate: Vec<String>,
    /// Mean head results for mean ablation: safetensors with `hook_result_mean`
    /// [n_layers, n_heads, d_model] (as `tinylens ablate --save-means` writes).
    #[arg(long)]
    pub means: Option<PathBuf>,
    /// Impose the attention patterns recorded in this trace (all layers' `hook_pattern`).
    #[arg(long)]
    pub freeze_patterns: Option<PathBuf>,
    /// Patch a hook with its values from a trace: `TRACE:HOOK` (e.g. `clean.tlt:blocks.0.attn.hook_z`).
    #[arg(long)]
    pub patch: Vec<String>,
    /// Generate this many tokens after the prompt.
    #[arg(long, default_value_t = 0)]
    pub generate: usize,
    /// Sample among the K most likely tokens (with --temperature); greedy otherwise.
    #[arg(long, default_value_t = 0)]
    pub sample_top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Run id written in every trace frame (e.g. to reproduce a device's trace bit for bit).
    #[arg(long, default_value_t = 0)]
    pub run_id: u32,
    /// KV cache storage: f32 (TransformerLens's values), f16 or int8 (one scale per head
    /// vector), computed bit for bit as a device with that cache computes it.
    #[arg(long, default_value = "f32", value_parser = parse_kv)]
    pub kv: tinylens_core::KvStorage,
}

fn parse_kv(s: &str) -> std::result::Result<tinylens_core::KvStorage, String> {
    tinylens_core::KvStorage::from_name(s)
        .ok_or_else(|| format!("unknown KV cache storage `{s}` (f32, f16, int8)"))
}

fn parse_ablate(s: &str) -> Result<((u16, u16), AblateMode)> {
    let bad = || {
        Error::Argument(format!(
            "--ablate `{s}`: expected L.H, L.H=zero or L.H=mean"
        ))
    };
    let (head, mode) = match s.split_once('=') {
        Some((h, "zero")) => (h, AblateMode::Zero),
        Some((h, "mean")) => (h, AblateMode::Mean),
        Some(_) => return Err(bad()),
        None => (s, AblateMode::Zero),
    };
    let (l, h) = head.split_once('.').ok_or_else(bad)?;
    Ok((
        (l.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?),
        mode,
    ))
}

/// Reads `[n_layers, n_heads, d_model]` mean head results.
pub fn read_means(path: &Path, cfg: &tinylens_core::Config) -> Result<Vec<f32>> {
    let bytes = cli::read_input(path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
        path: path.into(),
        message: e.to_string(),
    })?;
    let name = ["hook_result_mean", "means.hook_result"]
        .into_iter()
        .find(|n| st.tensor(n).is_ok())
        .ok_or_else(|| Error::MissingTensor {
            name: format!("hook_result_mean (in {})", path.display()),
        })?;
    let t = st.tensor(name).expect("found above");
    let expected = vec![
        cfg.n_layers as usize,
        cfg.n_heads as usize,
        cfg.d_model as usize,
    ];
    if t.shape() != expected.as_slice() || t.dtype() != safetensors::Dtype::F32 {
        return Err(Error::TensorShape {
            name: name.into(),
            expected,
            got: t.shape().to_vec(),
        });
    }
    Ok(t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// The first run of a trace file, checked against the model it will be used with.
fn trace_run(path: &Path, model: &Model<'_>) -> Result<crate::trace::Run> {
    // Streamed: only the first run is kept, and reading stops at its end frame.
    let (run, _) = read_run(path, 0)?;
    // Without its end frame a run's length is unknown: its values would silently cover
    // fewer positions than were recorded.
    if !run.loss.end_seen {
        return Err(Error::Trace(format!(
            "{}: the run has no end frame (trace cut short?)",
            path.display()
        )));
    }
    if run.config != *model.config() {
        return Err(Error::Trace(format!(
            "{}: recorded with a model of another shape",
            path.display()
        )));
    }
    if run.model_crc != model.checksum() {
        note!(
            "warning: {} was recorded with model {:08x}, this is {:08x}",
            path.display(),
            run.model_crc,
            model.checksum()
        );
    }
    Ok(run)
}

/// One hook's values from a trace, complete (no lost records) or an error.
fn hook_values(run: &crate::trace::Run, hook: &str, path: &Path) -> Result<Vec<f32>> {
    let cache = run.cache();
    let (_, data) = cache
        .get(hook)
        .ok_or_else(|| Error::Trace(format!("{}: `{hook}` was not recorded", path.display())))?;
    if data.iter().any(|v| v.is_nan()) {
        return Err(Error::Trace(format!(
            "{}: `{hook}` has lost or unrecorded values",
            path.display()
        )));
    }
    Ok(data.clone())
}

pub fn options(a: &RunArgs, model: &Model<'_>, blob: &[u8]) -> Result<RunOptions> {
    let cfg = *model.config();
    let mut o = RunOptions {
        // With --batch-file the prompts come from the file (see `run`).
        tokens: match a.batch_file {
            Some(_) => Vec::new(),
            None => a.prompt.prompt(model, blob)?.tokens,
        },
        probes: a.probes.clone(),
        trace: a.trace.is_some(),
        ablate: a
            .ablate
            .iter()
            .map(|s| parse_ablate(s))
            .collect::<Result<_>>()?,
        generate: a.generate,
        top_k: a.sample_top_k,
        temperature: a.temperature,
        seed: a.prompt.seed,
        run_id: a.run_id,
        kv: a.kv,
        ..Default::default()
    };
    if let Some(p) = &a.means {
        o.means = Some(read_means(p, &cfg)?);
    }
    if let Some(p) = &a.freeze_patterns {
        let run = trace_run(p, model)?;
        let len = run.positions();
        let mut patterns = Vec::new();
        for l in 0..cfg.n_layers {
            patterns.extend(hook_values(
                &run,
                &format!("blocks.{l}.attn.hook_pattern"),
                p,
            )?);
        }
        o.frozen_patterns = Some((patterns, len));
    }
    for spec in &a.patch {
        let (path, hook) = spec
            .rsplit_once(':')
            .ok_or_else(|| Error::Argument(format!("--patch `{spec}`: expected TRACE:HOOK")))?;
        let (point, layer) = parse_hook_name(hook)?;
        let path = Path::new(path);
        let run = trace_run(path, model)?;
        let values = hook_values(&run, hook, path)?;
        o.patches.push((point, layer, values, run.positions()));
    }
    Ok(o)
}

pub fn run(a: RunArgs) -> Result<()> {
    let bytes = cli::read_input(&a.model)?;
    let model = Model::from_bytes(&bytes)?;
    let opts = options(&a, &model, &bytes)?;
    let prompts: Vec<Vec<u32>> = match &a.batch_file {
        Some(path) => prompts::batch_file(path, &a.prompt, &model, &bytes)?
            .into_iter()
            .map(|p| p.tokens)
            .collect(),
        None => vec![opts.tokens.clone()],
    };
    let outs = run_batch(&model, &opts, &prompts)?;
    if let Some(path) = &a.trace {
        let trace: Vec<u8> = outs.iter().flat_map(|o| o.trace.iter().copied()).collect();
        cli::write_output(path, &trace)?;
    }
    let vocab = crate::convert::vocab_of(&model);
    let tok = a.prompt.tokenizer(&bytes)?;
    let show = Show {
        args: &a,
        vocab: vocab.as_deref(),
        tok: tok.as_ref(),
    };
    let batch = a.batch_file.is_some();
    for (i, (out, prompt)) in outs.iter().zip(&prompts).enumerate() {
        let index = batch.then_some(i);
        if a.json {
            show.json(out, index)?;
        } else {
            show.text(out, prompt.len(), index)?;
        }
    }
    if let Some(path) = &a.trace {
        let (frames, records) = outs
            .iter()
            .filter_map(|o| o.summary.as_ref())
            .fold((0, 0), |(f, r), s| (f + s.frames, r + s.records));
        note!(
            "trace: {frames} frames, {records} records -> {}",
            path.display()
        );
    }
    Ok(())
}

/// How one sequence's output is printed.
struct Show<'a> {
    args: &'a RunArgs,
    vocab: Option<&'a [String]>,
    tok: Option<&'a TextTokenizer>,
}

impl Show<'_> {
    fn text_of(&self, ids: &[u32]) -> Option<String> {
        text_of(ids, self.tok, self.vocab)
    }

    /// One JSON object (a line), with the sequence's index in a batch.
    fn json(&self, out: &RunOutput, index: Option<usize>) -> Result<()> {
        let mut j = serde_json::json!({ "tokens": out.tokens, "logits": out.logits });
        if let Some(i) = index {
            j["sequence"] = serde_json::json!(i);
        }
        if let Some(v) = self.vocab {
            j["token_strings"] = serde_json::json!(out
                .tokens
                .iter()
                .map(|t| v.get(*t as usize).cloned().unwrap_or_default())
                .collect::<Vec<_>>());
        }
        if self.args.generate > 0 {
            j["generated"] = serde_json::json!(out.generated);
            if let Some(t) = self.text_of(&out.generated) {
                j["generated_text"] = serde_json::json!(t);
            }
        }
        outln!("{j}")?;
        Ok(())
    }

    /// The top tokens at every position (after a header line in a batch).
    fn text(&self, out: &RunOutput, n_prompt: usize, index: Option<usize>) -> Result<()> {
        let vocab = self.vocab;
        if let Some(i) = index {
            outln!("sequence {i}: {n_prompt} prompt tokens")?;
        }
        if vocab.is_some() {
            let strings: Vec<String> = out.tokens[..n_prompt]
                .iter()
                .map(|t| cli::token_label(vocab, *t))
                .collect();
            outln!("prompt: {n_prompt} tokens: {}", strings.join(" "))?;
        }
        for (p, (t, logits)) in out.tokens.iter().zip(&out.logits).enumerate() {
            let lp = crate::numerics::log_softmax(logits);
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|x, y| logits[*y].total_cmp(&logits[*x]));
            let top: Vec<String> = order
                .iter()
                .take(self.args.top_k)
                .map(|&i| format!("{} {:.3}", cli::token_label(vocab, i as u32), lp[i].exp()))
                .collect();
            outln!(
                "{p:>4} {:>10} -> {}",
                cli::token_label(vocab, *t),
                top.join(", ")
            )?;
        }
        if self.args.generate > 0 {
            let strings: Vec<String> = out
                .generated
                .iter()
                .map(|t| cli::token_label(vocab, *t))
                .collect();
            outln!("generated: {}", strings.join(" "))?;
            if let Some(t) = self.text_of(&out.tokens) {
                outln!("text: {}", escape(&t))?;
            }
        }
        Ok(())
    }
}

/// The text of `ids`: decoded by the tokenizer (special tokens left out), else the
/// vocabulary strings joined as a device prints them; None without either.
fn text_of(ids: &[u32], tok: Option<&TextTokenizer>, vocab: Option<&[String]>) -> Option<String> {
    match (tok, vocab) {
        (Some(t), _) => t.decode_text(ids).ok(),
        (None, Some(v)) => Some(
            ids.iter()
                .map(|t| v.get(*t as usize).map_or("", |s| s.as_str()))
                .collect(),
        ),
        (None, None) => None,
    }
}
