//! Running the model on the host with probes and interventions, as `tinylens run`
//! does: options checked here, the model run by the [`crate::engine`].

use std::path::Path;

use tinylens_core::intervene::{Ablation, AblationMode, FreezePatterns, HeadRef, Patch};
use tinylens_core::probe::ProbeSet;
use tinylens_core::trace::{self, Recorder, Summary};
use tinylens_core::{Error as CoreError, HookPoint, Hooks, Model, Site};

use crate::engine::{Engine, Sampling, Tape};

use crate::{Error, Result};

pub use crate::engine::{probe_set, HOST_PROBES};

/// How an ablated head is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AblateMode {
    Zero,
    Mean,
}

/// Everything `tinylens run` can do to a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub tokens: Vec<u32>,
    /// Probe patterns (TransformerLens names with wildcards).
    pub probes: Vec<String>,
    /// Write a trace (with the probes) even when no probe is given.
    pub trace: bool,
    pub ablate: Vec<(HeadRef, AblateMode)>,
    /// `[n_layers][n_heads][d_model]` mean head results, for mean ablation.
    pub means: Option<Vec<f32>>,
    /// `[n_layers][n_heads][len][len]` attention patterns and their `len`.
    pub frozen_patterns: Option<(Vec<f32>, usize)>,
    /// Values patched in: hook, layer, values in TL layout, positions covered.
    pub patches: Vec<(HookPoint, u16, Vec<f32>, usize)>,
    /// Tokens to generate after the prompt.
    pub generate: usize,
    pub top_k: usize,
    pub temperature: f32,
    pub seed: u64,
    /// Run id written in every trace frame (firmware picks its own; 0 by default).
    pub run_id: u32,
    /// How the KV cache is stored (as a device with that choice stores it).
    pub kv: tinylens_core::KvStorage,
}

/// What a run produced.
#[derive(Debug, Clone, Default)]
pub struct RunOutput {
    /// Prompt and generated tokens.
    pub tokens: Vec<u32>,
    /// One row of logits per processed position.
    pub logits: Vec<Vec<f32>>,
    pub generated: Vec<u32>,
    pub trace: Vec<u8>,
    pub summary: Option<Summary>,
}

/// Dynamic composition of the interventions a run asked for, in a fixed order:
/// ablation, frozen patterns, patches; a recorder after them sees the changed values.
#[derive(Clone)]
struct Interventions<'a> {
    ablation: Option<Ablation<'a>>,
    frozen: Option<FreezePatterns<'a>>,
    patches: Vec<Patch<'a>>,
}

impl Hooks for Interventions<'_> {
    fn wants(&self, point: HookPoint) -> bool {
        self.ablation.as_ref().is_some_and(|h| h.wants(point))
            || self.frozen.as_ref().is_some_and(|h| h.wants(point))
            || self.patches.iter().any(|h| h.wants(point))
    }

    fn hook(&mut self, site: Site, value: &mut [f32]) {
        if let Some(a) = self.ablation.as_mut().filter(|a| a.wants(site.point)) {
            a.hook(site, value);
        }
        if let Some(f) = self.frozen.as_mut().filter(|f| f.wants(site.point)) {
            f.hook(site, value);
        }
        for p in self.patches.iter_mut().filter(|p| p.wants(site.point)) {
            p.hook(site, value);
        }
    }
}

/// Parses an exact hook name (`blocks.0.attn.hook_z`) into its point and layer.
pub fn parse_hook_name(name: &str) -> Result<(HookPoint, u16)> {
    let mut ps: ProbeSet<4> = ProbeSet::new();
    if name.contains('*') || ps.add_pattern(name).is_err() || ps.len() != 1 {
        return Err(Error::Argument(format!("`{name}` is not a hook name")));
    }
    let p = ps.probes()[0];
    if p.point.per_layer() && p.layer.is_none() {
        return Err(Error::Argument(format!("`{name}` names no layer")));
    }
    Ok((p.point, p.layer.unwrap_or(0)))
}

/// Runs the prompt (and generation) with the requested probes and interventions.
pub fn run(model: &Model<'_>, opts: &RunOptions) -> Result<RunOutput> {
    let mut out = run_batch(model, opts, std::slice::from_ref(&opts.tokens))?;
    Ok(out.remove(0))
}

/// Runs every prompt of `prompts` (instead of `opts.tokens`) as one batch on the
/// engine's threads, each with the probes, interventions and generation of `opts`
/// (sequence `i` samples with seed `opts.seed + i` and writes its trace as run
/// `opts.run_id + i`); the outputs are in prompt order, each the same as a run of that
/// prompt alone.
pub fn run_batch(
    model: &Model<'_>,
    opts: &RunOptions,
    prompts: &[Vec<u32>],
) -> Result<Vec<RunOutput>> {
    let cfg = *model.config();
    if prompts.is_empty() {
        return Err(Error::Argument("no prompt given".into()));
    }
    for tokens in prompts {
        check_prompt(&cfg, tokens, opts.generate)?;
    }
    let heads: Vec<HeadRef> = opts.ablate.iter().map(|(h, _)| *h).collect();
    let interventions = interventions(&cfg, opts, &heads)?;

    // The engine runs the prompts in blocks; a trace is written afterwards from the
    // values a tape kept, in stepping order, so it is byte for byte a device's.
    let engine = Engine::new(model).with_kv(opts.kv);
    let sampling = Sampling {
        top_k: opts.top_k,
        temperature: opts.temperature,
        seed: opts.seed,
    };
    let probes = probe_set(model, &opts.probes)?;
    let recording = opts.trace || !probes.is_empty();
    let seqs = engine.run_batch(prompts, opts.generate, &sampling, |_| {
        (interventions.clone(), Tape::new(&cfg, &probes))
    })?;
    let v = cfg.d_vocab_out as usize;
    seqs.into_iter()
        .enumerate()
        .map(|(i, seq)| {
            let mut out = RunOutput {
                logits: seq.logits.chunks_exact(v).map(<[f32]>::to_vec).collect(),
                tokens: seq.tokens,
                generated: seq.generated,
                ..Default::default()
            };
            if recording {
                let run_id = opts.run_id.wrapping_add(i as u32);
                let (trace, summary) =
                    write_trace(model, &probes, seq.hooks.1, &out.tokens, run_id)?;
                out.trace = trace;
                out.summary = Some(summary);
            }
            Ok(out)
        })
        .collect()
}

/// A prompt of in-range tokens that leaves room for `generate` more in the context.
fn check_prompt(cfg: &tinylens_core::Config, tokens: &[u32], generate: usize) -> Result<()> {
    if tokens.is_empty() {
        return Err(Error::Argument("no tokens given".into()));
    }
    if tokens.len().saturating_add(generate) > cfg.n_ctx as usize {
        return Err(Error::Argument(format!(
            "{} prompt tokens + {generate} generated exceed the model's context of {} positions",
            tokens.len(),
            cfg.n_ctx
        )));
    }
    if let Some(t) = tokens.iter().find(|t| **t >= cfg.d_vocab) {
        return Err(CoreError::TokenOutOfRange {
            token: *t,
            d_vocab: cfg.d_vocab,
        }
        .into());
    }
    Ok(())
}

/// The interventions `opts` asks for, checked against the model.
fn interventions<'a>(
    cfg: &tinylens_core::Config,
    opts: &'a RunOptions,
    heads: &'a [HeadRef],
) -> Result<Interventions<'a>> {
    if let Some((l, h)) = heads
        .iter()
        .find(|(l, h)| u32::from(*l) >= cfg.n_layers || u32::from(*h) >= cfg.n_heads)
    {
        return Err(Error::Argument(format!(
            "--ablate {l}.{h}: the model has {} layers of {} heads",
            cfg.n_layers, cfg.n_heads
        )));
    }
    let mean = opts.ablate.iter().any(|(_, m)| *m == AblateMode::Mean);
    if mean && opts.ablate.iter().any(|(_, m)| *m == AblateMode::Zero) {
        return Err(Error::Argument(
            "mixing zero and mean ablation in one run is not supported".into(),
        ));
    }
    let ablation = if heads.is_empty() {
        None
    } else {
        let mode = if mean {
            AblationMode::Mean(
                opts.means
                    .as_deref()
                    .ok_or_else(|| Error::Argument("mean ablation needs --means FILE".into()))?,
            )
        } else {
            AblationMode::Zero
        };
        Some(
            Ablation::new(cfg, heads, mode)
                .map_err(|e| Error::Argument(format!("--ablate: {e}")))?,
        )
    };
    let frozen = match &opts.frozen_patterns {
        Some((p, len)) => Some(
            FreezePatterns::new(cfg, p, *len)
                .map_err(|e| Error::Argument(format!("frozen patterns: {e}")))?,
        ),
        None => None,
    };
    let patches = opts
        .patches
        .iter()
        .map(|(point, layer, values, len)| {
            Patch::new(cfg, *point, *layer, None, values, *len)
                .map_err(|e| Error::Argument(format!("patch: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Interventions {
        ablation,
        frozen,
        patches,
    })
}

/// The trace of one sequence (`tokens`) from the values its tape kept.
fn write_trace(
    model: &Model<'_>,
    probes: &ProbeSet<HOST_PROBES>,
    tape: Tape<'_, HOST_PROBES>,
    tokens: &[u32],
    run_id: u32,
) -> Result<(Vec<u8>, Summary)> {
    let mut frame_buf = vec![0u8; trace::frame_buffer_len(model.config())];
    let mut trace_bytes = Vec::new();
    let sink = |b: &[u8]| -> std::result::Result<(), CoreError> {
        trace_bytes.extend_from_slice(b);
        Ok(())
    };
    let mut recorder = Recorder::begin_run(model, probes, sink, &mut frame_buf, run_id)?;
    tape.replay(tokens, &mut recorder);
    let (summary, _) = recorder.finish();
    if let Some(e) = summary.error {
        return Err(Error::Trace(format!("recording failed: {e}")));
    }
    Ok((trace_bytes, summary))
}

/// Reads a whole file with the path in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}
