//! The streaming decoder: frames in, runs out.

use super::{key, record_width, Key, Run, StreamReport, MAX_FRAME_BYTES, MAX_PENDING_BYTES};
use std::collections::{BTreeMap, VecDeque};
use tinylens_core::probe::{Precision, Probe};
use tinylens_core::trace::{decode_frame, Body, Frame, Header};
use tinylens_core::{Config, HookPoint};

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
