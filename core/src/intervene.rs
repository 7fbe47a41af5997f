//! Interventions: hooks that change values as the forward pass produces them. They
//! compose with each other and with a [`crate::trace::Recorder`] as tuples, e.g.
//! `(ablation, (frozen, recorder))`; the recorder then records the changed values.

use crate::config::Config;
use crate::hooks::{HookPoint, Hooks, Site};
use crate::Error;

/// The product of buffer dimensions, saturating: no slice has `usize::MAX` elements,
/// so a saturated size is refused as a length mismatch instead of overflowing (e.g. a
/// `len` of `usize::MAX`, or sizes beyond 32-bit `usize` on a microcontroller).
fn product(factors: &[usize]) -> usize {
    factors.iter().fold(1, |p, f| p.saturating_mul(*f))
}

/// A head, as `(layer, head)`.
pub type HeadRef = (u16, u16);

/// What replaces an ablated head's result (`hook_result`).
#[derive(Debug, Clone, Copy)]
pub enum AblationMode<'a> {
    /// Zero ablation: the head contributes nothing (`b_O` is still added).
    Zero,
    /// Mean ablation: the head's mean result over a reference data set,
    /// laid out `[n_layers][n_heads][d_model]`.
    Mean(&'a [f32]),
    /// Multiply the head's result by a factor.
    Scale(f32),
}

/// Ablates or scales the results of chosen heads.
#[derive(Debug, Clone, Copy)]
pub struct Ablation<'a> {
    heads: &'a [HeadRef],
    mode: AblationMode<'a>,
    n_heads: usize,
    d_model: usize,
}

impl<'a> Ablation<'a> {
    pub fn new(cfg: &Config, heads: &'a [HeadRef], mode: AblationMode<'a>) -> Result<Self, Error> {
        if heads
            .iter()
            .any(|&(l, h)| l as u32 >= cfg.n_layers || h as u32 >= cfg.n_heads)
        {
            return Err(Error::InvalidProbe);
        }
        let per_model = product(&[
            cfg.n_layers as usize,
            cfg.n_heads as usize,
            cfg.d_model as usize,
        ]);
        if let AblationMode::Mean(m) = mode {
            if m.len() != per_model {
                return Err(Error::InterventionShape {
                    expected: per_model,
                    found: m.len(),
                });
            }
        }
        Ok(Ablation {
            heads,
            mode,
            n_heads: cfg.n_heads as usize,
            d_model: cfg.d_model as usize,
        })
    }
}

impl Hooks for Ablation<'_> {
    #[inline(always)]
    fn wants(&self, point: HookPoint) -> bool {
        point == HookPoint::Result
    }

    fn hook(&mut self, site: Site, value: &mut [f32]) {
        let Some(head) = site.head else { return };
        if site.point != HookPoint::Result || !self.heads.contains(&(site.layer, head)) {
            return;
        }
        match self.mode {
            AblationMode::Zero => value.fill(0.0),
            AblationMode::Scale(f) => value.iter_mut().for_each(|v| *v *= f),
            AblationMode::Mean(means) => {
                // (Heads were checked against the config in `new`.)
                let at = (site.layer as usize * self.n_heads + head as usize) * self.d_model;
                let n = value.len().min(self.d_model);
                if let Some(m) = means.get(at..at + n) {
                    value[..n].copy_from_slice(m);
                }
            }
        }
    }
}

/// Imposes attention patterns (`hook_pattern`) from a buffer laid out as
/// TransformerLens caches them, per layer: `[n_layers][n_heads][len][len]` (query row,
/// key column; entries above the diagonal are ignored). Positions `>= len` run unfrozen.
#[derive(Debug, Clone, Copy)]
pub struct FreezePatterns<'a> {
    patterns: &'a [f32],
    n_heads: usize,
    len: usize,
}

impl<'a> FreezePatterns<'a> {
    pub fn new(cfg: &Config, patterns: &'a [f32], len: usize) -> Result<Self, Error> {
        let expected = product(&[cfg.n_layers as usize, cfg.n_heads as usize, len, len]);
        if patterns.len() != expected || len > cfg.n_ctx as usize {
            return Err(Error::InterventionShape {
                expected,
                found: patterns.len(),
            });
        }
        Ok(FreezePatterns {
            patterns,
            n_heads: cfg.n_heads as usize,
            len,
        })
    }
}

impl Hooks for FreezePatterns<'_> {
    #[inline(always)]
    fn wants(&self, point: HookPoint) -> bool {
        point == HookPoint::Pattern
    }

    fn hook(&mut self, site: Site, value: &mut [f32]) {
        let (Some(h), q) = (site.head, site.pos as usize) else {
            return;
        };
        if site.point != HookPoint::Pattern || q >= self.len || h as usize >= self.n_heads {
            return;
        }
        let at = ((site.layer as usize * self.n_heads + h as usize) * self.len + q) * self.len;
        // A query row has q + 1 keys; a site of a layer the model lacks matches nothing.
        let n = value.len().min(q + 1);
        if let Some(p) = self.patterns.get(at..at + n) {
            value[..n].copy_from_slice(p);
        }
    }
}

/// Imposes LayerNorm scales (`ln1.hook_scale` of every layer and `ln_final.hook_scale`),
/// laid out `[n_layers + 1][len]` (the last row is `ln_final`). With patterns and scales
/// frozen the logits are linear in the embeddings: the setting of the path expansion
/// and of direct logit attribution.
#[derive(Debug, Clone, Copy)]
pub struct FreezeScales<'a> {
    scales: &'a [f32],
    n_layers: usize,
    len: usize,
}

impl<'a> FreezeScales<'a> {
    pub fn new(cfg: &Config, scales: &'a [f32], len: usize) -> Result<Self, Error> {
        let expected = product(&[cfg.n_layers as usize + 1, len]);
        if scales.len() != expected || len > cfg.n_ctx as usize {
            return Err(Error::InterventionShape {
                expected,
                found: scales.len(),
            });
        }
        Ok(FreezeScales {
            scales,
            n_layers: cfg.n_layers as usize,
            len,
        })
    }
}

impl Hooks for FreezeScales<'_> {
    #[inline(always)]
    fn wants(&self, point: HookPoint) -> bool {
        matches!(point, HookPoint::Ln1Scale | HookPoint::LnFinalScale)
    }

    fn hook(&mut self, site: Site, value: &mut [f32]) {
        let row = match site.point {
            HookPoint::Ln1Scale if (site.layer as usize) < self.n_layers => site.layer as usize,
            HookPoint::LnFinalScale => self.n_layers,
            _ => return,
        };
        if site.pos as usize >= self.len {
            return;
        }
        if let (Some(v), Some(s)) = (
            value.first_mut(),
            self.scales.get(row * self.len + site.pos as usize),
        ) {
            *v = *s;
        }
    }
}

/// Activation patching: replaces one hook's value, at one layer (and optionally one
/// head), with values from another run. `values` is laid out as that hook's
/// TransformerLens cache entry for positions `0..len`: `[pos, head, d]` for per-head
/// vectors, `[head, q, k]` (`len x len` per head) for scores and patterns, `[pos, d]`
/// otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Patch<'a> {
    point: HookPoint,
    layer: u16,
    head: Option<u16>,
    values: &'a [f32],
    len: usize,
    width: usize,
    n_heads: usize,
}

impl<'a> Patch<'a> {
    pub fn new(
        cfg: &Config,
        point: HookPoint,
        layer: u16,
        head: Option<u16>,
        values: &'a [f32],
        len: usize,
    ) -> Result<Self, Error> {
        if (point.per_layer() && layer as u32 >= cfg.n_layers)
            || head.is_some_and(|h| !point.per_head() || h as u32 >= cfg.n_heads)
            || len > cfg.n_ctx as usize
        {
            return Err(Error::InvalidProbe);
        }
        let n_heads = cfg.n_heads as usize;
        let width = match point {
            HookPoint::Q | HookPoint::K | HookPoint::V | HookPoint::Z => cfg.d_head as usize,
            HookPoint::AttnScores | HookPoint::Pattern => len,
            HookPoint::Ln1Scale | HookPoint::LnFinalScale => 1,
            HookPoint::Logits => cfg.d_vocab_out as usize,
            _ => cfg.d_model as usize,
        };
        let heads = if point.per_head() { n_heads } else { 1 };
        let expected = product(&[len, heads, width]);
        if values.len() != expected {
            return Err(Error::InterventionShape {
                expected,
                found: values.len(),
            });
        }
        Ok(Patch {
            point,
            layer: if point.per_layer() { layer } else { 0 },
            head,
            values,
            len,
            width,
            n_heads,
        })
    }
}

impl Hooks for Patch<'_> {
    #[inline(always)]
    fn wants(&self, point: HookPoint) -> bool {
        point == self.point
    }

    fn hook(&mut self, site: Site, value: &mut [f32]) {
        let pos = site.pos as usize;
        if site.point != self.point
            || (self.point.per_layer() && site.layer != self.layer)
            || pos >= self.len
        {
            return;
        }
        if self.head.is_some() && site.head != self.head {
            return;
        }
        let h = site.head.unwrap_or(0) as usize;
        if h >= self.n_heads {
            return;
        }
        let at = if self.point.is_attention_row() {
            (h * self.len + pos) * self.len
        } else if self.point.per_head() {
            (pos * self.n_heads + h) * self.width
        } else {
            pos * self.width
        };
        let n = value.len().min(self.width);
        if let Some(v) = self.values.get(at..at + n) {
            value[..n].copy_from_slice(v);
        }
    }
}
