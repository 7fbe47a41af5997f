//! The host engine: the one place the host runs the model.
//!
//! It runs the core's forward pass ([`Session`]) — the same code the device runs — in
//! blocks of positions, with the host's matrix kernels ([`HostKernels`]: SIMD,
//! row blocks over threads), a KV cache per sequence, and independent sequences of a
//! batch on all rayon threads. Stepping and the engine are two schedules of one
//! forward pass: every logit and hook value is the same bits whatever the block size,
//! the batch, the kernels or the thread count (tests: `core/src/block_tests.rs`,
//! `tests/tests/engine.rs`).
//!
//! - [`Engine::run`]: one sequence (prompt in blocks, then generation one token at a
//!   time) with any [`Hooks`] (interventions, recorders);
//! - [`Engine::run_batch`]: many sequences in parallel, each with its own hooks;
//! - [`Engine::run_with_cache`]: TransformerLens's `run_with_cache`, recorded into
//!   memory with the batch as leading dimension ([`CacheHooks`], [`stack`]);
//! - [`Tape`]: trace frames from any schedule in stepping order (what `tinylens run
//!   --trace` writes, byte for byte a device's trace).
//!
//! Threads: [`set_threads`] (the `--threads` option of every command) sizes the rayon
//! pool; by default it has one thread per core.

mod cache;
mod kernels;
mod simd;
mod tape;

pub use cache::{shape, stack, CacheHooks};
pub use kernels::HostKernels;
pub use tape::Tape;

use rayon::prelude::*;
use tinylens_core::probe::{Probe, ProbeSet};
use tinylens_core::sample::{self, Rng};
use tinylens_core::{HookPoint, Hooks, KvStorage, Model, Normalization, Session, SessionOptions};

use crate::export::Cache;
use crate::{Error, Result};

/// Probe capacity on the host (firmware uses the core's smaller default).
pub const HOST_PROBES: usize = 128;

/// Positions per block by default: enough that each weight is fetched once for many
/// positions, small enough that a block's activations stay in the cache.
pub const DEFAULT_BLOCK: usize = 64;

/// Sizes the rayon pool the engine runs on: `Some(n)` threads (n ≥ 1), or one per core.
/// Call once, before any model runs (`--threads N`); results do not depend on it.
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    let Some(n) = threads else { return Ok(()) };
    if n == 0 {
        return Err(Error::Argument("--threads must be at least 1".into()));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| Error::Argument(format!("--threads {n}: {e}")))
}

/// Threads the engine runs on.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// How the next token is chosen after each position: greedy, or among the `top_k`
/// most likely at `temperature` (with `top_k > 1` and `temperature > 0`). Sequence `i`
/// of a batch draws from `Rng::new(seed + i)`.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    pub top_k: usize,
    pub temperature: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            top_k: 0,
            temperature: 1.0,
            seed: 0,
        }
    }
}

impl Sampling {
    /// Whether choosing a token draws from the random generator (top-k sampling).
    fn draws(&self) -> bool {
        self.top_k > 1 && self.temperature > 0.0
    }

    fn pick(&self, logits: &[f32], rng: &mut Rng) -> u32 {
        if self.draws() {
            sample::top_k::<64>(logits, self.top_k, self.temperature, rng)
        } else {
            sample::greedy(logits)
        }
    }
}

/// What one sequence produced.
#[derive(Debug, Clone, Default)]
pub struct Sequence<H> {
    /// Prompt and generated tokens.
    pub tokens: Vec<u32>,
    pub generated: Vec<u32>,
    /// Logits, `[positions][d_vocab_out]` (only the last position's unless the engine
    /// keeps all: [`Engine::keep_logits`]).
    pub logits: Vec<f32>,
    /// The hooks the sequence ran with, after the run (e.g. a filled [`CacheHooks`]).
    pub hooks: H,
}

/// The host engine for one model (cheap to build; see the module docs).
#[derive(Clone, Copy)]
pub struct Engine<'m> {
    model: Model<'m>,
    kernels: HostKernels,
    block: usize,
    kv: KvStorage,
    all_logits: bool,
}

impl<'m> Engine<'m> {
    /// The model with the best kernels of this CPU, blocks of [`DEFAULT_BLOCK`], every
    /// position's logits kept.
    pub fn new(model: &Model<'m>) -> Self {
        Engine {
            model: *model,
            kernels: HostKernels::detect(),
            block: DEFAULT_BLOCK,
            kv: KvStorage::F32,
            all_logits: true,
        }
    }

    /// Positions per block (1 is stepping).
    pub fn with_block(mut self, block: usize) -> Self {
        self.block = block.max(1);
        self
    }

    /// How each sequence's KV cache is stored (f32 by default; f16 and int8 are the
    /// device's RAM-saving choices, computed here bit for bit as a device computes them).
    pub fn with_kv(mut self, kv: KvStorage) -> Self {
        self.kv = kv;
        self
    }

    pub fn with_kernels(mut self, kernels: HostKernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// Whether [`Sequence::logits`] holds every position's logits (default) or the last.
    pub fn keep_logits(mut self, all: bool) -> Self {
        self.all_logits = all;
        self
    }

    pub fn model(&self) -> &Model<'m> {
        &self.model
    }

    pub fn kernels(&self) -> &HostKernels {
        &self.kernels
    }

    /// Runs one sequence: the prompt a block at a time, then `generate` tokens one at
    /// a time, each chosen by `sampling` from the previous position's logits; `hooks`
    /// see (and may change) every value. Large products use every thread.
    pub fn run<H: Hooks>(
        &self,
        prompt: &[u32],
        generate: usize,
        sampling: &Sampling,
        hooks: &mut H,
    ) -> Result<Sequence<()>> {
        let cfg = *self.model.config();
        let v = cfg.d_vocab_out as usize;
        let block = self.block.min(prompt.len().max(1));
        let mut ws = vec![0.0f32; cfg.session_workspace_len(block, self.kv)];
        let options = SessionOptions { block, kv: self.kv };
        let mut session = Session::with_options(&self.model, &mut ws, options, self.kernels)?;
        let mut rng = Rng::new(sampling.seed);
        let mut out = Sequence {
            tokens: prompt.to_vec(),
            ..Default::default()
        };
        let keep = |logits: &[f32], out: &mut Sequence<()>| {
            if !self.all_logits {
                out.logits.clear();
            }
            out.logits.extend_from_slice(logits);
        };
        let mut next = 0;
        for chunk in prompt.chunks(block) {
            let logits = session.forward(chunk, hooks)?;
            if sampling.draws() {
                // Every position draws from the generator, as stepping does.
                for row in logits.chunks_exact(v) {
                    next = sampling.pick(row, &mut rng);
                }
            } else if generate > 0 {
                next = sampling.pick(&logits[logits.len() - v..], &mut rng);
            }
            let last = if self.all_logits { 0 } else { logits.len() - v };
            keep(&logits[last..], &mut out);
        }
        for _ in 0..generate {
            out.generated.push(next);
            out.tokens.push(next);
            let logits = session.step_with(next, hooks)?;
            next = sampling.pick(logits, &mut rng);
            keep(logits, &mut out);
        }
        Ok(out)
    }

    /// Runs independent sequences on all threads, sequence `i` with the hooks
    /// `make_hooks(i)` and the sampling seed `sampling.seed + i`; the results are in
    /// prompt order and do not depend on the thread count.
    pub fn run_batch<H, F>(
        &self,
        prompts: &[Vec<u32>],
        generate: usize,
        sampling: &Sampling,
        make_hooks: F,
    ) -> Result<Vec<Sequence<H>>>
    where
        H: Hooks + Send,
        F: Fn(usize) -> H + Sync,
    {
        // With a sequence per thread the threads are busy; split rows only when not.
        let mut engine = *self;
        engine.kernels.split_rows &= prompts.len() < threads();
        let one = |(i, prompt): (usize, &Vec<u32>)| {
            let mut hooks = make_hooks(i);
            let s = Sampling {
                seed: sampling.seed.wrapping_add(i as u64),
                ..*sampling
            };
            let out = engine.run(prompt, generate, &s, &mut hooks)?;
            Ok(Sequence {
                tokens: out.tokens,
                generated: out.generated,
                logits: out.logits,
                hooks,
            })
        };
        // One sequence, or one thread: on this thread, without waking a pool thread
        // (whose hand-over and idle spinning cost more than a small model's forward).
        if prompts.len() == 1 || threads() == 1 {
            return prompts.iter().enumerate().map(one).collect();
        }
        prompts.par_iter().enumerate().map(one).collect()
    }

    /// TransformerLens's `model.run_with_cache(tokens)`: the logits `[batch, pos,
    /// d_vocab_out]` and the cache of the hooks `names` select (probe patterns, e.g.
    /// `blocks.*.attn.hook_pattern`; empty: every hook point), each `[batch, ...]`.
    /// The prompts must have one length, as a TransformerLens batch has.
    pub fn run_with_cache(
        &self,
        prompts: &[Vec<u32>],
        names: &[String],
    ) -> Result<(Vec<f32>, Cache)> {
        let cfg = *self.model.config();
        let len = prompts.first().map_or(0, Vec::len);
        if len == 0 || prompts.iter().any(|p| p.len() != len) {
            return Err(Error::Argument(
                "run_with_cache needs a batch of non-empty prompts of one length".into(),
            ));
        }
        let probes = if names.is_empty() {
            all_hooks(&self.model)?
        } else {
            probe_set(&self.model, names)?
        };
        let engine = self.keep_logits(true);
        let seqs = engine.run_batch(prompts, 0, &Sampling::default(), |_| {
            CacheHooks::new(&cfg, &probes, len)
        })?;
        let mut logits = Vec::with_capacity(prompts.len() * len * cfg.d_vocab_out as usize);
        let mut caches = Vec::with_capacity(seqs.len());
        for s in seqs {
            logits.extend_from_slice(&s.logits);
            caches.push(s.hooks.into_cache());
        }
        Ok((logits, stack(caches)?))
    }
}

/// Every hook point the model has (LayerNorm points only with LayerNorm), every layer,
/// head and position, in f32.
pub fn all_hooks(model: &Model<'_>) -> Result<ProbeSet<HOST_PROBES>> {
    let cfg = model.config();
    let mut ps = ProbeSet::new();
    for p in HookPoint::ALL {
        if p.needs_ln() && cfg.normalization == Normalization::None {
            continue;
        }
        ps.push(Probe::all(p))?;
    }
    Ok(ps)
}

/// Builds the probe set for a list of patterns (TransformerLens names with wildcards,
/// `[HEAD]`, `@POS`, `:precision`), checked against the model.
pub fn probe_set(model: &Model<'_>, patterns: &[String]) -> Result<ProbeSet<HOST_PROBES>> {
    let mut ps = ProbeSet::new();
    let c = model.config();
    for p in patterns {
        let mut one: ProbeSet<HOST_PROBES> = ProbeSet::new();
        one.add_pattern(p)
            .map_err(|e| Error::Argument(format!("probe `{p}`: {e}")))?;
        let before = ps.len();
        for probe in one.probes() {
            // A wildcard means "every matching hook the model has": a model without
            // LayerNorm has no LN hooks, so `*` skips them; an exact name is still refused.
            if p.contains('*') && probe.point.needs_ln() && c.normalization == Normalization::None {
                continue;
            }
            ps.push(*probe)
                .map_err(|e| Error::Argument(format!("probe `{p}`: {e}")))?;
        }
        if ps.probes()[before..]
            .iter()
            .any(|probe| probe.validate(c).is_err())
        {
            return Err(Error::Argument(format!(
                "probe `{p}` names a layer, head, position or hook this model does not have \
                 ({} layers, {} heads, n_ctx {}, normalization {:?})",
                c.n_layers, c.n_heads, c.n_ctx, c.normalization
            )));
        }
    }
    Ok(ps)
}
