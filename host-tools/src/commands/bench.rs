//! `tinylens bench`: prompt-processing and KV-cache decoding speed on the host, with
//! probes off and with every hook recorded into a trace, all measured in one process.
//!
//! A *sample* is one sequence: `reset`, then the prompt (`--prompt-tokens`, default half
//! the context) through [`Session::prefill`], then greedy decoding to the end of the
//! context, one [`Session::step_with`] per token, each fed the previous step's argmax.
//! The prefill figure times the prompt part, the decode figure the decoding part, of the
//! same sample. With all hooks, a [`Recorder`] selecting every hook point (f32, every
//! layer, head and position) writes the trace into a `Vec<u8>` (cleared, not freed,
//! between samples); the time of its header and end frames counts as prefill. Samples
//! run until `--seconds` have passed for each of the two configurations (at least
//! `--min-samples`), after a warm-up, and the figures are medians over samples.
//! Nothing here asserts a time: the figures are printed, never checked.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use tinylens_core::probe::{Probe, ProbeSet};
use tinylens_core::sample;
use tinylens_core::trace::{self, Recorder};
use tinylens_core::{Error as CoreError, HookPoint, Hooks, Model, NoHooks, Session};

use crate::{cli, Error, Result};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model blob.
    pub model: PathBuf,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Seconds of measurement for each configuration (probes off, all hooks).
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Prompt length (default: half the context); the rest of the context is decoded.
    #[arg(long)]
    pub prompt_tokens: Option<usize>,
    /// Fewest samples per configuration, whatever `--seconds` says.
    #[arg(long, default_value_t = 20)]
    pub min_samples: usize,
    /// Only one configuration (for profiling): `off` or `all`.
    #[arg(long, value_parser = ["off", "all"])]
    pub only: Option<String>,
}

/// Timings of one configuration: per-sample durations of the two phases.
#[derive(Debug, Default)]
struct Phases {
    prefill: Vec<Duration>,
    decode: Vec<Duration>,
    trace_bytes: usize,
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    let n = v.len();
    if n == 0 {
        Duration::ZERO
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

/// A fixed prompt: `<bos>`-like token 0, then tokens from a fixed seed (so every run and
/// the TransformerLens script see the same sequence).
pub fn bench_prompt(d_vocab: u32, len: usize) -> Vec<u32> {
    let mut rng = sample::Rng::new(0x7115_1e45);
    (0..len)
        .map(|i| {
            if i == 0 || d_vocab == 1 {
                0
            } else {
                1 + (rng.next_u64() % (d_vocab as u64 - 1)) as u32
            }
        })
        .collect()
}

/// One sample: prompt then greedy decoding; returns (prefill, decode) time and the
/// generated tokens.
fn sample_once<H: Hooks>(
    session: &mut Session<'_, '_>,
    prompt: &[u32],
    decode: usize,
    hooks: &mut H,
    generated: &mut Vec<u32>,
) -> std::result::Result<(Duration, Duration), CoreError> {
    session.reset();
    generated.clear();
    let t0 = Instant::now();
    let logits = session.prefill(prompt, hooks)?;
    let mut next = sample::greedy(logits);
    let t1 = Instant::now();
    for _ in 0..decode {
        generated.push(next);
        let logits = session.step_with(next, hooks)?;
        next = sample::greedy(logits);
    }
    let t2 = Instant::now();
    Ok((t1 - t0, t2 - t1))
}

/// Every hook point the model has (LayerNorm points only with LayerNorm), every layer,
/// head and position, in f32.
fn all_hooks(model: &Model<'_>) -> Result<ProbeSet<{ HookPoint::ALL.len() }>> {
    let cfg = model.config();
    let mut ps = ProbeSet::new();
    for p in HookPoint::ALL {
        if p.needs_ln() && cfg.normalization == tinylens_core::Normalization::None {
            continue;
        }
        ps.push(Probe::all(p))?;
    }
    ps.validate(cfg)?;
    Ok(ps)
}

struct Plan<'a> {
    prompt: &'a [u32],
    decode: usize,
    budget: Duration,
    min_samples: usize,
}

impl Plan<'_> {
    fn samples(&self, start: Instant, taken: usize) -> bool {
        taken < self.min_samples || start.elapsed() < self.budget
    }
}

fn bench_no_hooks(session: &mut Session<'_, '_>, plan: &Plan<'_>) -> Result<Phases> {
    let mut out = Phases::default();
    let mut generated = Vec::with_capacity(plan.decode);
    // Warm-up: caches, branch predictors, CPU frequency.
    let warm = Instant::now();
    while warm.elapsed() < plan.budget / 10 {
        sample_once(
            session,
            plan.prompt,
            plan.decode,
            &mut NoHooks,
            &mut generated,
        )?;
    }
    let start = Instant::now();
    while plan.samples(start, out.prefill.len()) {
        let (p, d) = sample_once(
            session,
            plan.prompt,
            plan.decode,
            &mut NoHooks,
            &mut generated,
        )?;
        out.prefill.push(p);
        out.decode.push(d);
    }
    Ok(out)
}

fn bench_all_hooks(
    model: &Model<'_>,
    session: &mut Session<'_, '_>,
    plan: &Plan<'_>,
) -> Result<Phases> {
    let probes = all_hooks(model)?;
    let mut frame_buf = vec![0u8; trace::frame_buffer_len(model.config())];
    let mut bytes: Vec<u8> = Vec::new();
    let mut generated = Vec::with_capacity(plan.decode);
    let mut out = Phases::default();
    let mut one = |bytes: &mut Vec<u8>| -> Result<(Duration, Duration)> {
        bytes.clear();
        let t0 = Instant::now();
        let sink = |b: &[u8]| -> std::result::Result<(), CoreError> {
            bytes.extend_from_slice(b);
            Ok(())
        };
        let mut rec = Recorder::begin(model, &probes, sink, &mut frame_buf)?;
        let begin = t0.elapsed();
        let (p, d) = sample_once(session, plan.prompt, plan.decode, &mut rec, &mut generated)?;
        let t3 = Instant::now();
        let (summary, _) = rec.finish();
        let end = t3.elapsed();
        if let Some(e) = summary.error {
            return Err(Error::Trace(format!("recording failed: {e}")));
        }
        Ok((begin + p + end, d))
    };
    let warm = Instant::now();
    while warm.elapsed() < plan.budget / 10 {
        one(&mut bytes)?;
    }
    let start = Instant::now();
    while plan.samples(start, out.prefill.len()) {
        let (p, d) = one(&mut bytes)?;
        out.prefill.push(p);
        out.decode.push(d);
    }
    out.trace_bytes = bytes.len();
    Ok(out)
}

fn per_s(tokens: usize, d: Duration) -> f64 {
    if tokens == 0 {
        0.0
    } else if d.is_zero() {
        f64::INFINITY
    } else {
        tokens as f64 / d.as_secs_f64()
    }
}

fn ns_per(tokens: usize, d: Duration) -> f64 {
    d.as_secs_f64() * 1e9 / tokens.max(1) as f64
}

pub fn run(a: BenchArgs) -> Result<()> {
    let bytes = cli::read_input(&a.model)?;
    let model = Model::from_bytes(&bytes)?;
    let cfg = *model.config();
    let n_ctx = cfg.n_ctx as usize;
    let prompt_len = a.prompt_tokens.unwrap_or(n_ctx.div_ceil(2));
    if prompt_len == 0 || prompt_len > n_ctx {
        return Err(Error::Argument(format!(
            "--prompt-tokens must be in 1..={n_ctx} (the model's context)"
        )));
    }
    if !(a.seconds.is_finite() && a.seconds > 0.0) {
        return Err(Error::Argument("--seconds must be positive".into()));
    }
    let budget = Duration::try_from_secs_f64(a.seconds)
        .map_err(|_| Error::Argument(format!("--seconds {:e} is too large", a.seconds)))?;
    let decode = n_ctx - prompt_len;
    let prompt = bench_prompt(cfg.d_vocab, prompt_len);
    let plan = Plan {
        prompt: &prompt,
        decode,
        budget,
        min_samples: a.min_samples.max(1),
    };

    let mut workspace = vec![0.0f32; cfg.workspace_len()];
    let mut session = Session::new(&model, &mut workspace)?;
    let only = a.only.as_deref();
    let mut off = if only != Some("all") {
        bench_no_hooks(&mut session, &plan)?
    } else {
        Phases::default()
    };
    let mut all = if only != Some("off") {
        bench_all_hooks(&model, &mut session, &plan)?
    } else {
        Phases::default()
    };

    let (p_off, d_off) = (median(&mut off.prefill), median(&mut off.decode));
    let (p_all, d_all) = (median(&mut all.prefill), median(&mut all.decode));
    let positions = prompt_len + decode;
    let kinds: Vec<&str> = {
        let mut k: Vec<&str> = (0..model.tensor_count())
            .map(|i| model.tensor_at(i).kind.name())
            .filter(|k| *k != "bytes")
            .collect();
        k.sort_unstable();
        k.dedup();
        k
    };
    let params: usize = (0..model.tensor_count())
        .map(|i| model.tensor_at(i))
        .filter(|t| t.kind != tinylens_core::StorageKind::Bytes)
        .map(|t| t.rows * t.cols)
        .sum();
    let j = serde_json::json!({
        "model": a.model,
        "storage_kinds": kinds,
        "blob_bytes": bytes.len(),
        "parameters": params,
        "config": cfg,
        "hooks_compiled": tinylens_core::forward::HOOKS_COMPILED,
        "prompt_tokens": prompt_len,
        "decode_tokens": decode,
        "prompt": prompt,
        "samples": off.prefill.len(),
        "samples_all_hooks": all.prefill.len(),
        "prefill_tokens_per_s": per_s(prompt_len, p_off),
        "decode_tokens_per_s": per_s(decode, d_off),
        "prefill_tokens_per_s_all_hooks": per_s(prompt_len, p_all),
        "decode_tokens_per_s_all_hooks": per_s(decode, d_all),
        "prefill_ns_per_token": ns_per(prompt_len, p_off),
        "decode_ns_per_token": ns_per(decode, d_off),
        "prefill_ns_per_token_all_hooks": ns_per(prompt_len, p_all),
        "decode_ns_per_token_all_hooks": ns_per(decode, d_all),
        "trace_bytes_per_sequence": all.trace_bytes,
        "trace_bytes_per_token": all.trace_bytes as f64 / positions as f64,
        "workspace_bytes": cfg.workspace_len() * 4,
        "minimum_bytes": cfg.minimum_len() * 4,
        "workspace_over_minimum": cfg.workspace_len() as f64 / cfg.minimum_len() as f64,
        "trace_frame_buffer_bytes": trace::frame_buffer_len(&cfg),
    });
    if a.json {
        outln!("{j:#}")?;
        return Ok(());
    }
    outln!(
        "{}: {} ({} bytes, {} parameters), {} prompt + {} decoded tokens, {} / {} samples{}",
        a.model.display(),
        kinds.join("+"),
        bytes.len(),
        params,
        prompt_len,
        decode,
        off.prefill.len(),
        all.prefill.len(),
        if tinylens_core::forward::HOOKS_COMPILED {
            ""
        } else {
            " (strip-hooks build: hooks compiled out, all-hooks figures record nothing)"
        }
    )?;
    outln!(
        "{:<12} {:>14} {:>10} {:>14} {:>10}",
        "",
        "prefill tok/s",
        "ns/tok",
        "decode tok/s",
        "ns/tok"
    )?;
    for (name, p, d) in [("probes off", p_off, d_off), ("all hooks", p_all, d_all)] {
        outln!(
            "{name:<12} {:>14.0} {:>10.0} {:>14.0} {:>10.0}",
            per_s(prompt_len, p),
            ns_per(prompt_len, p),
            per_s(decode, d),
            ns_per(decode, d)
        )?;
    }
    outln!(
        "all hooks / probes off: prefill {:.2}x, decode {:.2}x time; trace {:.0} bytes per token",
        p_all.as_secs_f64() / p_off.as_secs_f64(),
        d_all.as_secs_f64() / d_off.as_secs_f64(),
        all.trace_bytes as f64 / positions as f64
    )?;
    outln!(
        "RAM: workspace {} bytes, minimum {} bytes ({:.3}x)",
        cfg.workspace_len() * 4,
        cfg.minimum_len() * 4,
        cfg.workspace_len() as f64 / cfg.minimum_len() as f64
    )?;
    Ok(())
}
