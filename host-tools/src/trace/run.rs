//! One decoded run: its tokens, records and what was lost.

use super::{Key, MAX_MISSING_LISTED};
use crate::export::{Arrays, Cache};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use tinylens_core::probe::{Precision, Probe};
use tinylens_core::trace::Header;
use tinylens_core::{Config, HookPoint, Normalization, Site};

/// One decoded run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The id the recorder gave the run.
    pub run_id: u32,
    pub model_crc: u32,
    pub config: Config,
    pub processing: u32,
    pub probes: Vec<Probe>,
    pub tokens: BTreeMap<u16, u32>,
    pub records: BTreeMap<Key, Vec<f32>>,
    /// From the end frame: (positions, records written, records the device dropped).
    pub end: Option<(u32, u32, u32)>,
    /// Sequence number → CRC of the frame kept for it (a second frame with the same
    /// number and other content is a conflict, not a duplicate).
    pub(super) seqs: BTreeMap<u32, u64>,
    pub loss: Loss,
}

/// What was lost in one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Loss {
    /// Frames whose sequence numbers never arrived (before the last one seen or the end frame).
    pub lost_frames: usize,
    /// Frames seen twice (kept once).
    pub duplicate_frames: usize,
    /// Frames with the sequence number of a frame already kept but other content: two
    /// recorders used this run id at once, and which values are this run's is unknown.
    pub conflicting_frames: usize,
    /// Another run with the same id but a different header (model, shape or probes) was
    /// open at the same time: their frames cannot be told apart, so values may be mixed.
    pub shared_id: bool,
    /// Frames the device could not write (`End.dropped`: its sink failed or its ring
    /// was full); their sequence numbers are among `lost_frames`.
    pub dropped_on_device: u32,
    /// Whether the end frame arrived.
    pub end_seen: bool,
    /// Expected records that are missing.
    pub missing_count: u64,
    /// The first [`MAX_MISSING_LISTED`] runs of missing records, in site order.
    pub missing_records: Vec<Missing>,
}

impl Loss {
    /// Whether the run arrived whole and unmixed.
    pub fn is_complete(&self) -> bool {
        self.end_seen
            && self.lost_frames == 0
            && self.missing_count == 0
            && self.conflicting_frames == 0
            && !self.shared_id
    }
}

/// Missing records of one hook, layer and head at consecutive positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missing {
    pub point: HookPoint,
    pub layer: u16,
    pub head: Option<u16>,
    /// First position and one past the last.
    pub positions: (u16, u32),
}

impl fmt::Display for Missing {
    /// `blocks.1.attn.hook_z[2]@5`, or `...@5..9` for positions 5 to 8.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.point.name(self.layer))?;
        if let Some(h) = self.head {
            write!(f, "[{h}]")?;
        }
        let (a, b) = self.positions;
        if u32::from(a) + 1 == b {
            write!(f, "@{a}")
        } else {
            write!(f, "@{a}..{b}")
        }
    }
}

impl Serialize for Missing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Missing {
    /// Every site of the range, as [`describe`] names them.
    pub fn sites(&self) -> impl Iterator<Item = Key> + '_ {
        (u32::from(self.positions.0)..self.positions.1)
            .map(|p| (self.point, self.layer, self.head, p as u16))
    }
}

/// What decoding a whole stream found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamReport {
    /// Bytes read.
    pub bytes: u64,
    pub frames_ok: usize,
    /// Chunks between delimiters that did not decode (corrupt or cut), and frames whose
    /// content no recorder writes (not believed).
    pub bad_frames: usize,
    /// Good frames whose run's header never came (or that waited too long for it).
    pub orphan_frames: usize,
    pub runs: usize,
}

impl Run {
    pub(super) fn new(run_id: u32, seq: u32, h: &Header) -> Run {
        Run {
            run_id,
            model_crc: h.model_crc,
            config: h.config,
            processing: h.processing,
            probes: h.probes.to_vec(),
            tokens: BTreeMap::new(),
            records: BTreeMap::new(),
            end: None,
            seqs: BTreeMap::from([(seq, 0)]),
            loss: Loss::default(),
        }
    }

    /// Number of positions of the run: from the end frame, else the largest seen.
    pub fn positions(&self) -> usize {
        let seen = self
            .tokens
            .keys()
            .map(|p| *p as usize + 1)
            .chain(self.records.keys().map(|k| k.3 as usize + 1))
            .max()
            .unwrap_or(0);
        match self.end {
            Some((p, _, _)) => (p as usize).max(seen),
            None => seen,
        }
    }

    /// The tokens in position order (`None` for a lost token frame).
    pub fn token_list(&self) -> Vec<Option<u32>> {
        (0..self.positions())
            .map(|p| self.tokens.get(&(p as u16)).copied())
            .collect()
    }

    /// The precision a recorder of this run writes `site` at (the first probe that
    /// selects it decides, as in [`tinylens_core::probe::ProbeSet::select`]).
    pub(super) fn select(&self, site: &Site) -> Option<Precision> {
        self.probes
            .iter()
            .find(|p| p.matches(site))
            .map(|p| p.precision)
    }

    /// Whether the point is recorded for this run's model at all.
    pub(super) fn exists(&self, point: HookPoint) -> bool {
        !(point.needs_ln() && self.config.normalization == Normalization::None)
    }

    /// The (hook, layer) arrays the probes select, in order.
    pub fn expected_arrays(&self) -> BTreeSet<(HookPoint, u16)> {
        let mut out = BTreeSet::new();
        for p in &self.probes {
            if !self.exists(p.point) {
                continue;
            }
            match (p.point.per_layer(), p.layer) {
                (false, _) => {
                    out.insert((p.point, 0));
                }
                (true, Some(l)) => {
                    out.insert((p.point, l));
                }
                (true, None) => out.extend((0..self.config.n_layers as u16).map(|l| (p.point, l))),
            }
        }
        out
    }

    /// Whether a recorder of this run writes a record at `k` (given the positions).
    pub fn is_expected(&self, k: &Key) -> bool {
        self.is_expected_within(k, self.positions())
    }

    fn is_expected_within(&self, k: &Key, positions: usize) -> bool {
        let site = Site {
            point: k.0,
            layer: k.1,
            head: k.2,
            pos: k.3,
        };
        self.exists(k.0)
            && (k.3 as usize) < positions.min(self.config.n_ctx as usize)
            && self.select(&site).is_some()
    }

    /// The position ranges the probes select for (point, layer, head), merged, within
    /// `positions`.
    fn selected_ranges(
        &self,
        point: HookPoint,
        layer: u16,
        head: Option<u16>,
        positions: u32,
    ) -> Vec<(u32, u32)> {
        let mut r: Vec<(u32, u32)> = self
            .probes
            .iter()
            .filter(|p| {
                p.point == point
                    && (!point.per_layer() || p.layer.is_none_or(|l| l == layer))
                    && (head.is_none() || p.head.is_none_or(|h| Some(h) == head))
            })
            .map(|p| {
                let end = p.pos_end.map_or(positions, |e| u32::from(e).min(positions));
                (u32::from(p.pos_start), end)
            })
            .filter(|(a, b)| a < b)
            .collect();
        r.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(r.len());
        for (a, b) in r {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged
    }

    /// Number of records the probes select for this run's positions (without
    /// enumerating them: layers and heads named by no probe are alike).
    pub fn expected_count(&self) -> u64 {
        let c = &self.config;
        let positions = self.positions().min(c.n_ctx as usize) as u32;
        let mut total = 0u64;
        for point in HookPoint::ALL {
            if !self.exists(point) || !self.probes.iter().any(|p| p.point == point) {
                continue;
            }
            let named = |f: fn(&Probe) -> Option<u16>, n: u32| -> (Vec<u16>, u64) {
                let mut v: Vec<u16> = self
                    .probes
                    .iter()
                    .filter(|p| p.point == point)
                    .filter_map(f)
                    .filter(|x| u32::from(*x) < n)
                    .collect();
                v.sort_unstable();
                v.dedup();
                let rest = u64::from(n) - v.len() as u64;
                (v, rest)
            };
            // Each class: a named index (multiplicity 1) or "any other" (the rest), one
            // representative of which is an index no probe names.
            let classes = |(v, rest): (Vec<u16>, u64), n: u32| -> Vec<(u16, u64)> {
                let mut out: Vec<(u16, u64)> = v.iter().map(|x| (*x, 1)).collect();
                if rest > 0 {
                    let free = (0..n).find(|x| v.binary_search(&(*x as u16)).is_err());
                    if let Some(f) = free {
                        out.push((f as u16, rest));
                    }
                }
                out
            };
            let layers = if point.per_layer() {
                classes(named(|p| p.layer, c.n_layers), c.n_layers)
            } else {
                vec![(0, 1)]
            };
            let heads: Vec<(Option<u16>, u64)> = if point.per_head() {
                classes(named(|p| p.head, c.n_heads), c.n_heads)
                    .into_iter()
                    .map(|(h, m)| (Some(h), m))
                    .collect()
            } else {
                vec![(None, 1)]
            };
            for &(layer, ml) in &layers {
                for &(head, mh) in &heads {
                    let n: u64 = self
                        .selected_ranges(point, layer, head, positions)
                        .iter()
                        .map(|(a, b)| u64::from(b - a))
                        .sum();
                    total += n * ml * mh;
                }
            }
        }
        total
    }

    /// The missing records: their number and the first `limit` ranges, in site order.
    /// Work and memory follow the records held and `limit`, not the selection's size.
    pub fn missing(&self, limit: usize) -> (u64, Vec<Missing>) {
        let positions = self.positions();
        let present = self
            .records
            .keys()
            .filter(|k| self.is_expected_within(k, positions))
            .count() as u64;
        let count = self.expected_count().saturating_sub(present);
        let mut listed = Vec::new();
        if count == 0 || limit == 0 {
            return (count, listed);
        }
        let c = &self.config;
        let positions = positions.min(c.n_ctx as usize) as u32;
        'points: for point in HookPoint::ALL {
            if !self.exists(point) || !self.probes.iter().any(|p| p.point == point) {
                continue;
            }
            // Only the layers and heads some probe of the point can select.
            let of_point = || self.probes.iter().filter(|p| p.point == point);
            let candidates = |f: fn(&Probe) -> Option<u16>, n: u32| -> Vec<u16> {
                if of_point().any(|p| f(p).is_none()) {
                    (0..n as u16).collect()
                } else {
                    let set: BTreeSet<u16> = of_point().filter_map(f).collect();
                    set.into_iter().filter(|x| u32::from(*x) < n).collect()
                }
            };
            let layers: Vec<u16> = if point.per_layer() {
                candidates(|p| p.layer, c.n_layers)
            } else {
                vec![0]
            };
            let heads: Vec<Option<u16>> = if point.per_head() {
                candidates(|p| p.head, c.n_heads)
                    .into_iter()
                    .map(Some)
                    .collect()
            } else {
                vec![None]
            };
            for &layer in &layers {
                for &head in &heads {
                    let ranges = self.selected_ranges(point, layer, head, positions);
                    let held = self
                        .records
                        .range((point, layer, head, 0)..=(point, layer, head, u16::MAX))
                        .map(|(k, _)| u32::from(k.3));
                    let mut held = held.peekable();
                    for (a, b) in ranges {
                        let mut at = a;
                        while at < b {
                            while held.next_if(|p| *p < at).is_some() {}
                            let next = held.peek().copied().unwrap_or(u32::MAX).min(b);
                            if next > at {
                                listed.push(Missing {
                                    point,
                                    layer,
                                    head,
                                    positions: (at as u16, next),
                                });
                                if listed.len() == limit {
                                    break 'points;
                                }
                            }
                            at = next + 1;
                        }
                    }
                }
            }
        }
        (count, listed)
    }

    /// The loss so far (what [`Decoder::finish`] stores in `loss`).
    pub fn loss_now(&self) -> Loss {
        let mut loss = self.loss.clone();
        let (count, listed) = self.missing(MAX_MISSING_LISTED);
        loss.missing_count = count;
        loss.missing_records = listed;
        // The end frame has the highest sequence number; without it, gaps are counted up
        // to the last frame seen.
        if let Some((&last, _)) = self.seqs.iter().next_back() {
            loss.lost_frames = (last as usize + 1).saturating_sub(self.seqs.len());
        }
        loss.end_seen = self.end.is_some();
        loss.dropped_on_device = self.end.map(|e| e.2).unwrap_or(0);
        loss
    }

    /// The TransformerLens-shaped cache: hook name → (shape, row-major data). Values not
    /// recorded (not selected, or lost) are NaN; masked attention entries are 0 in
    /// `hook_pattern` and -inf in `hook_attn_scores`, as in TransformerLens. (It holds
    /// every value: for export, [`Run::cache_view`] writes the same arrays row by row.)
    pub fn cache(&self) -> Cache {
        let view = self.cache_view(false);
        let mut out = Cache::new();
        for (i, (name, shape)) in view.list().into_iter().enumerate() {
            let mut data = Vec::with_capacity(shape.iter().product());
            let _ = view.emit(i, &mut |piece| {
                data.extend_from_slice(piece);
                Ok(())
            });
            out.insert(name, (shape, data));
        }
        out
    }
}
