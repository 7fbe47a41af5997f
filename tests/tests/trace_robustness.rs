//! Damaged trace streams: random bit flips, dropped bytes, truncation, duplicated and
//! reordered frames. Whatever the damage, decoding never presents a corrupt value as data,
//! recovers every record whose frame arrived intact, and reports exactly what is missing.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use tinylens_core::probe::ProbeSet;
use tinylens_core::trace::{frame_buffer_len, Recorder};
use tinylens_core::{Error, Model, Session, StorageKind};
use tinylens_host::trace::{decode_stream, describe, Key};
use tinylens_tests::*;

/// Frames of one intact run (each ends in its 0x00), recording every hook at mixed precisions.
fn intact_frames() -> Vec<Vec<u8>> {
    let blob = blob("attn1_ln", StorageKind::Int8);
    let model = Model::from_bytes(&blob).unwrap();
    let cfg = *model.config();
    let mut probes: ProbeSet<64> = ProbeSet::new();
    probes
        .add_pattern("blocks.*.attn.hook_pattern:f16")
        .unwrap();
    probes
        .add_pattern("blocks.0.attn.hook_result:int8")
        .unwrap();
    probes.add_pattern("*").unwrap();
    let mut frames = Vec::new();
    let mut frame_buf = vec![0u8; frame_buffer_len(&cfg)];
    let mut ws = vec![0.0; cfg.workspace_len()];
    let mut s = Session::new(&model, &mut ws).unwrap();
    let mut rec = Recorder::begin(
        &model,
        &probes,
        |b: &[u8]| -> Result<(), Error> {
            frames.push(b.to_vec());
            Ok(())
        },
        &mut frame_buf,
    )
    .unwrap();
    for t in [3u32, 9, 27, 3, 9, 27] {
        s.step_with(t, &mut rec).unwrap();
    }
    let (summary, _sink) = rec.finish();
    assert_eq!(summary.dropped, 0);
    frames
}

fn records(bytes: &[u8]) -> BTreeMap<Key, Vec<u32>> {
    let (runs, _) = decode_stream(bytes);
    runs.first()
        .map(|r| {
            r.records
                .iter()
                .map(|(k, v)| (*k, v.iter().map(|x| x.to_bits()).collect()))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone)]
enum Damage {
    FlipBit(usize, u8),
    DropBytes(usize, usize),
    Truncate(usize),
    Duplicate(usize),
    Swap(usize),
    DropFrame(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Damage::FlipBit(i, b)),
        2 => (any::<usize>(), 1usize..40).prop_map(|(i, n)| Damage::DropBytes(i, n)),
        1 => any::<usize>().prop_map(Damage::Truncate),
        2 => any::<usize>().prop_map(Damage::Duplicate),
        2 => any::<usize>().prop_map(Damage::Swap),
        2 => any::<usize>().prop_map(Damage::DropFrame),
    ]
}

/// Applies frame-level damage first (duplicate, swap, drop), then byte-level damage.
fn apply(frames: &[Vec<u8>], damages: &[Damage]) -> Vec<u8> {
    let mut fs = frames.to_vec();
    for d in damages {
        let n = fs.len();
        match *d {
            Damage::Duplicate(i) if n > 0 => {
                let f = fs[i % n].clone();
                fs.insert((i / 7) % (n + 1), f);
            }
            Damage::Swap(i) if n > 1 => fs.swap(i % (n - 1), i % (n - 1) + 1),
            Damage::DropFrame(i) if n > 0 => {
                fs.remove(i % n);
            }
            _ => {}
        }
    }
    let mut bytes: Vec<u8> = fs.concat();
    for d in damages {
        let n = bytes.len();
        if n == 0 {
            break;
        }
        match *d {
            Damage::FlipBit(i, b) => bytes[i % n] ^= 1 << b,
            Damage::DropBytes(i, k) => {
                let at = i % n;
                bytes.drain(at..(at + k).min(n));
            }
            Damage::Truncate(i) => bytes.truncate(i % n),
            _ => {}
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn damaged_streams_decode_to_exactly_the_intact_records(damages in prop::collection::vec(damage(), 1..6)) {
        let frames = intact_frames_cached();
        let intact = records(&frames.concat());
        let bytes = apply(frames, &damages);
        let (runs, report) = decode_stream(&bytes);
        // Which frames arrived whole: their exact bytes stand between two delimiters.
        let chunks: BTreeSet<&[u8]> = bytes.split(|b| *b == 0).collect();
        let arrived = |f: &Vec<u8>| chunks.contains(&f[..f.len() - 1]);
        if !arrived(&frames[0]) {
            // Without the header the records can't be interpreted: none may be presented.
            prop_assert!(runs.is_empty());
            prop_assert!(bytes.is_empty() || report.orphan_frames + report.bad_frames > 0);
        }
        let Some(run) = runs.first() else {
            prop_assert!(!arrived(&frames[0]));
            return Ok(());
        };
        let decoded: BTreeMap<Key, Vec<u32>> = run
            .records
            .iter()
            .map(|(k, v)| (*k, v.iter().map(|x| x.to_bits()).collect()))
            .collect();
        // 1. Nothing decoded differs from the intact run, bit for bit.
        for (k, v) in &decoded {
            prop_assert_eq!(intact.get(k), Some(v), "record {} differs from the intact one", describe(k));
        }
        // 2. Every record whose frame arrived whole is decoded.
        let intact_frame_records = records_by_frame(frames);
        for (f, key) in frames.iter().zip(&intact_frame_records) {
            if let Some(key) = key {
                if arrived(f) && arrived(&frames[0]) {
                    prop_assert!(decoded.contains_key(key), "{} lost though its frame arrived", describe(key));
                }
            }
        }
        // 3. When the header and the end frame arrived, the missing list is exactly what is gone.
        if arrived(&frames[0]) && arrived(frames.last().unwrap()) && report.orphan_frames == 0 {
            let missing: BTreeSet<String> = intact.keys().filter(|k| !decoded.contains_key(k)).map(describe).collect();
            let reported: BTreeSet<String> = run.loss.missing_records.iter().flat_map(|m| m.sites()).map(|k| describe(&k)).collect();
            prop_assert_eq!(run.loss.missing_count, missing.len() as u64);
            prop_assert_eq!(missing, reported);
        }
    }
}

fn intact_frames_cached() -> &'static Vec<Vec<u8>> {
    static FRAMES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    FRAMES.get_or_init(intact_frames)
}

/// For each intact frame, the record key it carries (None for header, token and end).
fn records_by_frame(frames: &[Vec<u8>]) -> Vec<Option<Key>> {
    frames
        .iter()
        .map(|f| {
            let mut buf = f[..f.len() - 1].to_vec();
            match tinylens_core::trace::decode_frame(&mut buf).unwrap().body {
                tinylens_core::trace::Body::Record(r) => Some((r.point, r.layer, r.head, r.pos)),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn intact_stream_has_no_loss() {
    let frames = intact_frames_cached();
    let (runs, report) = decode_stream(&frames.concat());
    assert_eq!(
        (runs.len(), report.bad_frames, report.orphan_frames),
        (1, 0, 0)
    );
    let l = &runs[0].loss;
    assert!(
        l.end_seen && l.missing_records.is_empty() && l.lost_frames == 0 && l.duplicate_frames == 0
    );
    // Every hook point of a 1-layer LN model, 6 positions.
    assert_eq!(runs[0].positions(), 6);
    assert!(runs[0].records.len() > 100);
}

#[test]
fn each_kind_of_damage_is_reported() {
    let frames = intact_frames_cached();
    let n = frames.len();
    // A duplicated frame is kept once and counted.
    let mut dup = frames.clone();
    dup.insert(5, frames[5].clone());
    let (runs, _) = decode_stream(&dup.concat());
    assert_eq!(runs[0].loss.duplicate_frames, 1);
    assert!(runs[0].loss.missing_records.is_empty());
    // A lost frame in the middle is one lost frame and names the record.
    let mut lost = frames.clone();
    let at = (n / 2..n)
        .find(|&i| records_by_frame(frames)[i].is_some())
        .unwrap();
    let gone = records_by_frame(frames)[at].unwrap();
    lost.remove(at);
    let (runs, _) = decode_stream(&lost.concat());
    assert_eq!(runs[0].loss.lost_frames, 1);
    let listed: Vec<String> = runs[0]
        .loss
        .missing_records
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert_eq!(listed, vec![describe(&gone)]);
    assert_eq!(runs[0].loss.missing_count, 1);
    // A corrupted byte costs that frame only.
    let mut bytes = frames.concat();
    let at = frames[..n / 3].iter().map(|f| f.len()).sum::<usize>() + 3;
    bytes[at] ^= 0x40;
    let (runs, report) = decode_stream(&bytes);
    assert_eq!(report.bad_frames, 1);
    assert_eq!(runs[0].loss.missing_records.len(), 1);
    // A corrupted delimiter merges two frames: both are lost, neither is half-believed.
    let mut merged = frames.clone();
    let last = merged[0].len() - 1;
    merged[0][last] = 0x01;
    let (runs, report) = decode_stream(&merged.concat());
    assert!(
        runs.is_empty(),
        "a header merged with the next frame was believed"
    );
    assert_eq!(report.bad_frames, 1);
    // A truncated stream: the end frame is missing, and so is the rest.
    let bytes = frames.concat();
    let (runs, _) = decode_stream(&bytes[..bytes.len() * 2 / 3]);
    assert!(!runs[0].loss.end_seen);
    assert!(!runs[0].records.is_empty());
    // Reordered frames decode to the same records, even one that overtook the header.
    let mut swapped = frames.clone();
    swapped.swap(10, 20);
    assert_eq!(records(&swapped.concat()), records(&frames.concat()));
    let mut early = frames.clone();
    let overtaking = early.remove(10);
    early.insert(0, overtaking);
    let (runs, report) = decode_stream(&early.concat());
    assert_eq!(report.orphan_frames, 0);
    assert!(runs[0].loss.missing_records.is_empty());
    assert_eq!(records(&early.concat()), records(&frames.concat()));
}

// ---- Crafted frames with valid CRCs (issue #11): believed only if a recorder of the
// run could have written them. ----

use tinylens_core::probe::{Precision, Probe};
use tinylens_core::HookPoint;
use tinylens_tests::fuzz_targets::craft;

/// A one-position run recording `hook_embed`, `blocks.*.attn.hook_z` and
/// `blocks.*.ln1.hook_scale:int8`, with `extra` frames before its end frame.
fn run_with(
    extra: &[Vec<u8>],
) -> (
    Vec<tinylens_host::trace::Run>,
    tinylens_host::trace::StreamReport,
) {
    let mut int8 = Probe::all(HookPoint::Ln1Scale);
    int8.precision = Precision::Int8;
    let probes = [Probe::all(HookPoint::Embed), Probe::all(HookPoint::Z), int8];
    let mut frames = vec![
        craft::header(1, 0xabcd, craft::small_config(), &probes),
        craft::token(1, 1, 0, 3),
        craft::record_f32(1, 2, (HookPoint::Embed, 0, None, 0), &[1.0, 2.0, 3.0, 4.0]),
    ];
    let mut seq = 3;
    for f in extra {
        frames.push(f.clone());
        seq += 1;
    }
    frames.push(craft::end(1, seq, 1, 0));
    decode_stream(&frames.concat())
}

#[test]
fn hook_embed_with_a_layer_or_a_head_is_not_believed() {
    let embed = [9.0f32; 4];
    for (layer, head) in [(9, None), (1, None), (0, Some(0)), (0, Some(1))] {
        let (runs, report) = run_with(&[craft::record_f32(
            1,
            3,
            (HookPoint::Embed, layer, head, 0),
            &embed,
        )]);
        assert_eq!(report.bad_frames, 1, "layer {layer} head {head:?}");
        let r = &runs[0];
        assert_eq!(
            r.records[&(HookPoint::Embed, 0, None, 0)],
            vec![1.0, 2.0, 3.0, 4.0]
        );
        assert_eq!(r.cache()["hook_embed"].1, vec![1.0, 2.0, 3.0, 4.0]);
        // hook_embed arrived; the 2 x 2 hook_z and 2 ln1 scales did not.
        assert_eq!(r.loss.missing_count, 6);
        assert!(!r
            .loss
            .missing_records
            .iter()
            .any(|m| m.point == HookPoint::Embed));
    }
}

#[test]
fn records_of_the_wrong_width_or_head_are_bad_frames_and_listed_missing() {
    let site = (HookPoint::Z, 1, Some(1), 0);
    for values in [&[1.0f32][..], &[1.0, 2.0, 3.0], &[]] {
        let (runs, report) = run_with(&[craft::record_f32(1, 3, site, values)]);
        assert_eq!(report.bad_frames, 1, "{} values", values.len());
        let r = &runs[0];
        assert!(!r.records.contains_key(&site));
        let listed: Vec<String> = r
            .loss
            .missing_records
            .iter()
            .map(|m| m.to_string())
            .collect();
        assert!(
            listed.contains(&"blocks.1.attn.hook_z[1]@0".to_string()),
            "{listed:?}"
        );
        assert_eq!(r.loss.missing_count, 6);
    }
    // A head past n_heads, a hook_z without a head, an unselected hook, another precision.
    for (site, precision) in [
        ((HookPoint::Z, 0, Some(2), 0), Precision::F32),
        ((HookPoint::Z, 0, None, 0), Precision::F32),
        ((HookPoint::ResidPre, 0, None, 0), Precision::F32),
        ((HookPoint::Z, 0, Some(0), 0), Precision::F16),
    ] {
        let data = vec![0x3c; 2 * precision.bytes_per_value()];
        let (runs, report) = run_with(&[craft::record(1, 3, site, precision, 1.0, &data)]);
        assert_eq!(report.bad_frames, 1, "{site:?} {precision:?}");
        assert_eq!(runs[0].records.len(), 1);
    }
    // The right width is believed.
    let (runs, report) = run_with(&[craft::record_f32(1, 3, site, &[1.0, 2.0])]);
    assert_eq!(report.bad_frames, 0);
    assert_eq!(runs[0].records[&site], vec![1.0, 2.0]);
    assert_eq!(runs[0].loss.missing_count, 5);
}

#[test]
fn int8_records_need_a_finite_scale() {
    let site = (HookPoint::Ln1Scale, 0, None, 0);
    for scale in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1.0] {
        let (runs, report) = run_with(&[craft::record(1, 3, site, Precision::Int8, scale, &[5])]);
        assert_eq!(report.bad_frames, 1, "scale {scale}");
        assert!(!runs[0].records.contains_key(&site));
    }
    let (runs, report) = run_with(&[craft::record(1, 3, site, Precision::Int8, 0.5, &[6])]);
    assert_eq!(report.bad_frames, 0);
    assert_eq!(runs[0].records[&site], vec![3.0]);
}

#[test]
fn runs_sharing_an_id_with_different_headers_are_never_merged() {
    let probes = [Probe::all(HookPoint::Embed)];
    let cfg = craft::small_config();
    let a = |seq, v: f32| {
        craft::record_f32(5, seq, (HookPoint::Embed, 0, None, seq as u16 - 1), &[v; 4])
    };
    // Two recorders, models 0xaaaa and 0xbbbb, both numbering their run 5, interleaved.
    let stream = [
        craft::header(5, 0xaaaa, cfg, &probes),
        craft::header(5, 0xbbbb, cfg, &probes),
        a(1, 1.0),
        a(1, 2.0),
        a(2, 1.0),
        a(2, 2.0),
        craft::end(5, 3, 2, 2),
        craft::end(5, 3, 2, 2),
    ]
    .concat();
    let (runs, _) = decode_stream(&stream);
    assert_eq!(runs.len(), 2, "the two headers are two runs");
    assert_eq!((runs[0].model_crc, runs[1].model_crc), (0xaaaa, 0xbbbb));
    for r in &runs {
        assert!(
            r.loss.shared_id,
            "run of model {:08x} not marked",
            r.model_crc
        );
        assert!(!r.loss.is_complete());
    }
    // Frames of one run with the same number but other content are conflicts, not
    // duplicates.
    let stream = [
        craft::header(5, 0xaaaa, cfg, &probes),
        a(1, 1.0),
        a(1, 2.0),
        a(1, 1.0),
        craft::end(5, 2, 1, 1),
    ]
    .concat();
    let (runs, _) = decode_stream(&stream);
    assert_eq!(runs.len(), 1);
    let l = &runs[0].loss;
    assert_eq!((l.duplicate_frames, l.conflicting_frames), (1, 1));
    assert!(!l.is_complete());
    // The same header twice is a duplicate of one run.
    let stream = [
        craft::header(5, 0xaaaa, cfg, &probes),
        craft::header(5, 0xaaaa, cfg, &probes),
        a(1, 1.0),
        craft::end(5, 2, 1, 1),
    ]
    .concat();
    let (runs, _) = decode_stream(&stream);
    assert_eq!(runs.len(), 1);
    assert!(runs[0].loss.is_complete());
    assert_eq!(runs[0].loss.duplicate_frames, 1);
}

#[test]
fn a_54_byte_trace_is_counted_not_enumerated() {
    let bomb = craft::resid_bomb();
    assert_eq!(bomb.len(), 54);
    let (runs, report) = decode_stream(&bomb);
    assert_eq!((runs.len(), report.bad_frames), (1, 0));
    let l = &runs[0].loss;
    assert_eq!(l.missing_count, 255 * 16384);
    assert_eq!(
        l.missing_records.len(),
        tinylens_host::trace::MAX_MISSING_LISTED
    );
    assert_eq!(
        l.missing_records[0].to_string(),
        "blocks.0.hook_resid_pre@0..16384"
    );
    // The cache is described, not built: 255 arrays of [16384, 64].
    use tinylens_host::export::Arrays;
    let view = runs[0].cache_view(true);
    let list = view.list();
    assert_eq!(list.len(), 256);
    assert_eq!(list[0].1, vec![16384, 64]);
    // Eight of them in 432 bytes: eight runs, each counted the same way.
    let eight: Vec<u8> = (0..8).flat_map(|_| craft::resid_bomb()).collect();
    let (runs, _) = decode_stream(&eight);
    assert_eq!(runs.len(), 8);
}

#[test]
fn the_streaming_decoder_gives_the_same_result_for_any_split() {
    use tinylens_host::trace::{Decoder, Keep};
    let bytes = intact_frames_cached().concat();
    let whole = records(&bytes);
    for step in [1, 2, 7, 254, 255, 1000, bytes.len()] {
        let mut d = Decoder::new(Keep::All);
        let mut events = 0;
        for piece in bytes.chunks(step) {
            d.push(piece, &mut |_, _| events += 1);
        }
        let (runs, report) = d.finish();
        assert_eq!(report.bad_frames, 0, "step {step}");
        assert!(runs[0].loss.is_complete());
        assert!(events > runs[0].records.len());
        let got: BTreeMap<Key, Vec<u32>> = runs[0]
            .records
            .iter()
            .map(|(k, v)| (*k, v.iter().map(|x| x.to_bits()).collect()))
            .collect();
        assert_eq!(got, whole, "step {step}");
    }
    // Keeping one run of several: the others are counted, not kept.
    let two = [bytes.clone(), bytes.clone()].concat();
    let mut d = Decoder::new(Keep::Only(1));
    d.push(&two, &mut |_, _| {});
    assert!(d.run(0).is_none() && d.run_ended(1));
    let (runs, report) = d.finish();
    assert_eq!((runs.len(), report.runs), (1, 2));
}

#[test]
fn frames_waiting_for_a_header_are_bounded() {
    use tinylens_host::trace::{Decoder, Keep};
    let frames = intact_frames_cached();
    // Endless frames of runs whose header never comes (ids 1000..): the oldest are
    // dropped as orphans once 10 kB wait; the run whose header comes is whole.
    let mut d = Decoder::with_pending_limit(Keep::All, 10_000);
    let orphan = |id: u32| craft::record_f32(id, 1, (HookPoint::Embed, 0, None, 0), &[1.0; 32]);
    for i in 0..2000 {
        d.push(&orphan(1000 + i % 7), &mut |_, _| {});
    }
    // Already dropped while streaming (each frame is ~150 bytes: ~66 are held).
    assert!(
        d.report().orphan_frames > 1900,
        "{}",
        d.report().orphan_frames
    );
    let early = frames[3].clone();
    d.push(&early, &mut |_, _| {});
    for f in frames {
        d.push(f, &mut |_, _| {});
    }
    let (runs, report) = d.finish();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].loss.is_complete());
    assert_eq!(runs[0].loss.duplicate_frames, 1);
    assert_eq!(report.orphan_frames, 2000);
}

#[test]
fn a_chunk_longer_than_any_frame_is_skipped_not_kept() {
    use tinylens_host::trace::{Decoder, Keep, MAX_FRAME_BYTES};
    let mut d = Decoder::new(Keep::All);
    // Noise without a delimiter, longer than any frame, pushed in pieces.
    let noise = vec![0x55u8; 1 << 16];
    for _ in 0..(MAX_FRAME_BYTES >> 16) + 2 {
        d.push(&noise, &mut |_, _| {});
    }
    d.push(&[0], &mut |_, _| {});
    for f in intact_frames_cached() {
        d.push(f, &mut |_, _| {});
    }
    let (runs, report) = d.finish();
    assert_eq!(report.bad_frames, 1);
    assert!(runs[0].loss.is_complete());
}
