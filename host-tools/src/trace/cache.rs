//! A run as a TransformerLens-shaped cache, produced a row at a time for export.

use super::{Key, Missing, Run};
use crate::export::Arrays;
use std::collections::BTreeSet;
use std::io;
use tinylens_core::{Config, HookPoint};

impl Run {
    /// The cache as arrays produced a row at a time (what `decode` exports); with the
    /// token list as `tokens` if `with_tokens`.
    pub fn cache_view(&self, with_tokens: bool) -> CacheView<'_> {
        let mut names: BTreeSet<(HookPoint, u16)> = self.expected_arrays();
        names.extend(self.records.keys().map(|k| (k.0, k.1)));
        let mut arrays: Vec<(String, ArrayKind)> = names
            .into_iter()
            .map(|(p, l)| (p.name(l).to_string(), ArrayKind::Hook(p, l)))
            .collect();
        if with_tokens {
            arrays.push(("tokens".into(), ArrayKind::Tokens));
        }
        arrays.sort_by(|a, b| a.0.cmp(&b.0));
        CacheView {
            run: self,
            positions: self.positions(),
            arrays,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum ArrayKind {
    Hook(HookPoint, u16),
    Tokens,
}

/// A run's cache, produced a row at a time ([`Arrays`]): exporting it needs memory for
/// one row, whatever the size of the cache.
pub struct CacheView<'r> {
    run: &'r Run,
    positions: usize,
    arrays: Vec<(String, ArrayKind)>,
}

impl CacheView<'_> {
    fn shape(&self, kind: ArrayKind) -> Vec<usize> {
        let c = &self.run.config;
        let p = self.positions;
        let (nh, dh, dm) = (c.n_heads as usize, c.d_head as usize, c.d_model as usize);
        match kind {
            ArrayKind::Tokens => vec![p],
            ArrayKind::Hook(point, _) => match point {
                HookPoint::Q | HookPoint::K | HookPoint::V | HookPoint::Z => vec![p, nh, dh],
                HookPoint::Result => vec![p, nh, dm],
                HookPoint::AttnScores | HookPoint::Pattern => vec![nh, p, p],
                HookPoint::Ln1Scale | HookPoint::LnFinalScale => vec![p, 1],
                HookPoint::Logits => vec![p, c.d_vocab_out as usize],
                _ => vec![p, dm],
            },
        }
    }
}

/// Values per record of `point` at position `pos` for `cfg` (what a recorder writes).
pub fn record_width(cfg: &Config, point: HookPoint, pos: u16) -> usize {
    match point {
        HookPoint::Q | HookPoint::K | HookPoint::V | HookPoint::Z => cfg.d_head as usize,
        HookPoint::AttnScores | HookPoint::Pattern => pos as usize + 1,
        HookPoint::Ln1Scale | HookPoint::LnFinalScale => 1,
        HookPoint::Logits => cfg.d_vocab_out as usize,
        _ => cfg.d_model as usize,
    }
}

impl Arrays for CacheView<'_> {
    fn is_integer(&self, index: usize) -> bool {
        matches!(self.arrays.get(index), Some((_, ArrayKind::Tokens)))
    }

    fn list(&self) -> Vec<(String, Vec<usize>)> {
        self.arrays
            .iter()
            .map(|(n, k)| (n.clone(), self.shape(*k)))
            .collect()
    }

    fn emit(&self, index: usize, sink: &mut dyn FnMut(&[f32]) -> io::Result<()>) -> io::Result<()> {
        let Some(&(_, kind)) = self.arrays.get(index) else {
            return Ok(());
        };
        let p = self.positions;
        let (point, layer) = match kind {
            ArrayKind::Tokens => {
                let t: Vec<f32> = (0..p)
                    .map(|i| {
                        self.run
                            .tokens
                            .get(&(i as u16))
                            .map_or(f32::NAN, |t| *t as f32)
                    })
                    .collect();
                return sink(&t);
            }
            ArrayKind::Hook(point, layer) => (point, layer),
        };
        let shape = self.shape(kind);
        let width = *shape.last().unwrap_or(&0);
        let nh = self.run.config.n_heads as usize;
        let mut row = vec![0f32; width];
        let rows: usize = shape[..shape.len() - 1].iter().product();
        for r in 0..rows {
            // Which record fills row r, and how many values it has.
            let (head, pos) = if point.is_attention_row() {
                (Some((r / p) as u16), r % p)
            } else if point.per_head() {
                (Some((r % nh) as u16), r / nh)
            } else {
                (None, r)
            };
            row.fill(f32::NAN);
            if point.is_attention_row() {
                let masked = if point == HookPoint::Pattern {
                    0.0
                } else {
                    f32::NEG_INFINITY
                };
                row[(pos + 1).min(width)..].fill(masked);
            }
            if let Some(v) = self.run.records.get(&(point, layer, head, pos as u16)) {
                let n = if point.is_attention_row() {
                    pos + 1
                } else {
                    width
                };
                if v.len() == n && n <= width {
                    row[..n].copy_from_slice(v);
                }
            }
            sink(&row)?;
        }
        Ok(())
    }
}

/// `blocks.1.attn.hook_z[2]@5`.
pub fn describe(k: &Key) -> String {
    Missing {
        point: k.0,
        layer: k.1,
        head: k.2,
        positions: (k.3, u32::from(k.3) + 1),
    }
    .to_string()
}
