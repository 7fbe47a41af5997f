//! `tinylens bench`: prompt-processing and KV-cache decoding speed on the host, with
//! probes off and with every hook recorded, all measured in one process, through the
//! same [`Engine`] every command runs the model with.
//!
//! A *sample* is one batch of `--batch` sequences, each the same fixed prompt
//! (`--prompt-tokens`, default half the context; [`bench_prompt`]), processed in
//! blocks of positions, the sequences spread over the `--threads` threads. The prefill
//! figure times the prompts alone and counts batch × prompt tokens per second. The
//! decode figure times prompt + greedy decoding (`--decode-tokens`, default to the end
//! of the context; one token at a time per sequence, each fed the previous step's
//! argmax) and subtracts the prefill time. With all hooks, every hook point (f32, every layer, head and
//! position, logits included) is recorded into memory, TransformerLens-shaped
//! ([`CacheHooks`], what `run_with_cache` returns); the trace figures write the same
//! values as trace frames instead (one trace per sequence, byte for byte what a device
//! would send). Samples run until `--seconds` have passed for each configuration (at
//! least `--min-samples`), after a warm-up, and the figures are medians over samples.
//! Nothing here asserts a time: the figures are printed, never checked.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use rayon::prelude::*;
use tinylens_core::sample;
use tinylens_core::trace::{self, Recorder};
use tinylens_core::{Config, Error as CoreError, Model, NoHooks};

use crate::engine::{self, all_hooks, CacheHooks, Engine, Sampling, Tape};
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
    /// Only one configuration (for profiling): `off`, `all` (into memory) or `trace`.
    #[arg(long, value_parser = ["off", "all", "trace"])]
    pub only: Option<String>,
    /// Tokens decoded after the prompt (default: to the end of the context).
    #[arg(long)]
    pub decode_tokens: Option<usize>,
    /// Sequences per batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Positions per block of the forward pass (1 is the device's stepping).
    #[arg(long, default_value_t = engine::DEFAULT_BLOCK)]
    pub block: usize,
}

/// Timings of one configuration: per-sample durations of the two phases.
#[derive(Debug, Default)]
struct Phases {
    prefill: Vec<Duration>,
    /// CPU time of the process (every thread) during each prefill (the counters tick
    /// coarsely: only their mean over many samples is meaningful).
    prefill_cpu: Vec<Duration>,
    total: Vec<Duration>,
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

/// What a sample records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    Nothing,
    /// Every hook into memory (`run_with_cache`).
    Cache,
    /// Every hook as trace frames.
    Trace,
}

struct Plan<'a> {
    engine: Engine<'a>,
    prompts: Vec<Vec<u32>>,
    decode: usize,
    budget: Duration,
    min_samples: usize,
}

impl Plan<'_> {
    fn samples(&self, start: Instant, taken: usize) -> bool {
        taken < self.min_samples || start.elapsed() < self.budget
    }

    /// One batch, prompt then `decode` tokens; returns its time and trace bytes.
    fn once(&self, record: Record, decode: usize) -> Result<(Duration, Duration, usize)> {
        let model = self.engine.model();
        let cfg = *model.config();
        let len = self.prompts[0].len() + decode;
        let greedy = Sampling::default();
        let probes = all_hooks(model)?;
        let (t0, c0) = (Instant::now(), cpu_time());
        let bytes = match record {
            Record::Nothing => {
                self.engine
                    .run_batch(&self.prompts, decode, &greedy, |_| NoHooks)?;
                0
            }
            Record::Cache => {
                let seqs = self.engine.run_batch(&self.prompts, decode, &greedy, |_| {
                    CacheHooks::new(&cfg, &probes, len)
                })?;
                drop(seqs);
                0
            }
            Record::Trace => {
                let seqs = self
                    .engine
                    .run_batch(&self.prompts, decode, &greedy, |_| Tape::new(&cfg, &probes))?;
                let traces: Vec<Result<usize>> = seqs
                    .into_par_iter()
                    .map(|s| trace_of(model, &probes, s.hooks, &s.tokens))
                    .collect();
                traces.into_iter().sum::<Result<usize>>()?
            }
        };
        Ok((t0.elapsed(), cpu_time().saturating_sub(c0), bytes))
    }

    fn measure(&self, record: Record) -> Result<Phases> {
        let mut out = Phases::default();
        // Warm-up: caches, branch predictors, CPU frequency.
        let warm = Instant::now();
        while warm.elapsed() < self.budget / 10 {
            self.once(record, 0)?;
        }
        let start = Instant::now();
        while self.samples(start, out.prefill.len()) {
            let (p, cpu, bytes) = self.once(record, 0)?;
            out.prefill.push(p);
            out.prefill_cpu.push(cpu);
            if self.decode > 0 {
                let (t, _, b) = self.once(record, self.decode)?;
                out.total.push(t);
                out.trace_bytes = b;
            } else {
                out.total.push(p);
                out.trace_bytes = bytes;
            }
        }
        Ok(out)
    }
}

/// CPU time of this process so far, every thread (Linux: the nanosecond counters of
/// `/proc/self/task/*/schedstat`; zero elsewhere). On a loaded machine the wall clock
/// measures the load; CPU time measures the work.
fn cpu_time() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// Writes one sequence's trace from its tape; returns its length in bytes.
fn trace_of(
    model: &Model<'_>,
    probes: &tinylens_core::probe::ProbeSet<{ engine::HOST_PROBES }>,
    tape: Tape<'_, { engine::HOST_PROBES }>,
    tokens: &[u32],
) -> Result<usize> {
    let mut frame_buf = vec![0u8; trace::frame_buffer_len(model.config())];
    let mut bytes = Vec::new();
    let sink = |b: &[u8]| -> std::result::Result<(), CoreError> {
        bytes.extend_from_slice(b);
        Ok(())
    };
    let mut rec = Recorder::begin(model, probes, sink, &mut frame_buf)?;
    tape.replay(tokens, &mut rec);
    let (summary, _) = rec.finish();
    if let Some(e) = summary.error {
        return Err(Error::Trace(format!("recording failed: {e}")));
    }
    Ok(bytes.len())
}

/// Floating-point operations of the forward pass over positions `p0..p1` of one
/// sequence, counting a multiply-add as two: every weight product, and the attention
/// scores and weighted sums (position `p` attends to `p + 1` keys).
pub fn forward_flops(cfg: &Config, p0: usize, p1: usize) -> f64 {
    let (l, h, dh, dm, v) = (
        cfg.n_layers as f64,
        cfg.n_heads as f64,
        cfg.d_head as f64,
        cfg.d_model as f64,
        cfg.d_vocab_out as f64,
    );
    let weights = l * 4.0 * dm * h * dh + dm * v;
    let keys: f64 = (p0..p1).map(|p| (p + 1) as f64).sum();
    2.0 * (weights * (p1 - p0) as f64 + l * h * 2.0 * dh * keys)
}

fn mean(v: &[Duration]) -> Duration {
    let n = v.len().max(1) as u32;
    v.iter().sum::<Duration>() / n
}

fn median_diff(total: &mut [Duration], prefill: &mut [Duration]) -> Duration {
    median(total).saturating_sub(median(prefill))
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
    let decode = a.decode_tokens.unwrap_or(n_ctx - prompt_len);
    if decode > n_ctx - prompt_len {
        return Err(Error::Argument(format!(
            "--decode-tokens {decode}: the prompt leaves {} positions of the context",
            n_ctx - prompt_len
        )));
    }
    if a.batch == 0 || a.block == 0 {
        return Err(Error::Argument(
            "--batch and --block must be at least 1".into(),
        ));
    }
    let prompt = bench_prompt(cfg.d_vocab, prompt_len);
    let engine = Engine::new(&model).with_block(a.block).keep_logits(false);
    let plan = Plan {
        engine,
        prompts: vec![prompt.clone(); a.batch],
        decode,
        budget,
        min_samples: a.min_samples.max(1),
    };
    let only = a.only.as_deref();
    let run = |name: &str, record: Record| -> Result<Phases> {
        if only.is_none_or(|o| o == name) {
            plan.measure(record)
        } else {
            Ok(Phases::default())
        }
    };
    let mut off = run("off", Record::Nothing)?;
    let mut all = run("all", Record::Cache)?;
    let mut tr = run("trace", Record::Trace)?;

    let b = a.batch;
    let (p_off, d_off) = (
        median(&mut off.prefill),
        median_diff(&mut off.total, &mut off.prefill),
    );
    let (p_all, d_all) = (
        median(&mut all.prefill),
        median_diff(&mut all.total, &mut all.prefill),
    );
    let (p_tr, d_tr) = (
        median(&mut tr.prefill),
        median_diff(&mut tr.total, &mut tr.prefill),
    );
    let positions = prompt_len + decode;
    let flops = b as f64 * forward_flops(&cfg, 0, prompt_len);
    let gflops = |d: Duration| {
        if d.is_zero() {
            0.0
        } else {
            flops / d.as_secs_f64() / 1e9
        }
    };
    let threads = engine::threads();
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
        "batch": b,
        "threads": threads,
        "block": a.block,
        "kernels": plan.engine.kernels().name(),
        "prompt_tokens": prompt_len,
        "decode_tokens": decode,
        "prompt": prompt,
        "samples": off.prefill.len(),
        "samples_all_hooks": all.prefill.len(),
        "samples_trace": tr.prefill.len(),
        "prefill_tokens_per_s": per_s(b * prompt_len, p_off),
        "decode_tokens_per_s": per_s(b * decode, d_off),
        "prefill_tokens_per_s_all_hooks": per_s(b * prompt_len, p_all),
        "decode_tokens_per_s_all_hooks": per_s(b * decode, d_all),
        "prefill_tokens_per_s_trace": per_s(b * prompt_len, p_tr),
        "decode_tokens_per_s_trace": per_s(b * decode, d_tr),
        "prefill_ns_per_token": ns_per(b * prompt_len, p_off),
        "decode_ns_per_token": ns_per(b * decode, d_off),
        "prefill_ns_per_token_all_hooks": ns_per(b * prompt_len, p_all),
        "decode_ns_per_token_all_hooks": ns_per(b * decode, d_all),
        "prefill_tokens_per_cpu_s": per_s(b * prompt_len, mean(&off.prefill_cpu)),
        "prefill_tokens_per_cpu_s_all_hooks": per_s(b * prompt_len, mean(&all.prefill_cpu)),
        "prefill_tokens_per_cpu_s_trace": per_s(b * prompt_len, mean(&tr.prefill_cpu)),
        "prefill_cpu_over_wall": mean(&off.prefill_cpu).as_secs_f64() / p_off.as_secs_f64(),
        "prefill_gflops_per_cpu_s": gflops(mean(&off.prefill_cpu)),
        "prefill_gflops_per_cpu_s_all_hooks": gflops(mean(&all.prefill_cpu)),
        "prefill_flops_per_batch": flops,
        "prefill_gflops_per_s": gflops(p_off),
        "prefill_gflops_per_s_all_hooks": gflops(p_all),
        "trace_bytes_per_sequence": tr.trace_bytes / b,
        "trace_bytes_per_token": tr.trace_bytes as f64 / (b * positions) as f64,
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
        "{}: {} ({} bytes, {} parameters), batch {b} x ({} prompt + {} decoded tokens), {} \
         threads, {} kernels, blocks of {}, {} / {} / {} samples{}",
        a.model.display(),
        kinds.join("+"),
        bytes.len(),
        params,
        prompt_len,
        decode,
        threads,
        plan.engine.kernels().name(),
        a.block,
        off.prefill.len(),
        all.prefill.len(),
        tr.prefill.len(),
        if tinylens_core::forward::HOOKS_COMPILED {
            ""
        } else {
            " (strip-hooks build: hooks compiled out, all-hooks figures record nothing)"
        }
    )?;
    outln!(
        "{:<20} {:>14} {:>10} {:>10} {:>14} {:>10}",
        "",
        "prefill tok/s",
        "ns/tok",
        "GFLOP/s",
        "decode tok/s",
        "ns/tok"
    )?;
    for (name, p, d) in [
        ("probes off", p_off, d_off),
        ("all hooks (memory)", p_all, d_all),
        ("all hooks (trace)", p_tr, d_tr),
    ] {
        outln!(
            "{name:<20} {:>14.0} {:>10.0} {:>10.2} {:>14.0} {:>10.0}",
            per_s(b * prompt_len, p),
            ns_per(b * prompt_len, p),
            gflops(p),
            per_s(b * decode, d),
            ns_per(b * decode, d)
        )?;
    }
    outln!(
        "all hooks / probes off: prefill {:.2}x, decode {:.2}x time; trace {:.0} bytes per token",
        p_all.as_secs_f64() / p_off.as_secs_f64(),
        d_all.as_secs_f64() / d_off.as_secs_f64(),
        tr.trace_bytes as f64 / (b * positions) as f64
    )?;
    outln!(
        "RAM: workspace {} bytes, minimum {} bytes ({:.3}x)",
        cfg.workspace_len() * 4,
        cfg.minimum_len() * 4,
        cfg.workspace_len() as f64 / cfg.minimum_len() as f64
    )?;
    Ok(())
}
