//! The host engine is the device's forward pass, bit for bit: blocks of positions,
//! batches over threads, SIMD kernels and in-memory caches give the logits, the trace
//! bytes and the cache that stepping one token at a time with the core's portable
//! kernels gives — for every storage kind, with hooks on and off, with interventions,
//! for any thread count.

use tinylens_core::intervene::HeadRef;
use tinylens_core::probe::ProbeSet;
use tinylens_core::trace::{frame_buffer_len, Recorder};
use tinylens_core::{
    Config, Error, Model, NoHooks, Normalization, Positional, Session, StorageKind,
};
use tinylens_host::engine::{self, Engine, HostKernels, Sampling, HOST_PROBES};
use tinylens_host::export::Cache;
use tinylens_host::run::{run, AblateMode, RunOptions};
use tinylens_host::trace::decode_stream;
use tinylens_tests::*;

/// Every storage kind of a matrix; int4 at the default group of 32 (format version 1)
/// and at groups of 16 and 128 (version 2: the group stored per tensor).
const KINDS: [StorageKind; 6] = [
    StorageKind::F32,
    StorageKind::F16,
    StorageKind::Int8,
    StorageKind::INT4,
    StorageKind::Int4 {
        group: tinylens_core::Int4Group::G16,
    },
    StorageKind::Int4 {
        group: tinylens_core::Int4Group::G128,
    },
];

/// The device's schedule: one token at a time, portable kernels, a recorder live.
/// Returns every position's logits and the trace bytes.
fn stepped(
    model: &Model<'_>,
    tokens: &[u32],
    probes: &ProbeSet<HOST_PROBES>,
) -> (Vec<f32>, Vec<u8>) {
    let cfg = *model.config();
    let mut ws = vec![0.0; cfg.workspace_len()];
    let mut s = Session::new(model, &mut ws).unwrap();
    let mut bytes = Vec::new();
    let mut frame = vec![0u8; frame_buffer_len(&cfg)];
    let mut rec = Recorder::begin(
        model,
        probes,
        |b: &[u8]| -> Result<(), Error> {
            bytes.extend_from_slice(b);
            Ok(())
        },
        &mut frame,
    )
    .unwrap();
    let mut logits = Vec::new();
    for &t in tokens {
        logits.extend_from_slice(s.step_with(t, &mut rec).unwrap());
    }
    let (summary, _) = rec.finish();
    assert!(summary.error.is_none() && summary.dropped == 0);
    (logits, bytes)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn same_cache(a: &Cache, b: &Cache, what: &str) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: names"
    );
    for (name, (shape, data)) in a {
        let (s2, d2) = &b[name];
        assert_eq!(shape, s2, "{what}: {name} shape");
        assert!(bits(data) == bits(d2), "{what}: {name} values differ");
    }
}

/// Models: the three TransformerLens fixtures, and a random one large enough for the
/// SIMD kernels' full register blocks, tails and row-block threads.
fn models(kind: StorageKind) -> Vec<(String, Vec<u8>, Vec<u32>)> {
    let mut out = Vec::new();
    for name in FIXTURES {
        let reference = load_reference(name, "reference.safetensors");
        let tokens = prompts(&reference).remove(0);
        out.push((name.to_string(), blob(name, kind), tokens));
    }
    let cfg = Config {
        n_layers: 2,
        n_heads: 3,
        d_model: 72,
        d_head: 20,
        d_vocab: 600,
        d_vocab_out: 1100,
        n_ctx: 40,
        normalization: Normalization::LN,
        positional: Positional::Standard,
        eps: 1e-5,
        attn_scale: 20f32.sqrt(),
    };
    let mut rng = tinylens_core::sample::Rng::new(5);
    let tokens = (0..37).map(|_| (rng.next_u64() % 600) as u32).collect();
    out.push(("random 72x1100".into(), random_blob(&cfg, kind, 11), tokens));
    out
}

#[test]
fn run_writes_the_stepped_trace_byte_for_byte() {
    for kind in KINDS {
        for (name, blob, tokens) in models(kind) {
            let model = Model::from_bytes(&blob).unwrap();
            let all = vec!["*".to_string()];
            let probes = engine::probe_set(&model, &all).unwrap();
            let (logits, trace) = stepped(&model, &tokens, &probes);
            let out = run(
                &model,
                &RunOptions {
                    tokens: tokens.clone(),
                    probes: all,
                    ..Default::default()
                },
            )
            .unwrap();
            assert!(out.trace == trace, "{name} {kind:?}: trace bytes");
            assert!(
                bits(&out.logits.concat()) == bits(&logits),
                "{name} {kind:?}: logits"
            );
            // Hooks off: the same logits.
            let plain = run(
                &model,
                &RunOptions {
                    tokens: tokens.clone(),
                    ..Default::default()
                },
            )
            .unwrap();
            assert!(
                bits(&plain.logits.concat()) == bits(&logits),
                "{name} {kind:?}: no hooks"
            );
        }
    }
}

#[test]
fn run_with_cache_is_the_decoded_stepped_trace_for_any_thread_count() {
    for kind in KINDS {
        for (name, blob, tokens) in models(kind) {
            let model = Model::from_bytes(&blob).unwrap();
            let probes = engine::all_hooks(&model).unwrap();
            let (logits, trace) = stepped(&model, &tokens, &probes);
            let (runs, _) = decode_stream(&trace);
            let want: Cache = runs[0]
                .cache()
                .into_iter()
                .map(|(k, (mut shape, data))| {
                    shape.insert(0, 1);
                    (k, (shape, data))
                })
                .collect();
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let (got_logits, cache) = pool.install(|| {
                    Engine::new(&model)
                        .run_with_cache(std::slice::from_ref(&tokens), &[])
                        .unwrap()
                });
                let what = format!("{name} {kind:?} {threads} threads");
                assert!(bits(&got_logits) == bits(&logits), "{what}: logits");
                same_cache(&cache, &want, &what);
            }
        }
    }
}

#[test]
fn batches_blocks_kernels_and_threads_change_no_bit() {
    for kind in KINDS {
        for (name, blob, tokens) in models(kind) {
            let model = Model::from_bytes(&blob).unwrap();
            let v = model.config().d_vocab_out as usize;
            let n = tokens.len();
            // Three sequences: the prompt and two rotations of it.
            let prompts: Vec<Vec<u32>> = (0..3)
                .map(|r| {
                    let mut p = tokens.clone();
                    p.rotate_left(r * n / 3);
                    p
                })
                .collect();
            let reference: Vec<Vec<f32>> = prompts
                .iter()
                .map(|p| stepped(&model, p, &ProbeSet::new()).0)
                .collect();
            for (threads, block, kernels) in [
                (1, 1, HostKernels::portable()),
                (1, 7, HostKernels::detect()),
                (2, 64, HostKernels::detect()),
                (2, 5, HostKernels::portable()),
            ] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let engine = Engine::new(&model).with_block(block).with_kernels(kernels);
                let seqs = pool.install(|| {
                    engine
                        .run_batch(&prompts, 0, &Sampling::default(), |_| NoHooks)
                        .unwrap()
                });
                for (i, s) in seqs.iter().enumerate() {
                    assert_eq!(s.logits.len(), n * v);
                    assert!(
                        bits(&s.logits) == bits(&reference[i]),
                        "{name} {kind:?}: sequence {i}, {threads} threads, block {block}, {}",
                        kernels.name()
                    );
                }
            }
        }
    }
}

#[test]
fn interventions_and_generation_are_stepping() {
    for kind in KINDS {
        let (name, blob, tokens) = models(kind).remove(1);
        let model = Model::from_bytes(&blob).unwrap();
        let cfg = *model.config();
        let heads: Vec<(HeadRef, AblateMode)> =
            vec![((0, 1), AblateMode::Zero), ((1, 0), AblateMode::Zero)];
        let prompt = tokens[..6].to_vec();
        let opts = RunOptions {
            tokens: prompt.clone(),
            probes: vec!["blocks.*.attn.hook_pattern".into(), "logits".into()],
            ablate: heads.clone(),
            generate: cfg.n_ctx as usize - 6,
            top_k: 5,
            temperature: 0.8,
            seed: 3,
            ..Default::default()
        };
        let out = run(&model, &opts).unwrap();
        // The same by hand, stepping with the core's pieces.
        let refs: Vec<HeadRef> = heads.iter().map(|h| h.0).collect();
        let mut abl = tinylens_core::intervene::Ablation::new(
            &cfg,
            &refs,
            tinylens_core::intervene::AblationMode::Zero,
        )
        .unwrap();
        let probes = engine::probe_set(&model, &opts.probes).unwrap();
        let mut ws = vec![0.0; cfg.workspace_len()];
        let mut s = Session::new(&model, &mut ws).unwrap();
        let mut bytes = Vec::new();
        let mut frame = vec![0u8; frame_buffer_len(&cfg)];
        let mut rec = Recorder::begin(
            &model,
            &probes,
            |b: &[u8]| -> Result<(), Error> {
                bytes.extend_from_slice(b);
                Ok(())
            },
            &mut frame,
        )
        .unwrap();
        let mut rng = tinylens_core::sample::Rng::new(3);
        let mut seq = prompt.clone();
        let mut i = 0;
        while i < seq.len() {
            let logits = s.step_with(seq[i], &mut (&mut abl, &mut rec)).unwrap();
            let next = tinylens_core::sample::top_k::<64>(logits, 5, 0.8, &mut rng);
            if i + 1 == seq.len() && seq.len() < cfg.n_ctx as usize {
                seq.push(next);
            }
            i += 1;
        }
        let _ = rec.finish();
        assert_eq!(out.tokens, seq, "{name} {kind:?}: generated tokens");
        assert!(
            out.trace == bytes,
            "{name} {kind:?}: trace of an ablated, sampled run"
        );
    }
}

/// A device prefilling in blocks with a recorder live writes its records point by point
/// instead of position by position: other bytes, the same decoded cache.
#[test]
fn a_trace_recorded_live_from_blocks_decodes_to_the_stepped_cache() {
    for kind in KINDS {
        let (name, blob, tokens) = models(kind).remove(1);
        let model = Model::from_bytes(&blob).unwrap();
        let cfg = *model.config();
        let probes = engine::all_hooks(&model).unwrap();
        let (_, stepped_trace) = stepped(&model, &tokens, &probes);
        let mut ws = vec![0.0; cfg.block_workspace_len(8)];
        let mut s = Session::with_block(&model, &mut ws, 8).unwrap();
        let mut bytes = Vec::new();
        let mut frame = vec![0u8; frame_buffer_len(&cfg)];
        let mut rec = Recorder::begin(
            &model,
            &probes,
            |b: &[u8]| -> Result<(), Error> {
                bytes.extend_from_slice(b);
                Ok(())
            },
            &mut frame,
        )
        .unwrap();
        s.prefill(&tokens, &mut rec).unwrap();
        let _ = rec.finish();
        let (a, _) = decode_stream(&bytes);
        let (b, _) = decode_stream(&stepped_trace);
        same_cache(&a[0].cache(), &b[0].cache(), &format!("{name} {kind:?}"));
    }
}
