//! Activations for the dynamic analyses, recorded the way a device records them: the
//! model runs in the core with a probe set, the recorder writes trace frames, and the
//! host decoder turns the trace into a TransformerLens-shaped cache. Everything the
//! analyses read (attention patterns, LN scales, head results) comes from that cache,
//! so what they see is exactly what a trace from the device would carry.

use nalgebra::DMatrix;
use tinylens_core::{Config, Model, Normalization};

use crate::export::Cache;
use crate::run::{run, RunOptions};
use crate::trace::{decode_stream, Run};
use crate::{Error, Result};

/// One recorded run: the tokens, the device's logits (when known) and the decoded cache.
#[derive(Debug, Clone)]
pub struct Recording {
    pub config: Config,
    pub tokens: Vec<u32>,
    /// One row of logits per position, as the model computed them (None for a trace
    /// that did not record `logits`).
    pub logits: Option<Vec<Vec<f32>>>,
    pub cache: Cache,
    /// Size of the trace the values came through, in bytes (0 when not known).
    pub trace_len: usize,
}

/// The probes every dynamic analysis here needs: patterns (head detection, frozen
/// attention), head results (attribution, mean ablation), the embeddings and every LN
/// scale (frozen LN). f32, so the analysis sees the values the model used.
pub fn analysis_probes(cfg: &Config) -> Vec<String> {
    let mut p = vec![
        "hook_embed".to_string(),
        "hook_pos_embed".to_string(),
        "blocks.*.attn.hook_pattern".to_string(),
        "blocks.*.attn.hook_result".to_string(),
    ];
    if cfg.normalization != Normalization::None {
        p.push("blocks.*.ln1.hook_scale".into());
        p.push("ln_final.hook_scale".into());
    }
    p
}

/// Runs `tokens` through the core with `probes`, writes the trace and decodes it.
pub fn record(model: &Model<'_>, tokens: &[u32], probes: &[String]) -> Result<Recording> {
    let out = run(
        model,
        &RunOptions {
            tokens: tokens.to_vec(),
            probes: probes.to_vec(),
            trace: true,
            ..Default::default()
        },
    )?;
    let (runs, _) = decode_stream(&out.trace);
    let run = runs
        .into_iter()
        .next()
        .ok_or_else(|| Error::Trace("the recorded trace holds no run".into()))?;
    Ok(Recording {
        config: run.config,
        tokens: out.tokens,
        logits: Some(out.logits),
        cache: run.cache(),
        trace_len: out.trace.len(),
    })
}

/// A recording from a decoded trace (a device's, or `tinylens run --trace`). Every
/// position's token must have arrived; the logits are taken from the trace when it
/// recorded them.
pub fn from_run(run: &Run) -> Result<Recording> {
    let tokens: Option<Vec<u32>> = run.token_list().into_iter().collect();
    let tokens = tokens.ok_or_else(|| {
        Error::Trace("the trace lost some token frames: positions unknown".into())
    })?;
    if tokens.is_empty() {
        return Err(Error::Trace("the trace has no positions".into()));
    }
    let cache = run.cache();
    let logits = cache
        .get("logits")
        .filter(|(_, d)| d.iter().all(|v| !v.is_nan()))
        .map(|(shape, d)| d.chunks(shape[1]).map(|r| r.to_vec()).collect());
    Ok(Recording {
        config: run.config,
        tokens,
        logits,
        cache,
        trace_len: 0,
    })
}

impl Recording {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// One hook's values, complete, or an error naming what is missing.
    pub fn hook(&self, name: &str) -> Result<&(Vec<usize>, Vec<f32>)> {
        let v = self.cache.get(name).ok_or_else(|| {
            Error::Trace(format!(
                "`{name}` was not recorded (record it with --probe)"
            ))
        })?;
        // Masked attention scores are -inf by design; NaN marks a value that was lost.
        if v.1.iter().any(|x| x.is_nan()) {
            return Err(Error::Trace(format!(
                "`{name}` has lost or unrecorded values"
            )));
        }
        Ok(v)
    }

    /// Attention patterns `[layer][head]`, each [q_pos, k_pos] (TL's `cache["pattern", l][h]`).
    pub fn patterns(&self) -> Result<Vec<Vec<DMatrix<f32>>>> {
        let n = self.len();
        (0..self.config.n_layers)
            .map(|l| {
                let (shape, data) = self.hook(&format!("blocks.{l}.attn.hook_pattern"))?;
                let nh = shape[0];
                Ok((0..nh)
                    .map(|h| DMatrix::from_fn(n, n, |q, k| data[(h * n + q) * n + k]))
                    .collect())
            })
            .collect()
    }

    /// A per-position vector hook ([pos, d]) as rows.
    pub fn rows(&self, name: &str) -> Result<Vec<Vec<f32>>> {
        let (shape, data) = self.hook(name)?;
        Ok(data.chunks(shape[1]).map(|r| r.to_vec()).collect())
    }

    /// `blocks.L.attn.hook_result` as `[pos][head][d_model]`.
    pub fn results(&self, layer: usize) -> Result<Vec<Vec<Vec<f32>>>> {
        let (shape, data) = self.hook(&format!("blocks.{layer}.attn.hook_result"))?;
        let (nh, dm) = (shape[1], shape[2]);
        Ok((0..shape[0])
            .map(|p| {
                (0..nh)
                    .map(|h| data[(p * nh + h) * dm..(p * nh + h + 1) * dm].to_vec())
                    .collect()
            })
            .collect())
    }

    /// LN scales `[n_layers + 1][pos]` (ln1 of every layer, then ln_final), or None for
    /// a model without LayerNorm.
    pub fn ln_scales(&self) -> Result<Option<Vec<Vec<f32>>>> {
        if self.config.normalization == Normalization::None {
            return Ok(None);
        }
        let mut out = Vec::new();
        for l in 0..self.config.n_layers {
            out.push(self.hook(&format!("blocks.{l}.ln1.hook_scale"))?.1.clone());
        }
        out.push(self.hook("ln_final.hook_scale")?.1.clone());
        Ok(Some(out))
    }

    /// The final LN scale per position (None without LayerNorm).
    pub fn final_scale(&self) -> Result<Option<Vec<f32>>> {
        if self.config.normalization == Normalization::None {
            return Ok(None);
        }
        Ok(Some(self.hook("ln_final.hook_scale")?.1.clone()))
    }

    /// The logits, or an error if this recording has none.
    pub fn logits(&self) -> Result<&[Vec<f32>]> {
        self.logits.as_deref().ok_or_else(|| {
            Error::Trace("the trace did not record `logits` (record it with --probe logits)".into())
        })
    }
}
