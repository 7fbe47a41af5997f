//! Decoding trace streams into TransformerLens-shaped caches.
//!
//! A stream may hold several runs (each starts with a header frame), and may have been
//! damaged on the way (a serial line, a capture cut short). The [`Decoder`] takes the
//! bytes as they come ([`Decoder::push`], any split), splits them at every `0x00`, drops
//! frames whose COBS, CRC or content is bad, drops duplicates (same sequence number),
//! puts records in place by their site whatever order they came in, and reports what was
//! lost: bad frames, sequence gaps, and exactly which expected records are missing. A
//! missing value is NaN in the cache, never a guess.
//!
//! Content is believed only if a recorder could have written it for the run's header:
//! a record must be one the header's probes select, at their precision, with the width
//! of its hook (a `hook_embed` record with a layer or a head, a row of the wrong length,
//! an int8 record with a NaN scale are bad frames, and the value is listed as missing).
//!
//! Memory: the decoder holds what it kept of the input (runs and records: under 32 bytes
//! per input byte for the smallest frames, see `tests/tests/decoder_memory.rs`), one
//! frame being assembled (at most
//! [`MAX_FRAME_BYTES`]) and at most [`MAX_PENDING_BYTES`] of frames waiting for their
//! header; missing records are counted and listed as ranges ([`MAX_MISSING_LISTED`]), the
//! cache is produced a row at a time for export ([`CacheView`]). Nothing is sized by what
//! a header claims.
//!
//! Live use (a serial port, `--follow`, a monitor): push bytes as they are read and act
//! on the [`Event`]s; [`Decoder::run`] and [`Run::loss_now`] give the state of a run at
//! any time. A new kind of frame is a `Body` variant in the core, one arm in
//! `add_frame` (what it changes in the run, and its believability check) and, if callers
//! need to see it, an [`Event`] variant (the enum is `non_exhaustive`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io;

use serde::Serialize;
use tinylens_core::config::limits;
use tinylens_core::probe::{Precision, Probe};
use tinylens_core::trace::{decode_frame, frame_buffer_len, Body, Frame, Header};
use tinylens_core::{Config, HookPoint, Normalization, Site};

use crate::export::{Arrays, Cache};

/// Identity of a recorded value: (point, layer, head, position).
pub type Key = (HookPoint, u16, Option<u16>, u16);

fn key(site: &Site) -> Key {
    (site.point, site.layer, site.head, site.pos)
}

/// Longest chunk between two delimiters that can be a frame: the largest frame a
/// recorder writes for any valid config (4 MiB of f32 logits for the largest vocabulary,
/// plus framing). A longer chunk is one bad frame, skipped without being kept.
pub const MAX_FRAME_BYTES: usize = frame_buffer_len(&Config {
    n_layers: 1,
    n_heads: 1,
    d_model: limits::MAX_DIM,
    d_head: 1,
    d_vocab: limits::MAX_VOCAB,
    d_vocab_out: limits::MAX_VOCAB,
    n_ctx: limits::MAX_CTX,
    normalization: Normalization::None,
    positional: tinylens_core::Positional::Standard,
    eps: 0.0,
    attn_scale: 1.0,
});

/// Most bytes of frames held while their header has not arrived; beyond, the oldest
/// are dropped (and counted as orphans), so an endless stream of headerless frames
/// cannot fill memory.
pub const MAX_PENDING_BYTES: usize = 64 << 20;

/// Most missing ranges listed per run (all are counted in [`Loss::missing_count`]).
pub const MAX_MISSING_LISTED: usize = 100;

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
    seqs: BTreeMap<u32, u64>,
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
    fn new(run_id: u32, seq: u32, h: &Header) -> Run {
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
    fn select(&self, site: &Site) -> Option<Precision> {
        self.probes
            .iter()
            .find(|p| p.matches(site))
            .map(|p| p.precision)
    }

    /// Whether the point is recorded for this run's model at all.
    fn exists(&self, point: HookPoint) -> bool {
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

/// Which runs a [`Decoder`] keeps the values of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Every run.
    All,
    /// Only the run with this index (0 = the first header of the stream); the others
    /// are counted, their values dropped as they come.
    Only(usize),
}

/// What one frame did, as [`Decoder::push`] reports it. `run` is the index of the run in
/// the stream (0 = the first header); [`Decoder::run`] gives the run if it is kept. Runs
/// that are not kept ([`Keep::Only`]) report no `Token`, `Record` or `Conflict` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A header started run `run`.
    RunStarted { run: usize },
    /// Position `pos` of a run started, with its input token.
    Token { run: usize, pos: u16, token: u32 },
    /// A record was placed.
    Record { run: usize, key: Key },
    /// A run's end frame arrived.
    RunEnded { run: usize },
    /// A frame the run already had.
    Duplicate { run: usize },
    /// A frame with the number of one the run already had but other content (two
    /// recordings share the run id).
    Conflict { run: usize },
    /// A chunk that is not a frame, or a frame whose content was not believed.
    Bad,
    /// A good frame of a run whose header has not come (yet).
    Pending,
}

/// Where frames of a run id go.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Index of the run in the stream.
    run: usize,
    /// Index in `runs` if kept.
    kept: Option<usize>,
    ended: bool,
    /// Fingerprint of the header frame: the same header again is a duplicate, another
    /// one with this id is another run.
    header: u64,
}

/// The streaming trace decoder: feed it bytes as they arrive, in pieces of any size.
///
/// ```
/// use tinylens_host::trace::{Decoder, Event, Keep};
/// let mut d = Decoder::new(Keep::All);
/// let mut bad = 0;
/// d.push(&[1, 2], &mut |_, _| {});
/// d.push(&[3, 0], &mut |_, e| bad += (e == Event::Bad) as usize);
/// let (runs, report) = d.finish();
/// assert_eq!((runs.len(), report.bad_frames, bad), (0, 1, 1));
/// ```
#[derive(Debug)]
pub struct Decoder {
    keep: Keep,
    max_frame: usize,
    /// The frame being assembled (COBS-encoded, without its 0x00).
    chunk: Vec<u8>,
    /// The chunk passed `max_frame`: it is skipped up to the next 0x00.
    overlong: bool,
    scratch: Vec<u8>,
    runs: Vec<Run>,
    slots: BTreeMap<u32, Slot>,
    /// Frames before their header, by run id, each with its arrival number.
    pending: BTreeMap<u32, VecDeque<(u64, Vec<u8>)>>,
    /// Arrival order of the pending frames (run id, arrival number), oldest first, for
    /// dropping the oldest; entries of frames already taken are skipped (and swept).
    pending_order: VecDeque<(u32, u64)>,
    pending_frames: usize,
    pending_bytes: usize,
    pending_limit: usize,
    arrivals: u64,
    events: Vec<Event>,
    report: StreamReport,
}

impl Decoder {
    pub fn new(keep: Keep) -> Decoder {
        Decoder {
            keep,
            max_frame: MAX_FRAME_BYTES,
            chunk: Vec::new(),
            overlong: false,
            scratch: Vec::new(),
            runs: Vec::new(),
            slots: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_order: VecDeque::new(),
            pending_frames: 0,
            pending_bytes: 0,
            pending_limit: MAX_PENDING_BYTES,
            arrivals: 0,
            events: Vec::new(),
            report: StreamReport::default(),
        }
    }

    /// A decoder that holds at most `bytes` of frames waiting for their header (instead
    /// of [`MAX_PENDING_BYTES`]).
    pub fn with_pending_limit(keep: Keep, bytes: usize) -> Decoder {
        Decoder {
            pending_limit: bytes,
            ..Decoder::new(keep)
        }
    }

    /// Decodes every frame that `bytes` completes, calling `on_event` for what each did
    /// (with the decoder, to look at the run concerned). A frame cut by the end of
    /// `bytes` continues with the next push.
    pub fn push(&mut self, bytes: &[u8], on_event: &mut dyn FnMut(&Decoder, Event)) {
        self.report.bytes += bytes.len() as u64;
        let mut rest = bytes;
        while !rest.is_empty() {
            let zero = rest.iter().position(|b| *b == 0);
            let piece = &rest[..zero.unwrap_or(rest.len())];
            if !self.overlong {
                if self.chunk.len() + piece.len() > self.max_frame {
                    self.overlong = true;
                    self.chunk = Vec::new();
                } else {
                    self.chunk.extend_from_slice(piece);
                }
            }
            let Some(i) = zero else { break };
            rest = &rest[i + 1..];
            let chunk = std::mem::take(&mut self.chunk);
            if std::mem::take(&mut self.overlong) {
                self.report.bad_frames += 1;
                self.events.push(Event::Bad);
            } else if !chunk.is_empty() {
                self.frame(&chunk);
            }
            self.chunk = chunk;
            self.chunk.clear();
            if self.chunk.capacity() > 1 << 16 {
                self.chunk = Vec::new();
            }
            let mut events = std::mem::take(&mut self.events);
            for e in events.drain(..) {
                on_event(self, e);
            }
            self.events = events;
        }
    }

    /// The runs kept so far, in stream order.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Run `index` of the stream, if it is kept and has started.
    pub fn run(&self, index: usize) -> Option<&Run> {
        match self.keep {
            Keep::All => self.runs.get(index),
            Keep::Only(n) if n == index => self.runs.first(),
            Keep::Only(_) => None,
        }
    }

    /// Whether run `index` of the stream has received its end frame.
    pub fn run_ended(&self, index: usize) -> bool {
        self.run(index).is_some_and(|r| r.end.is_some())
    }

    /// The stream report so far.
    pub fn report(&self) -> &StreamReport {
        &self.report
    }

    /// Ends the stream: a frame cut by the end is a bad frame, frames still waiting for
    /// their header are orphans, and every kept run's loss is computed.
    pub fn finish(mut self) -> (Vec<Run>, StreamReport) {
        if !self.chunk.is_empty() || self.overlong {
            self.report.bad_frames += 1;
        }
        self.report.orphan_frames += self.pending_frames;
        for run in &mut self.runs {
            run.loss = run.loss_now();
        }
        (self.runs, self.report)
    }

    /// One chunk between delimiters.
    fn frame(&mut self, chunk: &[u8]) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend_from_slice(chunk);
        match decode_frame(&mut scratch) {
            Ok(frame) => self.good_frame(frame, chunk),
            Err(_) => {
                self.report.bad_frames += 1;
                self.events.push(Event::Bad);
            }
        }
        if scratch.capacity() <= 1 << 16 {
            self.scratch = scratch;
        }
    }

    fn good_frame(&mut self, frame: Frame<'_>, raw: &[u8]) {
        let print = fingerprint(raw);
        if let Body::Header(h) = &frame.body {
            if !believable_header(h) {
                self.report.bad_frames += 1;
                self.events.push(Event::Bad);
                return;
            }
            self.report.frames_ok += 1;
            self.header(frame.run, frame.seq, print, h);
            return;
        }
        let Some(slot) = self.slots.get(&frame.run).copied() else {
            self.report.frames_ok += 1;
            self.hold(frame.run, raw.to_vec());
            self.events.push(Event::Pending);
            return;
        };
        let (id, is_end) = (frame.run, matches!(frame.body, Body::End { .. }));
        match slot.kept {
            // A run whose values are not kept: its frames are only counted.
            None => self.report.frames_ok += 1,
            Some(k) => match add_frame(&mut self.runs[k], slot.run, frame, print) {
                Some(e) => {
                    self.report.frames_ok += 1;
                    self.events.push(e);
                }
                None => {
                    self.report.bad_frames += 1;
                    self.events.push(Event::Bad);
                    return;
                }
            },
        }
        if is_end {
            if let Some(s) = self.slots.get_mut(&id) {
                s.ended = true;
            }
            if slot.kept.is_none() {
                self.events.push(Event::RunEnded { run: slot.run });
            }
        }
    }

    fn header(&mut self, id: u32, seq: u32, print: u64, h: &Header) {
        let open = self.slots.get(&id).copied().filter(|s| !s.ended);
        if let Some(slot) = open {
            if slot.header == print {
                if let Some(k) = slot.kept {
                    self.runs[k].loss.duplicate_frames += 1;
                }
                self.events.push(Event::Duplicate { run: slot.run });
                return;
            }
            // Another recorder with the same id: a new run, and both are marked, for
            // their other frames cannot be told apart.
            if let Some(k) = slot.kept {
                self.runs[k].loss.shared_id = true;
            }
        }
        let index = self.report.runs;
        self.report.runs += 1;
        let keep = match self.keep {
            Keep::All => true,
            Keep::Only(n) => n == index,
        };
        let kept = keep.then(|| {
            let mut run = Run::new(id, seq, h);
            run.seqs.insert(seq, print);
            run.loss.shared_id = open.is_some();
            self.runs.push(run);
            self.runs.len() - 1
        });
        self.slots.insert(
            id,
            Slot {
                run: index,
                kept,
                ended: false,
                header: print,
            },
        );
        self.events.push(Event::RunStarted { run: index });
        // Frames that came before their header, in the order they came.
        for (_, raw) in self.pending.remove(&id).unwrap_or_default() {
            self.pending_frames -= 1;
            self.pending_bytes -= raw.len();
            self.report.frames_ok -= 1; // counted again by `frame`
            self.frame(&raw);
        }
        if self.pending_order.len() > 2 * self.pending_frames + 1024 {
            let pending = &self.pending;
            self.pending_order.retain(|(id, n)| {
                pending
                    .get(id)
                    .and_then(|q| q.front())
                    .is_some_and(|f| f.0 <= *n)
            });
        }
    }

    fn hold(&mut self, id: u32, raw: Vec<u8>) {
        self.arrivals += 1;
        self.pending_bytes += raw.len();
        self.pending_frames += 1;
        self.pending
            .entry(id)
            .or_default()
            .push_back((self.arrivals, raw));
        self.pending_order.push_back((id, self.arrivals));
        while self.pending_bytes > self.pending_limit {
            let Some((id, n)) = self.pending_order.pop_front() else {
                break;
            };
            let Some(q) = self.pending.get_mut(&id) else {
                continue;
            };
            if q.front().is_some_and(|f| f.0 == n) {
                let (_, old) = q.pop_front().expect("front exists");
                if q.is_empty() {
                    self.pending.remove(&id);
                }
                self.pending_frames -= 1;
                self.pending_bytes -= old.len();
                self.report.orphan_frames += 1;
            }
        }
    }
}

/// A fingerprint of a frame's bytes (telling a duplicate from another frame with the
/// same sequence number).
fn fingerprint(raw: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    raw.hash(&mut h);
    h.finish()
}

/// Whether a recorder could have written this header: the version and config are
/// checked by `decode_frame`; the probes must be valid for the config (a recorder
/// validates them), and the selection must fit the limits below.
fn believable_header(h: &Header) -> bool {
    if h.probes.iter().any(|p| p.validate(&h.config).is_err()) {
        return false;
    }
    let (values, records) = run_size(&h.config, &h.probes);
    values <= MAX_CACHE_VALUES && records <= MAX_EXPECTED_RECORDS
}

/// Most values a run's cache may hold (1 GiB of f32), and most records a run may be
/// expected to hold. A header whose probes would select more at full context is not
/// believed: it is corrupt content that passed the CRC (no device writes such a run).
/// (The decoder's memory does not depend on them: they bound what one run can make
/// `decode` write.)
pub const MAX_CACHE_VALUES: u64 = 1 << 28;
pub const MAX_EXPECTED_RECORDS: u64 = 1 << 22;

/// Upper bounds of the values of the cache and of the records expected for a run of
/// `cfg` that records `probes` at every position.
fn run_size(cfg: &Config, probes: &[Probe]) -> (u64, u64) {
    let (l, h, dh, dm) = (
        u64::from(cfg.n_layers),
        u64::from(cfg.n_heads),
        u64::from(cfg.d_head),
        u64::from(cfg.d_model),
    );
    let n_ctx = u64::from(cfg.n_ctx);
    let (mut values, mut records) = (0u64, 0u64);
    for p in probes {
        let per_position = match p.point {
            HookPoint::Q | HookPoint::K | HookPoint::V | HookPoint::Z => h * dh,
            HookPoint::Result => h * dm,
            HookPoint::AttnScores | HookPoint::Pattern => h * n_ctx,
            HookPoint::Ln1Scale | HookPoint::LnFinalScale => 1,
            HookPoint::Logits => u64::from(cfg.d_vocab_out),
            _ => dm,
        };
        let layers = match (p.point.per_layer(), p.layer) {
            (true, None) => l,
            _ => 1,
        };
        let heads = match (p.point.per_head(), p.head) {
            (true, None) => h,
            _ => 1,
        };
        let end = p.pos_end.map_or(n_ctx, |e| u64::from(e).min(n_ctx));
        let positions = end.saturating_sub(u64::from(p.pos_start));
        // The cache holds whole arrays for every (hook, layer) a probe names.
        values = values.saturating_add(layers * n_ctx * per_position);
        records = records.saturating_add(layers * heads * positions);
    }
    (values, records)
}

/// Decodes a whole stream (any number of runs, any damage): [`Decoder`] over `bytes`.
///
/// Frames go to their run by the run id every frame carries, so a lost header costs that
/// run's frames (reported as orphans), never a mix-up with another run; frames that
/// arrive before their header are kept until it comes. A second header with the id of a
/// run that has not ended is a duplicate if it is the same header, and another run (both
/// marked [`Loss::shared_id`]) if not; after the run's end frame it starts a new run (a
/// device that restarted its numbering).
pub fn decode_stream(bytes: &[u8]) -> (Vec<Run>, StreamReport) {
    let mut d = Decoder::new(Keep::All);
    d.push(bytes, &mut |_, _| {});
    d.push(&[0], &mut |_, _| {});
    let (runs, mut report) = d.finish();
    report.bytes -= 1;
    (runs, report)
}

/// Adds one non-header frame to its run (index `index` in the stream): deduplicated by
/// sequence number, checked against the run's header. `None`: content no recorder of
/// this run writes (corrupt, never data).
fn add_frame(run: &mut Run, index: usize, frame: Frame<'_>, print: u64) -> Option<Event> {
    match run.seqs.get(&frame.seq) {
        Some(p) if *p == print => {
            run.loss.duplicate_frames += 1;
            return Some(Event::Duplicate { run: index });
        }
        Some(_) => {
            // Same number, other content: two recorders share this run id.
            run.loss.conflicting_frames += 1;
            return Some(Event::Conflict { run: index });
        }
        None => {}
    }
    let c = run.config;
    let event = match frame.body {
        Body::Token { pos, token } => {
            if u32::from(pos) >= c.n_ctx || token >= c.d_vocab {
                return None;
            }
            run.tokens.insert(pos, token);
            Event::Token {
                run: index,
                pos,
                token,
            }
        }
        Body::Record(r) => {
            let site = r.site();
            let point = site.point;
            let bpv = r.precision.bytes_per_value();
            let believable = (point.per_layer() || site.layer == 0)
                && u32::from(site.layer) < c.n_layers
                && site.head.is_some() == point.per_head()
                && site.head.is_none_or(|h| u32::from(h) < c.n_heads)
                && u32::from(site.pos) < c.n_ctx
                && run.exists(point)
                && run.select(&site) == Some(r.precision)
                && r.data.len() == record_width(&c, point, site.pos) * bpv
                && (r.precision != Precision::Int8 || (r.scale.is_finite() && r.scale >= 0.0));
            if !believable {
                return None;
            }
            let mut v = vec![0.0; r.len()];
            r.values_into(&mut v);
            let k = key(&site);
            run.records.entry(k).or_insert(v);
            Event::Record { run: index, key: k }
        }
        Body::End {
            positions,
            records,
            dropped,
        } => {
            if positions > c.n_ctx {
                return None;
            }
            run.end = Some((positions, records, dropped));
            Event::RunEnded { run: index }
        }
        Body::Header(_) => return None,
    };
    run.seqs.insert(frame.seq, print);
    Some(event)
}
