//! The fuzz targets' bodies, shared by the cargo-fuzz crates (`core/fuzz`,
//! `host-tools/fuzz`) and the stable regression test `tests/tests/fuzz_regressions.rs`,
//! so that the two can never diverge. Each function takes the fuzzer's bytes and must
//! not panic (nor hang, nor allocate without bound) whatever they are; errors are fine.
//! Where a result can be checked cheaply (a blob that loads runs and records a trace
//! that decodes to every record; a probe set round-trips), it is asserted.
//!
//! [`TARGETS`] lists every target by the name of its fuzz binary and of its corpus
//! directory under `tests/fuzz_corpus/`.

use std::sync::OnceLock;

use tinylens_core::blob;
use tinylens_core::intervene::{Ablation, AblationMode};
use tinylens_core::probe::{Precision, Probe, ProbeSet, MAX_PROBES};
use tinylens_core::sample::Rng;
use tinylens_core::trace::{decode_frame, frame_buffer_len, Body, Recorder};
use tinylens_core::{
    Config, Error, HookPoint, Model, Normalization, Positional, Session, Site, StorageKind,
};
use tinylens_host::weights::ModelConfig;
use tinylens_host::{convert, run, tl, trace};

/// A fuzz target: its name (fuzz binary and corpus directory) and body.
pub type Target = (&'static str, fn(&[u8]));

/// Every fuzz target.
pub const TARGETS: [Target; 7] = [
    ("blob", blob),
    ("trace_frame", trace_frame),
    ("trace_stream", trace_stream),
    ("probe_pattern", probe_pattern),
    ("probe_bytes", probe_bytes),
    ("tl_config", tl_config),
    ("tl_safetensors", tl_safetensors),
];

/// Largest workspace (f32 words) the blob target allocates to run a model that loaded
/// (64 MiB); larger configs are only loaded, not run. The core itself accepts up to 1 GiB.
pub const MAX_RUN_WORKSPACE: usize = 1 << 24;

// ---------------------------------------------------------------------------------------
// Model blobs
// ---------------------------------------------------------------------------------------

/// `Model::from_bytes` on the bytes as they are, then with the stored length and CRC made
/// right (`blob::write::finish`), so that mutations get past the checksum into the table
/// and tensor checks. A blob that loads is run ([`exercise_model`]).
pub fn blob(data: &[u8]) {
    let seed = u64::from(blob::CRC.checksum(data));
    let _ = exercise_model(data, seed);
    if data.len() >= blob::HEADER_LEN && u32::try_from(data.len()).is_ok() {
        let mut fixed = data.to_vec();
        blob::write::finish(&mut fixed);
        let _ = exercise_model(&fixed, seed);
    }
}

/// Loads a blob and, when it loads, checks what a loaded model promises: every tensor
/// and token string is readable, the host reads it back into dense weights, and a
/// session runs a few steps with every hook recorded and an ablation, whose trace
/// decodes to exactly the records the recorder wrote. Errors (a non-finite logit, an
/// out-of-range token) are fine; panics are not.
pub fn exercise_model(bytes: &[u8], seed: u64) -> Result<(), Error> {
    let model = Model::from_bytes(bytes)?;
    let cfg = *model.config();
    assert_eq!(blob::peek_config(bytes), Ok(cfg));
    assert!(cfg.validate().is_ok());
    for i in 0..model.tensor_count() {
        let t = model.tensor_at(i);
        if t.rows > 0 && t.kind != StorageKind::Bytes {
            let mut row = vec![0.0; t.cols];
            t.dequantize_row(t.rows - 1, &mut row);
        }
    }
    if model.has_vocab() {
        for t in [0, cfg.d_vocab - 1, cfg.d_vocab, u32::MAX] {
            assert_eq!(model.token_str(t).is_some(), t < cfg.d_vocab);
        }
    }
    let needed = cfg.workspace_len();
    if needed > MAX_RUN_WORKSPACE {
        return Ok(());
    }
    let dense = convert::weights_from_model(&model);
    assert_eq!(dense.layers.len(), cfg.n_layers as usize);
    let _ = convert::vocab_of(&model);

    let mut ws = vec![0.0f32; needed];
    assert!(matches!(
        Session::new(&model, &mut ws[..needed - 1]),
        Err(Error::BufferTooSmall { .. })
    ));
    let mut session = Session::new(&model, &mut ws)?;
    let mut rng = Rng::new(seed);
    let probes = all_probes(&cfg, seed);
    let mut frame_buf = vec![0u8; frame_buffer_len(&cfg)];
    let mut trace_bytes = Vec::new();
    let sink = |b: &[u8]| -> Result<(), Error> {
        trace_bytes.extend_from_slice(b);
        Ok(())
    };
    let heads = [(0u16, 0u16)];
    let ablation = Ablation::new(&cfg, &heads, AblationMode::Scale(0.5))?;
    let mut recorder = Recorder::begin(&model, &probes, sink, &mut frame_buf)?;
    let steps = (cfg.n_ctx as usize).min(3);
    let mut all_finite = true;
    for _ in 0..steps {
        let token = (rng.next_u64() % u64::from(cfg.d_vocab)) as u32;
        let pos = session.pos();
        match session.step_with(token, &mut (ablation, &mut recorder)) {
            Ok(logits) => {
                assert_eq!(logits.len(), cfg.d_vocab_out as usize);
                assert!(logits.iter().all(|v| v.is_finite()));
                assert_eq!(session.pos(), pos + 1);
            }
            Err(Error::NonFiniteLogits { .. }) => {
                assert_eq!(session.pos(), pos);
                all_finite = false;
            }
            Err(e) => panic!("step failed with {e:?}"),
        }
    }
    let bad = session.step(cfg.d_vocab);
    assert!(matches!(bad, Err(Error::TokenOutOfRange { .. })));
    let (summary, _) = recorder.finish();
    assert_eq!(summary.error, None, "recording failed");
    assert_eq!(summary.dropped, 0);
    let (runs, report) = trace::decode_stream(&trace_bytes);
    assert_eq!(report.bad_frames, 0);
    assert_eq!(runs.len(), 1);
    if all_finite {
        // (A refused position is stepped again, recording its sites twice.)
        assert_eq!(runs[0].records.len(), summary.records as usize);
        assert!(runs[0].loss.missing_records.is_empty());
    }
    let _ = runs[0].cache();

    // Fill the context: the step after it is refused.
    session.reset();
    for _ in 0..cfg.n_ctx.min(64) {
        let _ = session.step(0);
    }
    if session.pos() == cfg.n_ctx as usize {
        assert_eq!(
            session.step(0),
            Err(Error::ContextFull { n_ctx: cfg.n_ctx })
        );
    }
    Ok(())
}

/// A probe for every hook point the model has, at a precision chosen by `seed`.
fn all_probes(cfg: &Config, seed: u64) -> ProbeSet {
    let precision = [Precision::F32, Precision::F16, Precision::Int8][(seed % 3) as usize];
    let mut probes = ProbeSet::new();
    for point in HookPoint::ALL {
        if point.needs_ln() && cfg.normalization == Normalization::None {
            continue;
        }
        probes
            .push(Probe {
                precision,
                ..Probe::all(point)
            })
            .expect("17 probes fit");
    }
    probes
}

// ---------------------------------------------------------------------------------------
// Traces
// ---------------------------------------------------------------------------------------

/// `decode_frame` on the bytes as a raw frame, then on the bytes taken as a frame's
/// content with a correct CRC appended and COBS applied, so that mutations reach the
/// postcard decoding of every frame type.
pub fn trace_frame(data: &[u8]) {
    let mut raw = data.to_vec();
    if let Ok(f) = decode_frame(&mut raw) {
        inspect_frame(&f.body);
    }
    let mut framed = frame_of(data);
    framed.pop(); // the 0x00 delimiter
    if let Ok(f) = decode_frame(&mut framed) {
        inspect_frame(&f.body);
    }
}

fn inspect_frame(body: &Body<'_>) {
    match body {
        Body::Record(r) => {
            let mut v = vec![0.0; r.len()];
            r.values_into(&mut v);
            let _ = r.site();
        }
        Body::Header(h) => {
            let _ = h.config.validate();
            for p in &h.probes {
                let _ = p.validate(&h.config);
            }
        }
        _ => {}
    }
}

/// `content ++ crc32(content)`, COBS-encoded, with its 0x00 delimiter: a well-formed frame
/// around any content.
pub fn frame_of(content: &[u8]) -> Vec<u8> {
    let mut raw = content.to_vec();
    raw.extend_from_slice(&blob::CRC.checksum(content).to_le_bytes());
    let mut out = cobs_encode(&raw);
    out.push(0);
    out
}

/// Consistent Overhead Byte Stuffing (the frames' framing), without the delimiter.
pub fn cobs_encode(src: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    let (mut code_at, mut code) = (0usize, 1u8);
    for &b in src {
        if b != 0 {
            out.push(b);
            code += 1;
        }
        if b == 0 || code == 0xff {
            out[code_at] = code;
            code_at = out.len();
            out.push(0);
            code = 1;
        }
    }
    out[code_at] = code;
    out
}

/// The host's trace decoder on the bytes as a stream, then on the bytes split at `0x00`
/// with each piece made a well-formed frame ([`frame_of`]).
pub fn trace_stream(data: &[u8]) {
    decode_all(data);
    let framed: Vec<u8> = data.split(|b| *b == 0).flat_map(frame_of).collect();
    decode_all(&framed);
}

/// Values of a cache the target writes out in full (16 MiB of f32); larger ones (up to
/// the decoder's 2^28) are only described, which is what bounds the target's memory.
const MAX_EXPORTED_VALUES: usize = 1 << 22;

/// `decode_stream`, the same through the streaming [`trace::Decoder`] in pieces (the same
/// runs and counts for any split), then every run's loss, token list and cache export.
fn decode_all(stream: &[u8]) {
    use tinylens_host::export::Arrays;
    let (runs, report) = trace::decode_stream(stream);
    assert_eq!(report.runs, runs.len());
    let step = 1 + stream.first().copied().unwrap_or(0) as usize * 3;
    let mut d = trace::Decoder::new(trace::Keep::All);
    for piece in stream.chunks(step) {
        d.push(piece, &mut |_, _| {});
    }
    d.push(&[0], &mut |_, _| {});
    let (pieced, r2) = d.finish();
    assert_eq!(
        (r2.frames_ok, r2.bad_frames, r2.orphan_frames, pieced.len()),
        (
            report.frames_ok,
            report.bad_frames,
            report.orphan_frames,
            runs.len()
        )
    );
    for (run, p) in runs.iter().zip(&pieced) {
        assert_eq!(run.records.len(), p.records.len());
        assert_eq!(run.loss.missing_count, p.loss.missing_count);
    }
    for run in &runs {
        let tokens = run.token_list();
        assert_eq!(tokens.len(), run.positions());
        assert!(run.positions() <= run.config.n_ctx as usize);
        let l = &run.loss;
        assert!(l.missing_records.len() <= trace::MAX_MISSING_LISTED);
        assert!(l.missing_count <= run.expected_count());
        let listed: u64 = l
            .missing_records
            .iter()
            .map(|m| m.sites().count() as u64)
            .sum();
        assert!(listed <= l.missing_count);
        let positions = run.positions();
        for m in l.missing_records.iter().take(4) {
            let (a, b) = m.positions;
            assert!(u32::from(a) < b && b as usize <= positions);
            for k in m.sites().take(3) {
                assert!(run.is_expected(&k) && !run.records.contains_key(&k));
            }
        }
        let view = run.cache_view(true);
        let list = view.list();
        let total: usize = list.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        if total <= MAX_EXPORTED_VALUES {
            for (i, (_, shape)) in list.iter().enumerate() {
                let mut n = 0;
                view.emit(i, &mut |piece| {
                    n += piece.len();
                    Ok(())
                })
                .unwrap();
                assert_eq!(n, shape.iter().product::<usize>());
            }
            tinylens_host::export::write_safetensors(&view, &mut std::io::sink()).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Probe sets
// ---------------------------------------------------------------------------------------

/// Small configs of each normalization and positional kind, to validate probes against.
fn configs() -> [Config; 3] {
    let base = Config {
        n_layers: 2,
        n_heads: 4,
        d_model: 16,
        d_head: 4,
        d_vocab: 10,
        d_vocab_out: 10,
        n_ctx: 8,
        normalization: Normalization::LN,
        positional: Positional::Standard,
        eps: 1e-5,
        attn_scale: 2.0,
    };
    [
        base,
        Config {
            normalization: Normalization::None,
            ..base
        },
        Config {
            n_layers: 1,
            n_heads: 1,
            n_ctx: 1,
            normalization: Normalization::LNPre,
            positional: Positional::Shortformer,
            ..base
        },
    ]
}

/// Every line of the bytes (as UTF-8, lossily) through `ProbeSet::add_pattern` (at the
/// core's and the host's capacity) and the host's `parse_hook_name`; a set that results
/// is validated, matched against sites, and round-trips through its compact form.
pub fn probe_pattern(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut small: ProbeSet<MAX_PROBES> = ProbeSet::new();
    let mut large: ProbeSet<{ run::HOST_PROBES }> = ProbeSet::new();
    for line in text.split('\n') {
        let before = small.len();
        if small.add_pattern(line).is_ok() {
            assert!(small.len() > before);
        }
        let _ = large.add_pattern(line);
        let _ = run::parse_hook_name(line);
    }
    check_probe_set(&small);
    check_probe_set(&large);
}

/// `ProbeSet::from_bytes` on the bytes; a set that decodes is validated, matched, and
/// round-trips.
pub fn probe_bytes(data: &[u8]) {
    if let Ok(ps) = ProbeSet::<MAX_PROBES>::from_bytes(data) {
        check_probe_set(&ps);
    }
    if let Ok(ps) = ProbeSet::<{ run::HOST_PROBES }>::from_bytes(data) {
        check_probe_set(&ps);
    }
}

fn check_probe_set<const N: usize>(ps: &ProbeSet<N>) {
    for cfg in configs() {
        let _ = ps.validate(&cfg);
    }
    let _ = ps.point_mask();
    for point in HookPoint::ALL {
        for (layer, head, pos) in [
            (0, None, 0),
            (1, Some(3), 7),
            (u16::MAX, Some(u16::MAX), u16::MAX),
        ] {
            let _ = ps.select(&Site {
                point,
                layer,
                head,
                pos,
            });
        }
    }
    let mut buf = vec![0u8; 16 + 24 * N];
    let bytes = ps.to_bytes(&mut buf).expect("buffer holds any probe set");
    assert_eq!(&ProbeSet::<N>::from_bytes(bytes).expect("round trip"), ps);
}

// ---------------------------------------------------------------------------------------
// TransformerLens import
// ---------------------------------------------------------------------------------------

/// `tl::parse_config` on the bytes (as UTF-8); a config that parses round-trips through
/// `config_to_json`, and converting it to the core's config never panics.
pub fn tl_config(data: &[u8]) {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = tl::parse_config(json) {
        let back = tl::parse_config(&tl::config_to_json(&cfg)).expect("round trip parses");
        assert_eq!(back, cfg);
        let _ = convert::core_config(&cfg);
    }
}

/// Configs the safetensors target reads state dicts for: the three fixtures and tiny
/// models of every normalization and positional kind.
pub fn tl_configs() -> &'static [ModelConfig] {
    static CONFIGS: OnceLock<Vec<ModelConfig>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let mut v: Vec<ModelConfig> = [
            include_str!("fixtures/attn1_ln/config.json"),
            include_str!("fixtures/attn2_shortformer_ln/config.json"),
            include_str!("fixtures/attn2_standard_noln/config.json"),
        ]
        .iter()
        .map(|j| tl::parse_config(j).expect("fixture config"))
        .collect();
        for norm in ["null", "\"LN\"", "\"LNPre\""] {
            for pos in ["standard", "shortformer"] {
                let json = format!(
                    r#"{{"attn_only": true, "n_layers": 1, "d_model": 4, "d_head": 2, "n_heads": 2,
                        "d_vocab": 3, "d_vocab_out": 3, "n_ctx": 2, "normalization_type": {norm},
                        "positional_embedding_type": "{pos}"}}"#
                );
                v.push(tl::parse_config(&json).expect("tiny config"));
            }
        }
        v
    })
}

/// The first byte picks a config from [`tl_configs`] (low four bits), a storage kind
/// (bits 4-5) and whether to apply every TransformerLens processing (bit 7); the rest is
/// read by `tl::load_state_dict` for the config. Weights that load are processed and
/// written to a blob, which must load.
pub fn tl_safetensors(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let configs = tl_configs();
    let cfg = &configs[(pick & 0x0f) as usize % configs.len()];
    let Ok(mut w) = tl::load_state_dict(rest, cfg) else {
        return;
    };
    let kinds = [
        StorageKind::F32,
        StorageKind::F16,
        StorageKind::Int8,
        StorageKind::INT4,
    ];
    let kind = kinds[(pick >> 4) as usize & 3];
    let processing = if pick & 0x80 != 0 {
        tl::Processing::ALL
    } else {
        tl::Processing::NONE
    };
    let Ok(p) = tl::process(&mut w, processing) else {
        return;
    };
    if let Ok((bytes, _)) = convert::write_blob(&w, convert::QuantPlan::for_kind(kind), p, None) {
        Model::from_bytes(&bytes).expect("written blob loads");
    }
}

// ---------------------------------------------------------------------------------------
// Crafted frames
// ---------------------------------------------------------------------------------------

/// Frames with any content and a valid CRC, as a hostile or broken sender could write
/// them (the wire format of `core/TRACE_FORMAT.md`, field for field): for the
/// regression tests of content the decoder must not believe.
pub mod craft {
    use serde::Serialize;
    use tinylens_core::probe::{Precision, Probe};
    use tinylens_core::{Config, HookPoint};

    #[derive(Serialize)]
    struct Frame<'a> {
        run: u32,
        seq: u32,
        body: Body<'a>,
    }

    #[derive(Serialize)]
    enum Body<'a> {
        Header {
            format: u16,
            model_crc: u32,
            config: Config,
            processing: u32,
            probes: &'a [Probe],
        },
        Token {
            pos: u16,
            token: u32,
        },
        Record {
            point: HookPoint,
            layer: u16,
            head: Option<u16>,
            pos: u16,
            precision: Precision,
            scale: f32,
            data: &'a [u8],
        },
        End {
            positions: u32,
            records: u32,
            dropped: u32,
        },
    }

    fn frame(run: u32, seq: u32, body: Body<'_>) -> Vec<u8> {
        let content = postcard::to_allocvec(&Frame { run, seq, body }).expect("serializes");
        super::frame_of(&content)
    }

    /// A 2-layer, 2-head LayerNorm config with 4 positions, for hand-made runs.
    pub fn small_config() -> Config {
        Config {
            n_layers: 2,
            n_heads: 2,
            d_model: 4,
            d_head: 2,
            d_vocab: 10,
            d_vocab_out: 10,
            n_ctx: 4,
            normalization: tinylens_core::Normalization::LN,
            positional: tinylens_core::Positional::Standard,
            eps: 1e-5,
            attn_scale: 1.0,
        }
    }

    /// A header frame (seq 0, format 1).
    pub fn header(run: u32, model_crc: u32, config: Config, probes: &[Probe]) -> Vec<u8> {
        let body = Body::Header {
            format: 1,
            model_crc,
            config,
            processing: 0,
            probes,
        };
        frame(run, 0, body)
    }

    pub fn token(run: u32, seq: u32, pos: u16, token: u32) -> Vec<u8> {
        frame(run, seq, Body::Token { pos, token })
    }

    /// A record frame of f32 `values`.
    pub fn record_f32(
        run: u32,
        seq: u32,
        site: (HookPoint, u16, Option<u16>, u16),
        values: &[f32],
    ) -> Vec<u8> {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        record(run, seq, site, Precision::F32, 1.0, &data)
    }

    /// A record frame of raw payload bytes at `precision` with `scale`.
    pub fn record(
        run: u32,
        seq: u32,
        site: (HookPoint, u16, Option<u16>, u16),
        precision: Precision,
        scale: f32,
        data: &[u8],
    ) -> Vec<u8> {
        let (point, layer, head, pos) = site;
        let body = Body::Record {
            point,
            layer,
            head,
            pos,
            precision,
            scale,
            data,
        };
        frame(run, seq, body)
    }

    pub fn end(run: u32, seq: u32, positions: u32, records: u32) -> Vec<u8> {
        let body = Body::End {
            positions,
            records,
            dropped: 0,
        };
        frame(run, seq, body)
    }

    /// The 54-byte allocation bomb of issue #11: a valid header selecting every position
    /// of `blocks.*.hook_resid_pre` for a 255-layer, 16384-context, d_model 64 model
    /// (just under the per-header limits: 2^22 - 1 records, 2^28 - 2^20 values) and an
    /// end frame claiming all 16384 positions.
    pub fn resid_bomb() -> Vec<u8> {
        let config = Config {
            n_layers: 255,
            n_heads: 1,
            d_model: 64,
            d_head: 1,
            d_vocab: 200,
            d_vocab_out: 2,
            n_ctx: 16384,
            normalization: tinylens_core::Normalization::None,
            positional: tinylens_core::Positional::Standard,
            eps: 0.0,
            attn_scale: 1.0,
        };
        let probes = [Probe::all(HookPoint::ResidPre)];
        [header(7, 0, config, &probes), end(7, 1, 16384, 0)].concat()
    }
}

/// The crafted inputs of the regression corpus (`tests/fuzz_corpus/<target>/<name>`),
/// made here so that `fuzz_regressions` can check the committed files are these bytes.
pub fn crafted_corpus() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    use tinylens_core::probe::Probe;
    let eight: Vec<u8> = (0..8).flat_map(|_| craft::resid_bomb()).collect();
    let cfg = craft::small_config();
    let probes = [Probe::all(HookPoint::Embed), Probe::all(HookPoint::Z)];
    let embed = |seq, layer, head, v: f32| {
        craft::record_f32(1, seq, (HookPoint::Embed, layer, head, 0), &[v; 4])
    };
    let believed = [
        craft::header(1, 0xabcd, cfg, &probes),
        craft::token(1, 1, 0, 3),
        embed(2, 0, None, 1.0),
        embed(3, 9, None, 9.0),
        embed(4, 0, Some(1), 9.0),
        craft::record_f32(1, 5, (HookPoint::Z, 1, Some(1), 0), &[1.0]),
        craft::record(
            1,
            6,
            (HookPoint::Z, 0, Some(0), 0),
            Precision::Int8,
            f32::NAN,
            &[1, 2],
        ),
        craft::end(1, 7, 1, 5),
    ]
    .concat();
    let shared = [
        craft::header(5, 0xaaaa, cfg, &probes),
        craft::header(5, 0xbbbb, cfg, &probes),
        craft::record_f32(5, 1, (HookPoint::Embed, 0, None, 0), &[1.0; 4]),
        craft::record_f32(5, 1, (HookPoint::Embed, 0, None, 0), &[2.0; 4]),
        craft::end(5, 2, 1, 1),
        craft::end(5, 2, 1, 1),
    ]
    .concat();
    vec![
        ("trace_stream", "crafted-resid-bomb-54", craft::resid_bomb()),
        ("trace_stream", "crafted-resid-bomb-8x", eight),
        ("trace_stream", "crafted-believability", believed),
        ("trace_stream", "crafted-shared-run-id", shared),
    ]
}
