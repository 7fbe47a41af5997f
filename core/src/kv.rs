//! The KV cache's storage: f32 (exact), f16 or int8 (less RAM).
//!
//! The KV cache is most of a session's RAM: `2 · n_layers · n_heads · n_ctx · d_head`
//! values, 95% of the demo model's working memory in f32. Storing it as f16 halves
//! that; int8 with one f32 scale per head vector (a key or value of one head at one
//! position, as MCU LLM ports do) quarters it, plus the scales.
//!
//! A quantized cache is a numerical choice, not an approximation of the runtime: every
//! conversion is exact integer or IEEE arithmetic (f16 rounds to nearest even, int8 is
//! the activation quantizer of [`kernels::quantize_input`]), so a host and a device that
//! make the same choice still agree bit for bit. What TransformerLens would compute is
//! the f32 cache; the parity tests report what the cheaper kinds cost against it.
//!
//! Hooks see keys and values *before* they are stored (`hook_k`, `hook_v` are the f32
//! values the projection produced, after any change a hook makes); attention then reads
//! them back from the cache, its own position's included, so the pattern is the one a
//! device with this cache computes.

use crate::kernels;

/// How a session stores the KV cache ([`crate::SessionOptions::kv`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum KvStorage {
    /// 32-bit floats: exactly TransformerLens's values.
    #[default]
    F32,
    /// IEEE half precision (round to nearest even): half the RAM.
    F16,
    /// int8 with one f32 scale per head vector (`max|x| / 127`): a quarter of the RAM,
    /// plus `n_layers · n_heads · n_ctx` scales.
    Int8,
}

impl KvStorage {
    /// Every kind, in order of decreasing RAM.
    pub const ALL: [KvStorage; 3] = [KvStorage::F32, KvStorage::F16, KvStorage::Int8];

    /// `f32`, `f16` or `int8`.
    pub const fn name(self) -> &'static str {
        match self {
            KvStorage::F32 => "f32",
            KvStorage::F16 => "f16",
            KvStorage::Int8 => "int8",
        }
    }

    /// The kind named `f32`, `f16` or `int8`.
    pub fn from_name(name: &str) -> Option<KvStorage> {
        KvStorage::ALL.into_iter().find(|k| k.name() == name)
    }

    /// f32 words one cache (K or V) of `values` values in vectors of `d_head` takes.
    pub const fn cache_words(self, values: u64, d_head: u64) -> u64 {
        match self {
            KvStorage::F32 => values,
            KvStorage::F16 => values.div_ceil(2),
            KvStorage::Int8 => {
                let vectors = match values.checked_div(d_head) {
                    Some(v) => v,
                    None => 0,
                };
                values.div_ceil(4).saturating_add(vectors)
            }
        }
    }
}

/// One cache (K or V), `rows` head vectors of `d_head` values, in its storage kind.
pub(crate) enum KvCache<'w> {
    F32(&'w mut [f32]),
    F16(&'w mut [u16]),
    Int8 {
        q: &'w mut [i8],
        scales: &'w mut [f32],
    },
}

impl<'w> KvCache<'w> {
    /// Lays a cache of `values` values (vectors of `d_head`) out in `words`, which holds
    /// exactly [`KvStorage::cache_words`] f32 words.
    pub(crate) fn new(kind: KvStorage, words: &'w mut [f32], values: usize, d_head: usize) -> Self {
        match kind {
            KvStorage::F32 => KvCache::F32(words),
            KvStorage::F16 => {
                let halves: &mut [u16] = bytemuck::cast_slice_mut(words);
                let n = values.min(halves.len());
                KvCache::F16(&mut halves[..n])
            }
            KvStorage::Int8 => {
                let (q, scales) = words.split_at_mut(values.div_ceil(4).min(words.len()));
                let q: &mut [i8] = bytemuck::cast_slice_mut(q);
                let n = values.min(q.len());
                let vectors = values.checked_div(d_head).unwrap_or(0);
                let scales_len = vectors.min(scales.len());
                KvCache::Int8 {
                    q: &mut q[..n],
                    scales: &mut scales[..scales_len],
                }
            }
        }
    }

    /// The f32 cache itself (hooks then change stored values in place), or `None` for
    /// a quantized one.
    pub(crate) fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        match self {
            KvCache::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The f32 cache, or `None` for a quantized one.
    pub(crate) fn as_f32(&self) -> Option<&[f32]> {
        match self {
            KvCache::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Stores head vector `row` (values `row * x.len()..`) from `x`.
    pub(crate) fn store(&mut self, row: usize, x: &[f32]) {
        let d = x.len();
        let at = row * d;
        match self {
            KvCache::F32(v) => {
                if let Some(out) = v.get_mut(at..at + d) {
                    out.copy_from_slice(x);
                }
            }
            KvCache::F16(v) => {
                if let Some(out) = v.get_mut(at..at + d) {
                    for (o, &x) in out.iter_mut().zip(x) {
                        *o = half::f16::from_f32(x).to_bits();
                    }
                }
            }
            KvCache::Int8 { q, scales } => {
                if let (Some(out), Some(s)) = (q.get_mut(at..at + d), scales.get_mut(row)) {
                    *s = kernels::quantize_input(x, out);
                }
            }
        }
    }

    /// Head vector `row` as f32 into `out` (`out.len()` values).
    pub(crate) fn load(&self, row: usize, out: &mut [f32]) {
        let d = out.len();
        let at = row * d;
        match self {
            KvCache::F32(v) => {
                if let Some(x) = v.get(at..at + d) {
                    out.copy_from_slice(x);
                }
            }
            KvCache::F16(v) => {
                if let Some(x) = v.get(at..at + d) {
                    for (o, &b) in out.iter_mut().zip(x) {
                        *o = half::f16::from_bits(b).to_f32();
                    }
                }
            }
            KvCache::Int8 { q, scales } => {
                if let (Some(x), Some(&s)) = (q.get(at..at + d), scales.get(row)) {
                    for (o, &v) in out.iter_mut().zip(x) {
                        *o = v as f32 * s;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_are_exact_where_the_kind_can_hold_the_value() {
        let x = [1.0f32, -0.5, 0.25, 3.0, -2.0, 0.0, 0.125, 1.5];
        for kind in KvStorage::ALL {
            let values = 3 * x.len();
            let mut words = [0.0f32; 64];
            let n = kind.cache_words(values as u64, x.len() as u64) as usize;
            let mut c = KvCache::new(kind, &mut words[..n], values, x.len());
            c.store(2, &x);
            let mut out = [9.0f32; 8];
            c.load(2, &mut out);
            match kind {
                KvStorage::Int8 => {
                    // One scale, 3/127: every value within half a step.
                    for (o, v) in out.iter().zip(x) {
                        assert!((o - v).abs() <= 1.5 / 127.0, "{o} vs {v}");
                    }
                }
                _ => assert_eq!(out, x, "{kind:?}"),
            }
            // Other rows untouched (zero).
            c.load(0, &mut out);
            assert!(out.iter().all(|v| *v == 0.0));
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(KvStorage::F32.cache_words(1024, 16), 1024);
        assert_eq!(KvStorage::F16.cache_words(1024, 16), 512);
        assert_eq!(KvStorage::Int8.cache_words(1024, 16), 256 + 64);
        assert_eq!(KvStorage::from_name("int8"), Some(KvStorage::Int8));
        assert_eq!(KvStorage::from_name("bf16"), None);
    }
}
