//! Decoding trace streams into TransformerLens-shaped caches.
//!
//! A stream may hold several runs (each starts with a header frame), and may have been
//! damaged on the way (a serial line, a capture cut short). Decoding splits it at every
//! `0x00`, drops frames whose COBS, CRC or content is bad, drops duplicates (same
//! sequence number), puts records in place by their site whatever order they came in,
//! and reports what was lost: bad frames, sequence gaps, and exactly which expected
//! records are missing. A missing value is NaN in the cache, never a guess.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tinylens_core::probe::Probe;
use tinylens_core::trace::{decode_frame, Body};
use tinylens_core::{Config, HookPoint, Normalization, Site};

/// Identity of a recorded value.
pub type Key = (HookPoint, u16, Option<u16>, u16);

fn key(site: &Site) -> Key {
    (site.point, site.layer, site.head, site.pos)
}

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
    seqs: BTreeSet<u32>,
    pub loss: Loss,
}

/// What was lost in one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Loss {
    /// Frames whose sequence numbers never arrived (before the last one seen or the end frame).
    pub lost_frames: usize,
    /// Frames seen twice (kept once).
    pub duplicate_frames: usize,
    /// Records the device selected but could not write (its sink failed or was full).
    pub dropped_on_device: u32,
    /// Whether the end frame arrived.
    pub end_seen: bool,
    /// Expected records that are missing, as `hook[head]@pos`.
    pub missing_records: Vec<String>,
}

/// What decoding a whole stream found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamReport {
    pub frames_ok: usize,
    /// Chunks between delimiters that did not decode (corrupt or cut).
    pub bad_frames: usize,
    /// Good frames that came before any header (their run's header was lost).
    pub orphan_frames: usize,
    pub runs: usize,
}

impl Run {
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

    /// Every site the probe set selects for this run's positions (what
    /// [`Probe::matches`] selects, enumerated per probe so that the work is that of the
    /// selection, not of every site of the model).
    pub fn expected(&self) -> BTreeSet<Key> {
        let c = &self.config;
        let mut out = BTreeSet::new();
        let positions = self.positions().min(c.n_ctx as usize);
        for p in &self.probes {
            let point = p.point;
            if point.needs_ln() && c.normalization == Normalization::None {
                continue;
            }
            let layers: Vec<u16> = match (point.per_layer(), p.layer) {
                (false, _) => vec![0],
                (true, None) => (0..c.n_layers as u16).collect(),
                (true, Some(l)) if u32::from(l) < c.n_layers => vec![l],
                (true, Some(_)) => vec![],
            };
            let heads: Vec<Option<u16>> = match (point.per_head(), p.head) {
                (false, _) => vec![None],
                (true, None) => (0..c.n_heads as u16).map(Some).collect(),
                (true, Some(h)) if u32::from(h) < c.n_heads => vec![Some(h)],
                (true, Some(_)) => vec![],
            };
            let end = p.pos_end.map_or(positions, |e| (e as usize).min(positions));
            for &layer in &layers {
                for &head in &heads {
                    for pos in p.pos_start as usize..end {
                        out.insert((point, layer, head, pos as u16));
                    }
                }
            }
        }
        out
    }

    fn finish(&mut self) {
        let expected = self.expected();
        self.loss.missing_records = expected
            .difference(&self.records.keys().copied().collect())
            .map(describe)
            .collect();
        // The end frame has the highest sequence number; without it, gaps are counted up
        // to the last frame seen.
        if let Some(&last) = self.seqs.iter().next_back() {
            self.loss.lost_frames = (last as usize + 1).saturating_sub(self.seqs.len());
        }
        self.loss.end_seen = self.end.is_some();
        self.loss.dropped_on_device = self.end.map(|e| e.2).unwrap_or(0);
    }

    /// The TransformerLens-shaped cache: hook name → (shape, row-major data). Values not
    /// recorded (not selected, or lost) are NaN; masked attention entries are 0 in
    /// `hook_pattern` and -inf in `hook_attn_scores`, as in TransformerLens.
    pub fn cache(&self) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
        let c = &self.config;
        let p = self.positions();
        let (nh, dh, dm) = (c.n_heads as usize, c.d_head as usize, c.d_model as usize);
        let mut out = BTreeMap::new();
        let mut names: BTreeSet<(HookPoint, u16)> = BTreeSet::new();
        for k in self.expected().iter().chain(self.records.keys()) {
            names.insert((k.0, k.1));
        }
        for (point, layer) in names {
            let shape: Vec<usize> = match point {
                HookPoint::Q | HookPoint::K | HookPoint::V | HookPoint::Z => vec![p, nh, dh],
                HookPoint::Result => vec![p, nh, dm],
                HookPoint::AttnScores | HookPoint::Pattern => vec![nh, p, p],
                HookPoint::Ln1Scale | HookPoint::LnFinalScale => vec![p, 1],
                HookPoint::Logits => vec![p, c.d_vocab_out as usize],
                _ => vec![p, dm],
            };
            let mut data = vec![f32::NAN; shape.iter().product()];
            if point.is_attention_row() {
                let masked = if point == HookPoint::Pattern {
                    0.0
                } else {
                    f32::NEG_INFINITY
                };
                for h in 0..nh {
                    for q in 0..p {
                        for k in q + 1..p {
                            data[(h * p + q) * p + k] = masked;
                        }
                    }
                }
            }
            for (k, v) in self
                .records
                .range((point, layer, None, 0)..=(point, layer, Some(u16::MAX), u16::MAX))
            {
                let (pos, head) = (k.3 as usize, k.2.unwrap_or(0) as usize);
                if pos >= p {
                    continue;
                }
                let (at, width) = match point {
                    HookPoint::AttnScores | HookPoint::Pattern => ((head * p + pos) * p, pos + 1),
                    _ if point.per_head() => {
                        let w = shape[2];
                        ((pos * nh + head) * w, w)
                    }
                    _ => (pos * shape[1], shape[1]),
                };
                if v.len() == width {
                    data[at..at + width].copy_from_slice(v);
                }
            }
            out.insert(point.name(layer).to_string(), (shape, data));
        }
        out
    }
}

/// Most values a run's cache may hold (1 GiB of f32), and most records a run may be
/// expected to hold. A header whose probes would select more at full context is not
/// believed: it is corrupt content that passed the CRC (no device writes such a run),
/// and decoding it would exhaust memory.
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

/// `blocks.1.attn.hook_z[2]@5`.
pub fn describe(k: &Key) -> String {
    let name = k.0.name(k.1);
    match k.2 {
        Some(h) => format!("{name}[{h}]@{}", k.3),
        None => format!("{name}@{}", k.3),
    }
}

/// Decodes a whole stream (any number of runs, any damage).
///
/// Frames go to their run by the run id every frame carries, so a lost header costs that
/// run's frames (reported as orphans), never a mix-up with another run; frames that
/// arrive before their header are kept until it comes. A second header
/// with the id of a run that has not ended is a duplicate; after the run's end frame
/// it starts a new run (a device that restarted its numbering).
pub fn decode_stream(bytes: &[u8]) -> (Vec<Run>, StreamReport) {
    let mut report = StreamReport::default();
    let mut runs: Vec<Run> = Vec::new();
    let mut by_id: BTreeMap<u32, usize> = BTreeMap::new();
    // Frames that came before their run's header (reordered on the way), kept until it comes.
    let mut pending: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    let mut buf = Vec::new();
    for chunk in bytes.split(|b| *b == 0) {
        if chunk.is_empty() {
            continue;
        }
        buf.clear();
        buf.extend_from_slice(chunk);
        let frame = match decode_frame(&mut buf) {
            Ok(f) => f,
            Err(_) => {
                report.bad_frames += 1;
                continue;
            }
        };
        if let Body::Header(h) = &frame.body {
            let (values, records) = run_size(&h.config, &h.probes);
            if values > MAX_CACHE_VALUES || records > MAX_EXPECTED_RECORDS {
                report.bad_frames += 1;
                continue;
            }
        }
        report.frames_ok += 1;
        if let Body::Header(h) = &frame.body {
            let current = by_id.get(&frame.run).map(|&i| &mut runs[i]);
            match current {
                Some(run) if run.end.is_none() => {
                    run.loss.duplicate_frames += 1;
                }
                _ => {
                    by_id.insert(frame.run, runs.len());
                    runs.push(Run {
                        run_id: frame.run,
                        model_crc: h.model_crc,
                        config: h.config,
                        processing: h.processing,
                        probes: h.probes.to_vec(),
                        tokens: BTreeMap::new(),
                        records: BTreeMap::new(),
                        end: None,
                        seqs: BTreeSet::from([frame.seq]),
                        loss: Loss::default(),
                    });
                    let run = runs.last_mut().expect("just pushed");
                    for mut early in pending.remove(&frame.run).unwrap_or_default() {
                        if let Ok(f) = decode_frame(&mut early) {
                            add_frame(run, f, &mut report);
                        }
                    }
                }
            }
            continue;
        }
        match by_id.get(&frame.run) {
            Some(&i) => add_frame(&mut runs[i], frame, &mut report),
            None => pending.entry(frame.run).or_default().push(chunk.to_vec()),
        }
    }
    report.orphan_frames += pending.values().map(Vec::len).sum::<usize>();
    for run in &mut runs {
        run.finish();
    }
    report.runs = runs.len();
    (runs, report)
}

/// Adds one non-header frame to its run: deduplicated by sequence number, checked
/// against the run's shape (content that does not fit is corrupt, never data).
fn add_frame(run: &mut Run, frame: tinylens_core::trace::Frame<'_>, report: &mut StreamReport) {
    if !run.seqs.insert(frame.seq) {
        run.loss.duplicate_frames += 1;
        return;
    }
    match frame.body {
        Body::Token { pos, token } => {
            if u32::from(pos) >= run.config.n_ctx || token >= run.config.d_vocab {
                report.bad_frames += 1;
                return;
            }
            run.tokens.insert(pos, token);
        }
        Body::Record(r) => {
            let c = &run.config;
            let site = r.site();
            let plausible = (!site.point.per_layer() || (site.layer as u32) < c.n_layers)
                && site.head.is_none_or(|h| (h as u32) < c.n_heads)
                && (site.pos as u32) < c.n_ctx
                && r.data.len() % r.precision.bytes_per_value() == 0;
            if !plausible {
                report.bad_frames += 1;
                return;
            }
            let mut v = vec![0.0; r.len()];
            r.values_into(&mut v);
            run.records.entry(key(&site)).or_insert(v);
        }
        Body::End {
            positions,
            records,
            dropped,
        } => {
            if positions > run.config.n_ctx {
                report.bad_frames += 1;
                return;
            }
            run.end = Some((positions, records, dropped))
        }
        Body::Header(_) => {}
    }
}
