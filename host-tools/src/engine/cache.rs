//! `run_with_cache` into memory: a [`Hooks`] implementation that copies the values a
//! probe set selects straight into TransformerLens-shaped arrays, a block of positions
//! at a time, with no trace in between. Shapes and fill values are those of a decoded
//! trace ([`crate::trace::Run::cache`]): `[pos, d]`, `[pos, head, d]`, `[head, q, k]`
//! with masked scores `-inf` and masked pattern entries `0`, NaN where nothing was
//! selected; [`stack`] puts the batch in front, as TransformerLens does.

use std::collections::BTreeMap;

use tinylens_core::probe::ProbeSet;
use tinylens_core::{Config, HookPoint, Hooks, Normalization, Site};

use crate::export::Cache;
use crate::{Error, Result};

/// One hook's array for one sequence.
struct Entry {
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// Records one sequence of `len` positions into memory (always f32, whatever
/// precision the probes name).
pub struct CacheHooks<'p, const N: usize> {
    probes: &'p ProbeSet<N>,
    mask: u32,
    cfg: Config,
    len: usize,
    entries: BTreeMap<(HookPoint, u16), Entry>,
}

impl<'p, const N: usize> CacheHooks<'p, N> {
    /// Arrays for every hook the probes name, for `len` positions (the run must process
    /// all `len`: an array a probe takes whole is not NaN-filled first).
    pub fn new(cfg: &Config, probes: &'p ProbeSet<N>, len: usize) -> Self {
        let nh = cfg.n_heads as usize;
        let mut entries = BTreeMap::new();
        for p in probes.probes() {
            let point = p.point;
            if point.needs_ln() && cfg.normalization == Normalization::None {
                continue;
            }
            let layers: Vec<u16> = match (point.per_layer(), p.layer) {
                (false, _) => vec![0],
                (true, None) => (0..cfg.n_layers as u16).collect(),
                (true, Some(l)) if u32::from(l) < cfg.n_layers => vec![l],
                (true, Some(_)) => vec![],
            };
            for layer in layers {
                entries.entry((point, layer)).or_insert_with(|| {
                    let shape = shape(cfg, point, len);
                    // An array some probe takes whole (every head and position) is
                    // written everywhere but the masked keys: no NaN fill first.
                    let whole = probes.probes().iter().any(|q| {
                        q.point == point
                            && q.layer.is_none_or(|l| l == layer || !point.per_layer())
                            && q.head.is_none()
                            && q.pos_start == 0
                            && q.pos_end.is_none()
                    });
                    let fill = if whole { 0.0 } else { f32::NAN };
                    let mut data = vec![fill; shape.iter().product()];
                    if point.is_attention_row() {
                        let masked = if point == HookPoint::Pattern {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        };
                        for row in 0..nh * len {
                            let q = row % len;
                            data[row * len + q + 1..(row + 1) * len].fill(masked);
                        }
                    }
                    Entry { shape, data }
                });
            }
        }
        CacheHooks {
            probes,
            mask: probes.point_mask(),
            cfg: *cfg,
            len,
            entries,
        }
    }

    /// The arrays, named as TransformerLens names them (no batch dimension).
    pub fn into_cache(self) -> Cache {
        self.entries
            .into_iter()
            .map(|((point, layer), e)| (point.name(layer).to_string(), (e.shape, e.data)))
            .collect()
    }
}

/// The shape of `point`'s array for `len` positions.
pub fn shape(cfg: &Config, point: HookPoint, len: usize) -> Vec<usize> {
    let (nh, dh, dm) = (
        cfg.n_heads as usize,
        cfg.d_head as usize,
        cfg.d_model as usize,
    );
    match point {
        HookPoint::Q | HookPoint::K | HookPoint::V | HookPoint::Z => vec![len, nh, dh],
        HookPoint::Result => vec![len, nh, dm],
        HookPoint::AttnScores | HookPoint::Pattern => vec![nh, len, len],
        HookPoint::Ln1Scale | HookPoint::LnFinalScale => vec![len, 1],
        HookPoint::Logits => vec![len, cfg.d_vocab_out as usize],
        _ => vec![len, dm],
    }
}

impl<const N: usize> Hooks for CacheHooks<'_, N> {
    #[inline(always)]
    fn wants(&self, point: HookPoint) -> bool {
        self.mask & (1 << point as u32) != 0
    }

    fn hook(&mut self, site: Site, value: &mut [f32]) {
        self.hook_rows(site, 1, value.len(), value.len(), value);
    }

    fn hook_rows(&mut self, site: Site, n: usize, width: usize, stride: usize, values: &mut [f32]) {
        let layer = if site.point.per_layer() {
            site.layer
        } else {
            0
        };
        // The width of a row in the array: a query row of scores has `pos + 1` keys.
        let full = match site.point {
            p if p.is_attention_row() => self.len,
            HookPoint::Ln1Scale | HookPoint::LnFinalScale => 1,
            _ => width,
        };
        // When one probe takes every position of this site (every recording of a whole
        // hook, e.g. all hooks), no row needs its own look-up.
        let every_row = self.probes.probes().iter().any(|p| {
            p.pos_start == 0 && p.pos_end.is_none() && p.matches(&Site { pos: 0, ..site })
        });
        let (probes, len, nh) = (self.probes, self.len, self.cfg.n_heads as usize);
        let Some(e) = self.entries.get_mut(&(site.point, layer)) else {
            return;
        };
        for i in 0..n {
            let row_site = Site {
                pos: site.pos.wrapping_add(i as u16),
                ..site
            };
            if !every_row && probes.select(&row_site).is_none() {
                continue;
            }
            let Some((at, w)) = place(&row_site, full, len, nh) else {
                continue;
            };
            let Some(src) = values.get(i * stride..i * stride + width.min(w)) else {
                return;
            };
            if let Some(dst) = e.data.get_mut(at..at + src.len()) {
                dst.copy_from_slice(src);
            }
        }
    }
}

/// Where the row of `site` goes in its array of `len` positions, and how many values
/// it has (rows of `width` values; a query row of scores has `pos + 1`).
fn place(site: &Site, width: usize, len: usize, nh: usize) -> Option<(usize, usize)> {
    let pos = site.pos as usize;
    if pos >= len {
        return None;
    }
    let h = site.head.unwrap_or(0) as usize;
    Some(if site.point.is_attention_row() {
        ((h * len + pos) * len, (pos + 1).min(width))
    } else if site.point.per_head() {
        ((pos * nh + h) * width, width)
    } else {
        (pos * width, width)
    })
}

/// Per-sequence caches of equal shapes stacked into one with the batch in front
/// (`[batch, ...]`, TransformerLens's layout).
pub fn stack(caches: Vec<Cache>) -> Result<Cache> {
    let batch = caches.len();
    let mut out: Cache = BTreeMap::new();
    for (i, cache) in caches.into_iter().enumerate() {
        for (name, (shape, data)) in cache {
            let e = out.entry(name.clone()).or_insert_with(|| {
                let mut s = vec![batch];
                s.extend_from_slice(&shape);
                (s, Vec::with_capacity(batch * data.len()))
            });
            if e.0[1..] != shape[..] || e.1.len() != i * data.len() {
                return Err(Error::Argument(format!(
                    "run_with_cache: `{name}` differs in shape between sequences (sequences of \
                     different lengths cannot be stacked)"
                )));
            }
            e.1.extend_from_slice(&data);
        }
    }
    Ok(out)
}
