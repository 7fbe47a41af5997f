//! Criterion benches of the kernels per storage kind, at the shapes of the demo model
//! (2 layers, 4 heads, d_model 64, d_head 16, vocabulary 64, context 32), and of whole
//! forward steps of a model of that shape with random weights.
//!
//! ```sh
//! cargo bench -p tinylens-core --bench kernels            # everything
//! cargo bench -p tinylens-core --bench kernels -- matvec  # a filter
//! ```
//!
//! Timings only: nothing here checks a time.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tinylens_core::blob::{self, write, Model};
use tinylens_core::kernels::{self, Input};
use tinylens_core::probe::{Precision, ProbeSet};
use tinylens_core::quant::{quantize, Tensor};
use tinylens_core::trace::{frame_buffer_len, Recorder};
use tinylens_core::{
    Config, Error, NoHooks, Normalization, Positional, Processing, Session, StorageKind,
};

const KINDS: [StorageKind; 4] = [
    StorageKind::F32,
    StorageKind::F16,
    StorageKind::Int8,
    StorageKind::INT4,
];

/// The demo model's shape (models/demo/config.json).
const DEMO: Config = Config {
    n_layers: 2,
    n_heads: 4,
    d_model: 64,
    d_head: 16,
    d_vocab: 64,
    d_vocab_out: 64,
    n_ctx: 32,
    normalization: Normalization::LN,
    positional: Positional::Standard,
    eps: 1e-5,
    attn_scale: 4.0,
};

/// Deterministic pseudo-random values in about [-1, 1].
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor_bytes(kind: StorageKind, rows: usize, cols: usize, seed: u32) -> Vec<u8> {
    let mut buf = vec![0u8; kind.data_len(rows, cols).expect("matrix kind")];
    assert!(quantize(
        kind,
        rows,
        cols,
        &values(rows * cols, seed),
        &mut buf
    ));
    buf
}

/// A blob of `cfg`'s shape with random weights: matrices in `kind` (embeddings and
/// unembedding in int8 when `kind` is int4, as `tinylens convert` does), vectors in f32.
fn random_blob(cfg: &Config, kind: StorageKind) -> Vec<u8> {
    let n = blob::tensor_count(cfg);
    let table_end = blob::HEADER_LEN + n * blob::ENTRY_LEN;
    let mut out = vec![0u8; table_end.next_multiple_of(blob::ALIGN)];
    let version = write::version_for([kind]);
    out[..blob::HEADER_LEN].copy_from_slice(&write::header(
        cfg,
        Processing::default(),
        n as u16,
        version,
    ));
    for i in 0..n {
        let slot = blob::slot(cfg, i).expect("slot");
        let (rows, cols) = (slot.rows as usize, slot.cols as usize);
        use tinylens_core::blob::TensorId::*;
        let k = match slot.name.id {
            W_Q | W_K | W_V | W_O => kind,
            W_E | W_pos | W_U if kind.int4_group().is_some() => StorageKind::Int8,
            W_E | W_pos | W_U => kind,
            _ => StorageKind::F32,
        };
        let data = if matches!(slot.name.id, ln1_w | ln_final_w) {
            let mut b = Vec::new();
            for _ in 0..cols {
                b.extend_from_slice(&1.0f32.to_le_bytes());
            }
            b
        } else {
            tensor_bytes(k, rows, cols, i as u32)
        };
        let offset = out.len();
        let e = write::entry(&slot, k, offset as u32, data.len() as u32, version);
        out[blob::HEADER_LEN + i * blob::ENTRY_LEN..][..blob::ENTRY_LEN].copy_from_slice(&e);
        out.extend_from_slice(&data);
        out.resize(out.len().next_multiple_of(blob::ALIGN), 0);
    }
    write::finish(&mut out);
    out
}

fn bench_matvec(c: &mut Criterion) {
    let (dm, dh, nh) = (
        DEMO.d_model as usize,
        DEMO.d_head as usize,
        DEMO.n_heads as usize,
    );
    // (name, rows, cols): W_Q/W_K/W_V of all heads and W_U; one head's W_V/W_K; one head's W_O.
    let shapes = [
        ("qkv_all_heads", nh * dh, dm),
        ("one_head_kv", dh, dm),
        ("one_head_o", dm, dh),
    ];
    let mut g = c.benchmark_group("matvec");
    for (name, rows, cols) in shapes {
        let x = values(cols, 99);
        let mut q = vec![0i8; cols];
        let scale = kernels::quantize_input(&x, &mut q);
        let input = Input {
            x: &x,
            q: &q,
            scale,
            pairs: &[],
        };
        g.throughput(Throughput::Elements((rows * cols) as u64));
        for kind in KINDS {
            let data = tensor_bytes(kind, rows, cols, 7);
            let t = Tensor::from_data(kind, rows, cols, &data).expect("tensor");
            let mut out = vec![0.0f32; rows];
            g.bench_with_input(
                BenchmarkId::new(kind.name(), format!("{name}_{rows}x{cols}")),
                &t,
                |b, t| b.iter(|| kernels::matvec(black_box(t), black_box(&input), &mut out)),
            );
        }
    }
    g.finish();

    let mut g = c.benchmark_group("activation");
    let x = values(dm, 5);
    let mut q = vec![0i8; dm];
    g.throughput(Throughput::Elements(dm as u64));
    g.bench_function("quantize_input_64", |b| {
        b.iter(|| kernels::quantize_input(black_box(&x), &mut q))
    });
    let xs: Vec<f32> = values(256, 3).iter().map(|v| v * 20.0 - 10.0).collect();
    g.throughput(Throughput::Elements(xs.len() as u64));
    g.bench_function("expf_256", |b| {
        b.iter(|| {
            black_box(&xs)
                .iter()
                .map(|v| kernels::expf(*v))
                .sum::<f32>()
        })
    });
    g.finish();
}

/// Whole sequences of the demo shape: 32 steps from position 0 (one step per token, as
/// prompt processing and decoding both run), probes off and with every hook recorded.
fn bench_steps(c: &mut Criterion) {
    let tokens: Vec<u32> = (0..DEMO.n_ctx)
        .map(|i| (i * 37 + 5) % DEMO.d_vocab)
        .collect();
    let mut g = c.benchmark_group("sequence32");
    g.throughput(Throughput::Elements(tokens.len() as u64));
    for kind in KINDS {
        let bytes = random_blob(&DEMO, kind);
        let model = Model::from_bytes(&bytes).expect("valid blob");
        let mut ws = vec![0.0f32; DEMO.workspace_len()];
        let mut session = Session::new(&model, &mut ws).expect("workspace");
        g.bench_function(BenchmarkId::new("probes_off", kind.name()), |b| {
            b.iter(|| {
                session.reset();
                black_box(session.prefill(&tokens, &mut NoHooks).expect("step")[0])
            })
        });
        let probes: ProbeSet<17> = ProbeSet::everything(Precision::F32);
        let mut frame = vec![0u8; frame_buffer_len(&DEMO)];
        let mut trace: Vec<u8> = Vec::with_capacity(1 << 20);
        g.bench_function(BenchmarkId::new("all_hooks", kind.name()), |b| {
            b.iter(|| {
                trace.clear();
                let sink = |f: &[u8]| -> Result<(), Error> {
                    trace.extend_from_slice(f);
                    Ok(())
                };
                let mut rec = Recorder::begin(&model, &probes, sink, &mut frame).expect("probes");
                session.reset();
                session.prefill(&tokens, &mut rec).expect("step");
                rec.finish().0
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_matvec, bench_steps);
criterion_main!(benches);
