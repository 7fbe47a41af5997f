//! Head ablation over a data set: how much the next-token loss rises when one head's
//! result (`hook_result`) is replaced by zeros or by its mean over the data set.
//!
//! - Data: prompts of token ids ([`parse_data`]: one prompt per line, ids separated by
//!   commas and/or whitespace; blank lines and lines starting with `#` are skipped), or
//!   TL's induction test, random tokens repeated twice ([`repeated_dataset`]).
//! - Loss: next-token cross entropy pooled over every predicted position of every
//!   prompt (sum over positions / number of positions, TL's `return_type="loss"` for
//!   prompts of equal length). For repeated tokens the loss on the second copy alone
//!   (the part only induction can predict) is reported too.
//! - Means: each head's `hook_result` averaged over every position of every prompt,
//!   summed in memory as the unablated runs produce them, in the same pass as the
//!   baseline loss ([`baseline_and_means`]); laid out `[n_layers][n_heads][d_model]`,
//!   as `tinylens run --means` reads them.
//! - The ablated runs are the core's own forward pass with its [`Ablation`] hook, as on
//!   a device.

use rayon::prelude::*;
use serde::Serialize;
use tinylens_core::intervene::{Ablation, AblationMode, HeadRef};
use tinylens_core::{HookPoint, Hooks, Model, NoHooks, Site};

use super::heads::repeated_random_tokens;
use crate::engine::{threads, Engine, Sampling};
use crate::numerics::loss;
use crate::{Error, Result};

/// A prompt and the positions whose predictions count for the "repeat" loss.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prompt {
    pub tokens: Vec<u32>,
    /// Predictions made at positions `repeat_from..len-1` (predicting tokens
    /// `repeat_from+1..len`) are the second-copy predictions of a repeated sequence.
    pub repeat_from: Option<usize>,
}

/// Parses a data file: one prompt per line (see the module documentation).
pub fn parse_data(text: &str, d_vocab: u32, n_ctx: u32) -> Result<Vec<Prompt>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let tokens = crate::cli::parse_tokens(line)
            .map_err(|e| Error::Argument(format!("data line {}: {e}", i + 1)))?;
        if let Some(t) = tokens.iter().find(|t| **t >= d_vocab) {
            return Err(Error::Argument(format!(
                "data line {}: token {t} is out of range (d_vocab = {d_vocab})",
                i + 1
            )));
        }
        if tokens.len() < 2 || tokens.len() > n_ctx as usize {
            return Err(Error::Argument(format!(
                "data line {}: {} tokens; a prompt needs 2 to n_ctx = {n_ctx}",
                i + 1,
                tokens.len()
            )));
        }
        out.push(Prompt {
            tokens,
            repeat_from: None,
        });
    }
    if out.is_empty() {
        return Err(Error::Argument("the data file holds no prompt".into()));
    }
    Ok(out)
}

/// Most sequences [`repeated_dataset`] makes (they are all held in memory).
pub const MAX_BATCH: usize = 1 << 20;

/// `batch` prompts of `n` random tokens repeated twice (seeds `seed..seed+batch`), each
/// after `bos` if given; tokens are drawn from `1..d_vocab` with a BOS, else `0..d_vocab`.
pub fn repeated_dataset(
    n: usize,
    batch: usize,
    seed: u64,
    bos: Option<u32>,
    d_vocab: u32,
    n_ctx: u32,
) -> Result<Vec<Prompt>> {
    let len = n.saturating_mul(2).saturating_add(bos.is_some() as usize);
    if n == 0 {
        return Err(Error::Argument("--repeated N needs N >= 1".into()));
    }
    if len > n_ctx as usize {
        return Err(Error::Argument(format!(
            "--repeated {n}: {len} tokens; the model's context is {n_ctx}"
        )));
    }
    let low = if bos.is_some() { 1 } else { 0 };
    if low >= d_vocab || batch == 0 {
        return Err(Error::Argument("no tokens to draw from".into()));
    }
    if batch > MAX_BATCH {
        return Err(Error::Argument(format!(
            "a batch of {batch} sequences is too large (at most {MAX_BATCH})"
        )));
    }
    Ok((0..batch as u64)
        .map(|i| Prompt {
            tokens: repeated_random_tokens(n, low, d_vocab, seed.wrapping_add(i), bos),
            // The first token of the second copy is not predictable; from the next one on.
            repeat_from: Some(len - n),
        })
        .collect())
}

/// Next-token losses of one run: (sum over all positions, count, sum over the repeat
/// part, count).
fn run_losses<H: Hooks>(
    engine: &Engine<'_>,
    prompt: &Prompt,
    hooks: &mut H,
) -> Result<(f64, usize, f64, usize)> {
    let (mut all, mut n_all, mut rep, mut n_rep) = (0.0, 0, 0.0, 0);
    let n = prompt.tokens.len();
    let v = engine.model().config().d_vocab_out as usize;
    let out = engine.run(&prompt.tokens, 0, &Sampling::default(), hooks)?;
    for (p, logits) in out.logits.chunks_exact(v).enumerate() {
        if p + 1 < n {
            let l = loss(logits, prompt.tokens[p + 1]);
            all += l;
            n_all += 1;
            if prompt.repeat_from.is_some_and(|r| p >= r) {
                rep += l;
                n_rep += 1;
            }
        }
    }
    Ok((all, n_all, rep, n_rep))
}

/// Pooled losses over a data set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Losses {
    /// Mean over every predicted position.
    pub all: f64,
    /// Mean over the second-copy predictions of repeated prompts (None without any).
    pub repeat: Option<f64>,
}

/// Losses of the model over `prompts` with `hooks` (e.g. an [`Ablation`]). Prompts run
/// in parallel on the current rayon pool, each with its own session and copy of
/// `hooks`; the sums are taken in prompt order, so the result does not depend on the
/// number of threads. `progress` is called once per prompt.
pub fn dataset_losses<H: Hooks + Clone + Send + Sync>(
    model: &Model<'_>,
    prompts: &[Prompt],
    hooks: &H,
    progress: &(dyn Fn() + Sync),
) -> Result<Losses> {
    Ok(dataset_run(model, prompts, &|| hooks.clone(), progress)?.0)
}

/// Runs every prompt on the engine with hooks `make()` (prompts in parallel, one
/// sequence per thread) and returns the pooled losses and each prompt's hooks after its
/// run, in prompt order.
fn dataset_run<H: Hooks + Send>(
    model: &Model<'_>,
    prompts: &[Prompt],
    make: &(dyn Fn() -> H + Sync),
    progress: &(dyn Fn() + Sync),
) -> Result<(Losses, Vec<H>)> {
    // One sequence per thread: the products of a sequence stay on its thread.
    let base = Engine::new(model);
    let mut kernels = *base.kernels();
    kernels.split_rows &= prompts.len() < threads();
    let engine = base.with_kernels(kernels);
    let per_prompt = prompts
        .par_iter()
        .map(|p| {
            let mut hooks = make();
            let r = run_losses(&engine, p, &mut hooks);
            progress();
            r.map(|r| (r, hooks))
        })
        .collect::<Result<Vec<_>>>()?;
    let (mut all, mut n_all, mut rep, mut n_rep) = (0.0, 0, 0.0, 0);
    let mut hooks = Vec::with_capacity(per_prompt.len());
    for ((a, na, r, nr), h) in per_prompt {
        all += a;
        n_all += na;
        rep += r;
        n_rep += nr;
        hooks.push(h);
    }
    let losses = Losses {
        all: all / n_all.max(1) as f64,
        repeat: (n_rep > 0).then(|| rep / n_rep as f64),
    };
    Ok((losses, hooks))
}

/// Sums every head's `hook_result` over the positions of one run, in f64
/// (`[n_layers][n_heads][d_model]`): the mean ablation's means, recorded in memory as
/// the forward pass produces them.
struct ResultSums {
    n_heads: usize,
    d_model: usize,
    sum: Vec<f64>,
}

impl Hooks for ResultSums {
    #[inline(always)]
    fn wants(&self, point: HookPoint) -> bool {
        point == HookPoint::Result
    }

    fn hook(&mut self, site: Site, value: &mut [f32]) {
        let (Some(head), HookPoint::Result) = (site.head, site.point) else {
            return;
        };
        let at = (site.layer as usize * self.n_heads + head as usize) * self.d_model;
        if let Some(sum) = self.sum.get_mut(at..at + self.d_model) {
            for (s, v) in sum.iter_mut().zip(value.iter()) {
                *s += f64::from(*v);
            }
        }
    }
}

/// The unablated losses over `prompts` and the mean `hook_result` of every head over
/// every position of every prompt, `[n_layers][n_heads][d_model]` (what
/// [`Mode::Mean`] writes in), from one pass over the data on the engine (prompts in
/// parallel on the current rayon pool; summed in prompt order, so the result does not
/// depend on the thread count). `progress` is called once per prompt.
pub fn baseline_and_means(
    model: &Model<'_>,
    prompts: &[Prompt],
    progress: &(dyn Fn() + Sync),
) -> Result<(Losses, Vec<f32>)> {
    let cfg = model.config();
    let (nh, dm) = (cfg.n_heads as usize, cfg.d_model as usize);
    let per_model = cfg.n_layers as usize * nh * dm;
    let make = || ResultSums {
        n_heads: nh,
        d_model: dm,
        sum: vec![0.0; per_model],
    };
    let (losses, parts) = dataset_run(model, prompts, &make, progress)?;
    let mut sum = vec![0.0f64; per_model];
    for part in parts {
        for (s, v) in sum.iter_mut().zip(part.sum) {
            *s += v;
        }
    }
    let count: usize = prompts.iter().map(|p| p.tokens.len()).sum();
    let means = sum
        .iter()
        .map(|s| (s / count.max(1) as f64) as f32)
        .collect();
    Ok((losses, means))
}

/// Mean `hook_result` of every head over every position of every prompt,
/// `[n_layers][n_heads][d_model]` (see [`baseline_and_means`]).
pub fn mean_results(
    model: &Model<'_>,
    prompts: &[Prompt],
    progress: &(dyn Fn() + Sync),
) -> Result<Vec<f32>> {
    Ok(baseline_and_means(model, prompts, progress)?.1)
}

/// How ablated heads are replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Zero,
    Mean,
}

/// One ablation's result.
#[derive(Clone, Debug, Serialize)]
pub struct HeadAblation {
    /// The heads ablated together, as `[layer, head]`.
    pub heads: Vec<[usize; 2]>,
    pub loss: Losses,
    /// `loss.all - baseline.all`.
    pub increase: f64,
    /// `loss.repeat - baseline.repeat`, for repeated data.
    pub repeat_increase: Option<f64>,
}

/// Ablating every head alone (and optional groups together) over a data set.
#[derive(Clone, Debug, Serialize)]
pub struct AblationReport {
    pub mode: Mode,
    pub n_prompts: usize,
    pub n_predictions: usize,
    pub baseline: Losses,
    /// `[layer][head]`: loss increase when that head alone is ablated (empty when the
    /// heads were not ablated one at a time).
    pub loss_increase: Vec<Vec<f64>>,
    /// `[layer][head]` on the second copies (repeated data only).
    pub repeat_loss_increase: Option<Vec<Vec<f64>>>,
    /// Every head alone, layer-major.
    pub heads: Vec<HeadAblation>,
    /// The requested groups, each ablated together.
    pub groups: Vec<HeadAblation>,
}

/// Runs the baseline, each head alone (when `each_head`) and each group. `means` is
/// needed for [`Mode::Mean`]. `progress` is called once per prompt run.
pub fn ablate_heads(
    model: &Model<'_>,
    prompts: &[Prompt],
    mode: Mode,
    means: Option<&[f32]>,
    groups: &[Vec<HeadRef>],
    each_head: bool,
    progress: &(dyn Fn() + Sync),
) -> Result<AblationReport> {
    ablate_heads_from(
        model, prompts, mode, means, None, groups, each_head, progress,
    )
}

/// [`ablate_heads`] with the unablated losses already measured (`baseline`, e.g. from
/// [`baseline_and_means`]); `None` runs the baseline first.
#[allow(clippy::too_many_arguments)]
pub fn ablate_heads_from(
    model: &Model<'_>,
    prompts: &[Prompt],
    mode: Mode,
    means: Option<&[f32]>,
    baseline: Option<Losses>,
    groups: &[Vec<HeadRef>],
    each_head: bool,
    progress: &(dyn Fn() + Sync),
) -> Result<AblationReport> {
    let cfg = *model.config();
    let (nl, nh) = (cfg.n_layers as usize, cfg.n_heads as usize);
    let ablation_mode = match (mode, means) {
        (Mode::Zero, _) => AblationMode::Zero,
        (Mode::Mean, Some(m)) => AblationMode::Mean(m),
        (Mode::Mean, None) => {
            return Err(Error::Argument(
                "mean ablation needs the mean results".into(),
            ))
        }
    };
    let baseline = match baseline {
        Some(b) => b,
        None => dataset_losses(model, prompts, &NoHooks, progress)?,
    };
    let one = |heads: &[HeadRef]| -> Result<HeadAblation> {
        let hook = Ablation::new(&cfg, heads, ablation_mode)
            .map_err(|e| Error::Argument(format!("ablation: {e}")))?;
        let loss = dataset_losses(model, prompts, &hook, progress)?;
        Ok(HeadAblation {
            heads: heads
                .iter()
                .map(|&(l, h)| [l as usize, h as usize])
                .collect(),
            increase: loss.all - baseline.all,
            repeat_increase: loss.repeat.zip(baseline.repeat).map(|(a, b)| a - b),
            loss,
        })
    };
    let mut heads = Vec::with_capacity(nl * nh);
    for l in 0..nl {
        for h in 0..nh {
            if each_head {
                heads.push(one(&[(l as u16, h as u16)])?);
            }
        }
    }
    let groups = groups.iter().map(|g| one(g)).collect::<Result<Vec<_>>>()?;
    let grid = |f: &dyn Fn(&HeadAblation) -> f64| -> Vec<Vec<f64>> {
        if heads.is_empty() {
            return Vec::new();
        }
        (0..nl)
            .map(|l| (0..nh).map(|h| f(&heads[l * nh + h])).collect())
            .collect()
    };
    let loss_increase = grid(&|a| a.increase);
    let repeat_loss_increase = baseline
        .repeat
        .map(|_| grid(&|a| a.repeat_increase.unwrap_or(f64::NAN)));
    Ok(AblationReport {
        mode,
        n_prompts: prompts.len(),
        n_predictions: prompts.iter().map(|p| p.tokens.len() - 1).sum(),
        baseline,
        loss_increase,
        repeat_loss_increase,
        heads,
        groups,
    })
}

/// Runs of the model that [`ablate_heads`] makes (for a progress bar's length).
pub fn runs_needed(n_prompts: usize, n_layers: usize, n_heads: usize, n_groups: usize) -> u64 {
    (n_prompts * (1 + n_layers * n_heads + n_groups)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_file_format() {
        let p = parse_data("# comment\n0, 5 7\n\n  1 2 3,4\n", 10, 8).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].tokens, vec![0, 5, 7]);
        assert_eq!(p[1].tokens, vec![1, 2, 3, 4]);
        assert!(parse_data("0 12\n", 10, 8)
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert!(parse_data("0 x\n", 10, 8).is_err());
        assert!(parse_data("3\n", 10, 8).is_err());
        assert!(parse_data("# nothing\n", 10, 8).is_err());
        assert!(parse_data("1 2 3 4 5 6 7 8 9\n", 10, 8).is_err());
    }

    #[test]
    fn repeated_dataset_marks_the_second_copy() {
        let d = repeated_dataset(5, 3, 7, Some(0), 20, 16).unwrap();
        assert_eq!(d.len(), 3);
        for p in &d {
            assert_eq!(p.tokens.len(), 11);
            assert_eq!(p.tokens[1..6], p.tokens[6..11]);
            // Positions 6..9 predict tokens 7..10: the second copy after its first token.
            assert_eq!(p.repeat_from, Some(6));
        }
        assert_ne!(d[0].tokens, d[1].tokens);
        assert!(repeated_dataset(8, 1, 0, Some(0), 20, 16).is_err());
    }
}
