//! Tens of thousands of random and mutated model blobs through `Model::from_bytes`: it
//! never panics, and every blob that loads runs a few steps (with every hook recorded
//! and an intervention) without a panic — errors such as non-finite logits are fine.
//!
//! Mutations start from real converted blobs of every storage kind (the fixtures, and
//! tiny models of every normalization and positional kind, with and without a
//! vocabulary): bit flips, byte writes, truncation, extension, splices from another
//! blob, header fields and tensor table entries set to edge values. Most cases then
//! recompute the CRC (`blob::write::finish`) so that the mutation gets past the checksum
//! into the structural checks; some also rewrite the stated total length afterwards.
//!
//! The load-and-run check is `tinylens_tests::fuzz_targets::exercise_model`, the body of
//! the `blob` fuzz target. Case counts: `PROPTEST_CASES` scales both tests (default
//! 24 000 tiny-blob and 1 200 fixture-blob cases in debug, ten times that in release).

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use safetensors::tensor::TensorView;
use tinylens_core::blob::{self, write, ENTRY_LEN, HEADER_LEN};
use tinylens_core::{Model, Processing, StorageKind};
use tinylens_host::{convert, tl};
use tinylens_tests::fuzz_targets::exercise_model;
use tinylens_tests::{blob, FIXTURES};

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

/// Tiny models (1 layer, d_model 4, 2 heads of 2, vocab 3, n_ctx 2) of every
/// normalization and positional kind, at every storage kind, with and without a
/// vocabulary; plus one with an odd int4 row width and more layers.
fn tiny_blobs() -> &'static [Vec<u8>] {
    static BLOBS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    BLOBS.get_or_init(|| {
        let mut out = Vec::new();
        let mut seed = 1u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let shapes = [(1, 4, 2, 2, 3, 2), (2, 37, 5, 3, 6, 3)];
        for (n_layers, d_model, d_head, n_heads, d_vocab, n_ctx) in shapes {
            for norm in ["null", "\"LN\"", "\"LNPre\""] {
                for pos in ["standard", "shortformer"] {
                    let json = format!(
                        r#"{{"attn_only": true, "n_layers": {n_layers}, "d_model": {d_model},
                            "d_head": {d_head}, "n_heads": {n_heads}, "d_vocab": {d_vocab},
                            "n_ctx": {n_ctx}, "normalization_type": {norm},
                            "positional_embedding_type": "{pos}"}}"#
                    );
                    let cfg = tl::parse_config(&json).unwrap();
                    let st = state_dict(&cfg, &mut next);
                    let w = tl::load_state_dict(&st, &cfg).unwrap();
                    let vocab: Vec<String> = (0..d_vocab).map(|i| "é".repeat(i)).collect();
                    for (i, kind) in KINDS.into_iter().enumerate() {
                        let v = (i % 2 == 0).then_some(vocab.as_slice());
                        let plan = convert::QuantPlan::uniform(kind);
                        let (b, _) =
                            convert::write_blob(&w, plan, Processing::default(), v).unwrap();
                        out.push(b);
                    }
                }
            }
        }
        out
    })
}

/// A TransformerLens state dict (safetensors) of random weights for `cfg`.
fn state_dict(
    cfg: &tinylens_host::weights::ModelConfig,
    next: &mut impl FnMut() -> f32,
) -> Vec<u8> {
    let (dm, dh, nh) = (cfg.d_model, cfg.d_head, cfg.n_heads);
    let ln = cfg.normalization == tinylens_host::weights::Normalization::LN;
    let mut t: Vec<(String, Vec<usize>)> = vec![
        ("embed.W_E".into(), vec![cfg.d_vocab, dm]),
        ("pos_embed.W_pos".into(), vec![cfg.n_ctx, dm]),
    ];
    for l in 0..cfg.n_layers {
        if ln {
            t.push((format!("blocks.{l}.ln1.w"), vec![dm]));
            t.push((format!("blocks.{l}.ln1.b"), vec![dm]));
        }
        for m in ["W_Q", "W_K", "W_V"] {
            t.push((format!("blocks.{l}.attn.{m}"), vec![nh, dm, dh]));
        }
        t.push((format!("blocks.{l}.attn.W_O"), vec![nh, dh, dm]));
        for b in ["b_Q", "b_K", "b_V"] {
            t.push((format!("blocks.{l}.attn.{b}"), vec![nh, dh]));
        }
        t.push((format!("blocks.{l}.attn.b_O"), vec![dm]));
    }
    if ln {
        t.push(("ln_final.w".into(), vec![dm]));
        t.push(("ln_final.b".into(), vec![dm]));
    }
    t.push(("unembed.W_U".into(), vec![dm, cfg.d_vocab_out]));
    t.push(("unembed.b_U".into(), vec![cfg.d_vocab_out]));
    let data: Vec<Vec<u8>> = t
        .iter()
        .map(|(_, shape)| {
            (0..shape.iter().product::<usize>())
                .flat_map(|_| next().to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = t
        .iter()
        .zip(&data)
        .map(|((name, shape), d)| {
            let view = TensorView::new(safetensors::Dtype::F32, shape.clone(), d).unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// The fixtures at every storage kind (embeddings in int8 for int4, as the CLI does).
fn fixture_blobs() -> &'static [Vec<u8>] {
    static BLOBS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    BLOBS.get_or_init(|| {
        FIXTURES
            .iter()
            .flat_map(|f| KINDS.iter().map(move |k| blob(f, *k)))
            .collect()
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Extend(usize, u8),
    /// Copy `len` bytes from `from` (in another base blob) to `to`.
    Splice {
        other: usize,
        from: usize,
        to: usize,
        len: usize,
    },
    /// A header field (byte offset of a u16 or u32 in the first 64 bytes) set to a value.
    Header(usize, u32),
    /// Field `field` of table entry `entry` set to a value.
    Entry {
        entry: usize,
        field: usize,
        value: u32,
    },
}

/// Values that sit on the edges of the checks.
fn edge_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(2),
        Just(3),
        Just(4),
        Just(15),
        Just(16),
        Just(255),
        Just(256),
        Just(4096),
        Just(65_535),
        Just(65_536),
        Just(1 << 20),
        Just((1 << 20) + 1),
        Just(i32::MAX as u32),
        Just(u32::MAX),
        Just(u32::MAX - 1),
        Just(f32::NAN.to_bits()),
        Just(f32::INFINITY.to_bits()),
        Just((-1.0f32).to_bits()),
        any::<u32>(),
    ]
}

/// Offsets of the header's fields: version, header length, total, CRC, processing,
/// dimensions, normalization+positional, tensor count, eps, attention scale.
const HEADER_FIELDS: [usize; 15] = [8, 10, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 54, 56];
/// Offsets of a table entry's fields: id+kind, layer, rows, cols, offset, length, reserved.
const ENTRY_FIELDS: [usize; 7] = [0, 2, 4, 8, 12, 16, 20];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (1usize..64, any::<u8>()).prop_map(|(n, v)| Mutation::Extend(n, v)),
        2 => (any::<usize>(), any::<usize>(), any::<usize>(), 1usize..256).prop_map(
            |(other, from, to, len)| Mutation::Splice { other, from, to, len }
        ),
        4 => (0..HEADER_FIELDS.len(), edge_u32()).prop_map(|(f, v)| Mutation::Header(f, v)),
        5 => (any::<usize>(), 0..ENTRY_FIELDS.len(), edge_u32())
            .prop_map(|(entry, field, value)| Mutation::Entry { entry, field, value }),
    ]
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().iter().enumerate() {
        if let Some(x) = b.get_mut(at + i) {
            *x = *byte;
        }
    }
}

fn apply(b: &mut Vec<u8>, m: &Mutation, others: &[Vec<u8>]) {
    let n = b.len().max(1);
    match *m {
        Mutation::FlipBit(i, bit) => {
            if let Some(x) = b.get_mut(i % n) {
                *x ^= 1 << bit;
            }
        }
        Mutation::SetByte(i, v) => {
            if let Some(x) = b.get_mut(i % n) {
                *x = v;
            }
        }
        Mutation::Truncate(len) => b.truncate(len % n),
        Mutation::Extend(k, v) => b.extend(std::iter::repeat_n(v, k)),
        Mutation::Splice {
            other,
            from,
            to,
            len,
        } => {
            let src = &others[other % others.len()];
            let from = from % src.len();
            let len = len.min(src.len() - from);
            let to = to % n;
            for (i, &x) in src[from..from + len].iter().enumerate() {
                if let Some(y) = b.get_mut(to + i) {
                    *y = x;
                }
            }
        }
        Mutation::Header(f, v) => {
            let at = HEADER_FIELDS[f];
            match at {
                // u16 fields, and the one-byte normalization/positional pair.
                8 | 10 | 54 => {
                    for (i, byte) in (v as u16).to_le_bytes().iter().enumerate() {
                        if let Some(x) = b.get_mut(at + i) {
                            *x = *byte;
                        }
                    }
                }
                52 => {
                    if let Some(x) = b.get_mut(52 + (v as usize & 1)) {
                        *x = (v >> 1) as u8;
                    }
                }
                _ => put_u32(b, at, v),
            }
        }
        Mutation::Entry {
            entry,
            field,
            value,
        } => {
            let count = b
                .get(54..56)
                .map_or(1, |c| u16::from_le_bytes([c[0], c[1]]) as usize)
                .max(1);
            let at = HEADER_LEN + (entry % count) * ENTRY_LEN + ENTRY_FIELDS[field];
            match ENTRY_FIELDS[field] {
                0 => {
                    // id or kind byte
                    if let Some(x) = b.get_mut(at + (value as usize & 1)) {
                        *x = (value >> 1) as u8;
                    }
                }
                2 => {
                    for (i, byte) in (value as u16).to_le_bytes().iter().enumerate() {
                        if let Some(x) = b.get_mut(at + i) {
                            *x = *byte;
                        }
                    }
                }
                _ => put_u32(b, at, value),
            }
        }
    }
}

/// How the CRC and stated length are treated after the mutations.
#[derive(Debug, Clone)]
enum Seal {
    /// Left as they are (the checksum catches most mutations).
    AsIs,
    /// `write::finish`: total length and CRC made right.
    Finish,
    /// `write::finish`, then the stated total length (not covered by the CRC) set.
    FinishThenTotal(u32),
}

fn seal() -> impl Strategy<Value = Seal> {
    prop_oneof![
        1 => Just(Seal::AsIs),
        8 => Just(Seal::Finish),
        1 => edge_u32().prop_map(Seal::FinishThenTotal),
    ]
}

fn mutate(base: &[Vec<u8>], pick: usize, ms: &[Mutation], s: &Seal) -> Vec<u8> {
    let mut b = base[pick % base.len()].clone();
    for m in ms {
        apply(&mut b, m, base);
    }
    match *s {
        Seal::AsIs => {}
        Seal::Finish | Seal::FinishThenTotal(_) if b.len() < 20 => {}
        Seal::Finish => write::finish(&mut b),
        Seal::FinishThenTotal(t) => {
            write::finish(&mut b);
            put_u32(&mut b, 12, t);
        }
    }
    b
}

fn cases(debug_default: u32) -> u32 {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok());
    let scale = if cfg!(debug_assertions) { 1 } else { 10 };
    n.map_or(debug_default * scale, |n| {
        (n as u64 * debug_default as u64 / 24_000).max(1) as u32
    })
}

fn config(debug_default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(debug_default),
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(24_000))]

    /// Mutated tiny blobs (cheap to load and run).
    #[test]
    fn mutated_tiny_blobs_never_panic(
        pick in any::<usize>(),
        ms in prop::collection::vec(mutation(), 1..5),
        s in seal(),
        seed in any::<u64>(),
    ) {
        let b = mutate(tiny_blobs(), pick, &ms, &s);
        let _ = exercise_model(&b, seed);
    }
}

proptest! {
    #![proptest_config(config(1_200))]

    /// Mutated fixture blobs of every storage kind.
    #[test]
    fn mutated_fixture_blobs_never_panic(
        pick in any::<usize>(),
        ms in prop::collection::vec(mutation(), 1..4),
        s in seal(),
        seed in any::<u64>(),
    ) {
        let b = mutate(fixture_blobs(), pick, &ms, &s);
        let _ = exercise_model(&b, seed);
    }

    /// Random bytes, with or without the magic and a valid CRC.
    #[test]
    fn random_bytes_never_panic(
        mut bytes in prop::collection::vec(any::<u8>(), 0..600),
        magic in any::<bool>(),
        finish in any::<bool>(),
    ) {
        if magic && bytes.len() >= 10 {
            bytes[..8].copy_from_slice(&blob::MAGIC);
            bytes[8..10].copy_from_slice(&blob::VERSION.to_le_bytes());
        }
        if finish && bytes.len() >= 20 {
            write::finish(&mut bytes);
        }
        let _ = exercise_model(&bytes, 0);
    }
}

/// The bases load, and a good share of mutations still load (so that the run part of
/// the property is exercised, not only the refusals).
#[test]
fn bases_load_and_mutations_reach_the_runner() {
    for b in tiny_blobs().iter().chain(fixture_blobs()) {
        exercise_model(b, 7).expect("base blob runs");
    }
    let mut loaded = 0;
    let total = 400;
    for i in 0..total {
        let ms = [Mutation::SetByte(
            (i * 7919) % 10_000 + 512,
            (i * 31 % 256) as u8,
        )];
        let b = mutate(tiny_blobs(), i, &ms, &Seal::Finish);
        loaded += Model::from_bytes(&b).is_ok() as usize;
    }
    assert!(
        loaded > total / 10,
        "only {loaded} of {total} mutated blobs load"
    );
}
