//! Probe sets: which hook values to record (hook point, layer, head, positions) and at
//! what precision.
//!
//! On the host, probes are written as TransformerLens names with wildcards:
//!
//! ```
//! use tinylens_core::probe::{ProbeSet, Precision};
//! let mut probes: ProbeSet = ProbeSet::new();
//! probes.add_pattern("blocks.*.attn.hook_pattern").unwrap();      // every layer, every head
//! probes.add_pattern("blocks.1.attn.hook_result[2]:f16").unwrap(); // head 2 of layer 1, as f16
//! probes.add_pattern("hook_embed@0..4").unwrap();                 // positions 0..4
//! assert_eq!(probes.len(), 3);
//! assert!(probes.add_pattern("blocks.0.attn.hook_nonsense").is_err());
//! ```
//!
//! Firmware can build the same set in code, or decode it from its compact postcard
//! form ([`ProbeSet::from_bytes`]), which is also how it travels in a trace header.

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::config::{Config, Normalization};
use crate::hooks::{HookPoint, Site};
use crate::Error;

/// Default capacity of a [`ProbeSet`].
pub const MAX_PROBES: usize = 32;

/// How a recorded value is stored in the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Precision {
    /// 4 bytes per value, exact.
    F32,
    /// 2 bytes per value, IEEE half.
    F16,
    /// 1 byte per value with one f32 scale per record (`max|x| / 127`).
    Int8,
}

impl Precision {
    pub const fn bytes_per_value(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
            Precision::Int8 => 1,
        }
    }
}

/// One selection of hook values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Probe {
    pub point: HookPoint,
    /// `None`: every layer (ignored for points outside the blocks).
    pub layer: Option<u16>,
    /// `None`: every head (ignored for points without heads).
    pub head: Option<u16>,
    /// First query position recorded.
    pub pos_start: u16,
    /// One past the last position recorded; `None`: to the end of the context.
    pub pos_end: Option<u16>,
    pub precision: Precision,
}

impl Probe {
    /// A probe for every layer, head and position of `point`, in f32.
    pub const fn all(point: HookPoint) -> Self {
        Probe {
            point,
            layer: None,
            head: None,
            pos_start: 0,
            pos_end: None,
            precision: Precision::F32,
        }
    }

    /// Whether the probe selects the value at `site`.
    #[inline]
    pub fn matches(&self, site: &Site) -> bool {
        self.point == site.point
            && (!site.point.per_layer() || self.layer.is_none_or(|l| l == site.layer))
            && (site.head.is_none() || self.head.is_none_or(|h| Some(h) == site.head))
            && site.pos >= self.pos_start
            && self.pos_end.is_none_or(|e| site.pos < e)
    }

    /// Checks the probe against a model's shape.
    pub fn validate(&self, cfg: &Config) -> Result<(), Error> {
        let layer_ok = self.layer.is_none_or(|l| (l as u32) < cfg.n_layers);
        let head_ok = self
            .head
            .is_none_or(|h| self.point.per_head() && (h as u32) < cfg.n_heads);
        let pos_ok =
            (self.pos_start as u32) < cfg.n_ctx && self.pos_end.is_none_or(|e| e > self.pos_start);
        let ln_ok = !self.point.needs_ln() || cfg.normalization != Normalization::None;
        if layer_ok && head_ok && pos_ok && ln_ok {
            Ok(())
        } else {
            Err(Error::InvalidProbe)
        }
    }
}

/// A fixed-capacity set of probes (no allocation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSet<const N: usize = MAX_PROBES> {
    probes: Vec<Probe, N>,
}

impl<const N: usize> Default for ProbeSet<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> ProbeSet<N> {
    pub const fn new() -> Self {
        ProbeSet { probes: Vec::new() }
    }

    /// Every hook point, every layer, head and position, at `precision`.
    pub fn everything(precision: Precision) -> Self {
        let mut s = Self::new();
        for p in HookPoint::ALL {
            let _ = s.probes.push(Probe {
                precision,
                ..Probe::all(p)
            });
        }
        s
    }

    pub fn push(&mut self, probe: Probe) -> Result<(), Error> {
        self.probes
            .push(probe)
            .map_err(|_| Error::TooManyProbes { capacity: N })
    }

    pub fn probes(&self) -> &[Probe] {
        &self.probes
    }

    pub fn len(&self) -> usize {
        self.probes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }

    /// The precision to record `site` at, or `None` when no probe selects it. The
    /// first matching probe decides, so a site is recorded at most once.
    #[inline]
    pub fn select(&self, site: &Site) -> Option<Precision> {
        self.probes
            .iter()
            .find(|p| p.matches(site))
            .map(|p| p.precision)
    }

    /// Bit `p` set when some probe names hook point `p` (a cheap pre-filter).
    pub fn point_mask(&self) -> u32 {
        self.probes.iter().fold(0, |m, p| m | 1 << p.point as u32)
    }

    /// Checks every probe against a model's shape. Probes of LayerNorm hooks in a
    /// model without LayerNorm are refused rather than silently recording nothing.
    pub fn validate(&self, cfg: &Config) -> Result<(), Error> {
        self.probes.iter().try_for_each(|p| p.validate(cfg))
    }

    /// Adds the probes a TransformerLens-style pattern names:
    /// `NAME[HEAD]@POS..END:PRECISION`, each suffix optional. `NAME` is a hook name
    /// (`hook_embed`, `blocks.1.attn.hook_q`, `ln_final.hook_scale`, `logits`) where `*`
    /// matches any run of characters (`blocks.*.attn.hook_pattern`, `blocks.0.*`, `*`);
    /// `[HEAD]` picks one head; `@P` one position and `@A..B` positions `A..B`;
    /// `:f32`, `:f16`, `:int8` the precision (default f32).
    pub fn add_pattern(&mut self, pattern: &str) -> Result<(), Error> {
        let bad = Error::InvalidProbe;
        let (rest, precision) = match pattern.rsplit_once(':') {
            Some((r, "f32")) => (r, Precision::F32),
            Some((r, "f16")) => (r, Precision::F16),
            Some((r, "int8")) => (r, Precision::Int8),
            Some(_) => return Err(bad),
            None => (pattern, Precision::F32),
        };
        let (rest, pos_start, pos_end) = match rest.split_once('@') {
            Some((r, range)) => match range.split_once("..") {
                Some((a, b)) => (r, parse_u16(a)?, Some(parse_u16(b)?)),
                None => {
                    let p = parse_u16(range)?;
                    (r, p, Some(p.checked_add(1).ok_or(bad)?))
                }
            },
            None => (rest, 0, None),
        };
        if pos_end.is_some_and(|e| e <= pos_start) {
            return Err(bad);
        }
        let (name, head) = match rest.strip_suffix(']').and_then(|r| r.split_once('[')) {
            Some((n, h)) => (n, Some(parse_u16(h)?)),
            None => (rest, None),
        };
        if name.is_empty() || name.contains(['[', ']', '@']) {
            return Err(bad);
        }
        // Layer part: `blocks.<L or *>.` followed by the short name glob.
        let (layer_sel, short_glob, block_form) = match name.strip_prefix("blocks.") {
            Some(r) => {
                let (l, s) = r.split_once('.').ok_or(bad)?;
                let layer = if l == "*" { None } else { Some(parse_u16(l)?) };
                (layer, s, true)
            }
            None => (None, name, false),
        };
        let mut added = 0;
        for point in HookPoint::ALL {
            let hit = if point.per_layer() {
                if block_form {
                    glob(short_glob, point.short_name())
                } else {
                    // A bare glob such as `*` or `*hook_pattern` also reaches into the blocks.
                    name.starts_with('*') && glob(name, point.short_name())
                }
            } else {
                !block_form && glob(name, point.short_name())
            };
            if !hit || (head.is_some() && !point.per_head()) {
                continue;
            }
            self.push(Probe {
                point,
                layer: layer_sel,
                head,
                pos_start,
                pos_end,
                precision,
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(bad);
        }
        Ok(())
    }

    /// Decodes the compact postcard form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        postcard::from_bytes(bytes).map_err(|_| Error::InvalidProbe)
    }

    /// Encodes the compact postcard form into `buf`, returning the used part.
    pub fn to_bytes<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], Error> {
        postcard::to_slice(self, buf).map_err(|_| Error::FrameTooLarge {
            needed: self.len() * 12 + 1,
            capacity: 0,
        })
    }
}

fn parse_u16(s: &str) -> Result<u16, Error> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::InvalidProbe);
    }
    s.parse().map_err(|_| Error::InvalidProbe)
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(s: &str) -> std::vec::Vec<(HookPoint, Option<u16>, Option<u16>)> {
        let mut ps: ProbeSet<64> = ProbeSet::new();
        ps.add_pattern(s).unwrap();
        ps.probes()
            .iter()
            .map(|p| (p.point, p.layer, p.head))
            .collect()
    }

    #[test]
    fn names_and_wildcards() {
        assert_eq!(points("hook_embed"), [(HookPoint::Embed, None, None)]);
        assert_eq!(
            points("blocks.*.attn.hook_pattern"),
            [(HookPoint::Pattern, None, None)]
        );
        assert_eq!(
            points("blocks.1.attn.hook_result[2]"),
            [(HookPoint::Result, Some(1), Some(2))]
        );
        assert_eq!(
            points("ln_final.hook_scale"),
            [(HookPoint::LnFinalScale, None, None)]
        );
        assert_eq!(points("blocks.0.attn.*").len(), 7);
        assert_eq!(points("blocks.*.*").len(), 12);
        assert_eq!(points("*").len(), 17);
        assert_eq!(points("*hook_scale").len(), 2);
    }

    #[test]
    fn positions_and_precision() {
        let mut ps: ProbeSet = ProbeSet::new();
        ps.add_pattern("blocks.0.hook_resid_pre@3..5:int8").unwrap();
        let p = ps.probes()[0];
        assert_eq!(
            (p.pos_start, p.pos_end, p.precision),
            (3, Some(5), Precision::Int8)
        );
        let site = |pos| Site {
            point: HookPoint::ResidPre,
            layer: 0,
            head: None,
            pos,
        };
        assert_eq!(ps.select(&site(2)), None);
        assert_eq!(ps.select(&site(3)), Some(Precision::Int8));
        assert_eq!(ps.select(&site(5)), None);
    }

    #[test]
    fn bad_patterns_are_errors() {
        let mut ps: ProbeSet = ProbeSet::new();
        for bad in [
            "",
            "hook_nothing",
            "blocks.x.attn.hook_q",
            "blocks.0.hook_resid_pre[1]",
            "hook_embed@5..3",
            "hook_embed@",
            "hook_embed:f64",
            "blocks.0",
            "blocks.99999999.attn.hook_q",
            "hook_embed[",
        ] {
            assert!(ps.add_pattern(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ps.is_empty());
    }

    #[test]
    fn capacity_is_an_error() {
        let mut ps: ProbeSet<2> = ProbeSet::new();
        assert_eq!(
            ps.add_pattern("*"),
            Err(Error::TooManyProbes { capacity: 2 })
        );
    }

    #[test]
    fn compact_form_round_trips() {
        let mut ps: ProbeSet = ProbeSet::new();
        ps.add_pattern("blocks.*.attn.hook_pattern@1..9:f16")
            .unwrap();
        ps.add_pattern("logits").unwrap();
        let mut buf = [0u8; 256];
        let bytes = ps.to_bytes(&mut buf).unwrap();
        assert!(bytes.len() < 20, "compact: {} bytes", bytes.len());
        assert_eq!(ProbeSet::<MAX_PROBES>::from_bytes(bytes).unwrap(), ps);
    }
}
