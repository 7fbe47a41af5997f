//! A block of positions is stepping, bit for bit: random models of every storage kind,
//! normalization and positional embedding, with every hook recorded, with
//! interventions, and with hooks off, processed in blocks of every size against one
//! token at a time.

use std::vec;
use std::vec::Vec;

use crate::hooks::FnHook;
use crate::intervene::{Ablation, AblationMode, FreezePatterns, Patch};
use crate::kernels::Portable;
use crate::quant::Int4Group;
use crate::robustness_tests::build;
use crate::{
    Config, HookPoint, Hooks, KvStorage, Model, NoHooks, Normalization, Positional, Session,
    SessionOptions, Site, StorageKind,
};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Records = Vec<(u8, u16, Option<u16>, u16, Vec<u32>)>;

/// Logits (as bits) of every position and every hook value `hooks` saw, sorted by site.
fn run<H: Hooks>(
    model: &Model<'_>,
    tokens: &[u32],
    block: usize,
    extra: &mut H,
) -> (Vec<u32>, Records) {
    run_kv(model, tokens, block, KvStorage::F32, extra)
}

/// [`run`] with a KV cache stored as `kv`.
fn run_kv<H: Hooks>(
    model: &Model<'_>,
    tokens: &[u32],
    block: usize,
    kv: KvStorage,
    extra: &mut H,
) -> (Vec<u32>, Records) {
    let cfg = *model.config();
    let mut ws = vec![0.0f32; cfg.session_workspace_len(block, kv)];
    let options = SessionOptions { block, kv };
    let mut s = Session::with_options(model, &mut ws, options, Portable).unwrap();
    let mut records: Records = Vec::new();
    let mut rec = FnHook(|site: Site, v: &mut [f32]| {
        records.push((
            site.point as u8,
            site.layer,
            site.head,
            site.pos,
            v.iter().map(|x| x.to_bits()).collect(),
        ))
    });
    let mut logits = Vec::new();
    for chunk in tokens.chunks(block) {
        let out = s.forward(chunk, &mut (&mut *extra, &mut rec)).unwrap();
        logits.extend(out.iter().map(|x| x.to_bits()));
    }
    records.sort();
    (logits, records)
}

fn random_model(rng: &mut XorShift, kind: StorageKind) -> (Config, Vec<u8>) {
    let n_heads = 1 + rng.below(3) as u32;
    let d_head = [3, 4, 8, 9][rng.below(4) as usize];
    let cfg = Config {
        n_layers: 1 + rng.below(2) as u32,
        n_heads,
        d_model: [8, 12, 16, 21][rng.below(4) as usize],
        d_head,
        d_vocab: 11,
        d_vocab_out: 9 + rng.below(9) as u32,
        n_ctx: 13,
        normalization: [Normalization::None, Normalization::LN, Normalization::LNPre]
            [rng.below(3) as usize],
        positional: [Positional::Standard, Positional::Shortformer][rng.below(2) as usize],
        eps: 1e-5,
        attn_scale: libm::sqrtf(d_head as f32),
    };
    let seed = rng.next();
    let blob = build(&cfg, kind, |t, e| {
        let mut r = XorShift(seed ^ ((t as u64) << 32) ^ e as u64 ^ 0x9e37_79b9_7f4a_7c15);
        r.next();
        (r.next() % 20_001) as f32 / 10_000.0 - 1.0
    });
    (cfg, blob)
}

/// Every matrix kind, int4 at each group size.
const KINDS: [StorageKind; 7] = [
    StorageKind::F32,
    StorageKind::F16,
    StorageKind::Int8,
    StorageKind::Int4 {
        group: Int4Group::G16,
    },
    StorageKind::INT4,
    StorageKind::Int4 {
        group: Int4Group::G64,
    },
    StorageKind::Int4 {
        group: Int4Group::G128,
    },
];

#[test]
fn blocks_are_stepping_bit_for_bit() {
    let mut rng = XorShift(0x5eed);
    for case in 0..48 {
        let kind = KINDS[case % KINDS.len()];
        let (cfg, blob) = random_model(&mut rng, kind);
        let model = Model::from_bytes(&blob).unwrap();
        let len = 1 + rng.below(cfg.n_ctx as u64) as usize;
        let tokens: Vec<u32> = (0..len)
            .map(|_| rng.below(cfg.d_vocab as u64) as u32)
            .collect();
        let stepped = run(&model, &tokens, 1, &mut NoHooks);
        assert!(!stepped.1.is_empty());
        for block in [2, 3, 5, cfg.n_ctx as usize] {
            let blocked = run(&model, &tokens, block, &mut NoHooks);
            assert!(
                stepped == blocked,
                "case {case} ({kind:?}, {cfg:?}), block {block}"
            );
        }
        // Hooks off: the logits alone.
        let mut ws = vec![0.0f32; cfg.block_workspace_len(len)];
        let mut s = Session::with_block(&model, &mut ws, len).unwrap();
        let plain: Vec<u32> = s
            .forward(&tokens, &mut NoHooks)
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        assert_eq!(plain, stepped.0, "case {case}: hooks off");
        assert_eq!(s.pos(), len);
        assert_eq!(s.logits().len(), cfg.d_vocab_out as usize);
    }
}

#[test]
fn interventions_in_blocks_are_stepping() {
    let mut rng = XorShift(0xab1a7e);
    for case in 0..24 {
        let kind = KINDS[case % KINDS.len()];
        let (cfg, blob) = random_model(&mut rng, kind);
        let model = Model::from_bytes(&blob).unwrap();
        let len = cfg.n_ctx as usize;
        let tokens: Vec<u32> = (0..len)
            .map(|_| rng.below(cfg.d_vocab as u64) as u32)
            .collect();
        let heads = [(0u16, 0u16)];
        let (nl, nh) = (cfg.n_layers as usize, cfg.n_heads as usize);
        let patterns: Vec<f32> = (0..nl * nh * 4 * 4)
            .map(|i| (i % 5) as f32 * 0.25)
            .collect();
        let patch_values: Vec<f32> = (0..3 * nh * cfg.d_head as usize)
            .map(|i| (i % 7) as f32 * 0.1 - 0.3)
            .collect();
        for block in [1, 4, len] {
            let mut abl = Ablation::new(&cfg, &heads, AblationMode::Scale(0.5)).unwrap();
            let mut frozen = FreezePatterns::new(&cfg, &patterns, 4).unwrap();
            let mut patch = Patch::new(&cfg, HookPoint::V, 0, None, &patch_values, 3).unwrap();
            let got = run(
                &model,
                &tokens,
                block,
                &mut (&mut abl, (&mut frozen, &mut patch)),
            );
            let mut abl = Ablation::new(&cfg, &heads, AblationMode::Scale(0.5)).unwrap();
            let mut frozen = FreezePatterns::new(&cfg, &patterns, 4).unwrap();
            let mut patch = Patch::new(&cfg, HookPoint::V, 0, None, &patch_values, 3).unwrap();
            let want = run(
                &model,
                &tokens,
                1,
                &mut (&mut abl, (&mut frozen, &mut patch)),
            );
            assert!(got == want, "case {case} ({kind:?}), block {block}");
        }
    }
}

#[test]
fn a_block_refuses_bad_input_before_computing() {
    let mut rng = XorShift(3);
    let (cfg, blob) = random_model(&mut rng, StorageKind::F32);
    let model = Model::from_bytes(&blob).unwrap();
    let mut ws = vec![0.0f32; cfg.block_workspace_len(4)];
    let mut s = Session::with_block(&model, &mut ws, 4).unwrap();
    assert!(
        s.forward(&[0; 5], &mut NoHooks).is_err(),
        "longer than the block"
    );
    assert!(s.forward(&[0, cfg.d_vocab], &mut NoHooks).is_err());
    assert_eq!(s.pos(), 0);
    for _ in 0..3 {
        s.forward(&[1, 2, 3, 4], &mut NoHooks).unwrap();
    }
    assert!(
        s.forward(&[1, 2], &mut NoHooks).is_err(),
        "past the context"
    );
    assert_eq!(s.pos(), 12);
    s.forward(&[1], &mut NoHooks).unwrap();
    let mut small = vec![0.0f32; cfg.block_workspace_len(4) - 1];
    assert!(Session::with_block(&model, &mut small, 4).is_err());
}

/// A quantized KV cache is a schedule-independent numerical choice: blocks are stepping
/// bit for bit for every cache kind, and the attention reads exactly the rounded keys and
/// values — an f32 session whose `hook_k`/`hook_v` round the values in place (an f32
/// cache holds what its hooks leave) gives the same logits and patterns.
#[test]
fn quantized_kv_caches_are_stepping_and_read_the_rounded_values() {
    let mut rng = XorShift(0xcafe);
    for case in 0..36 {
        let kind = KINDS[case % KINDS.len()];
        let kv = [KvStorage::F16, KvStorage::Int8][case / 4 % 2];
        let (cfg, blob) = random_model(&mut rng, kind);
        let model = Model::from_bytes(&blob).unwrap();
        let len = 1 + rng.below(cfg.n_ctx as u64) as usize;
        let tokens: Vec<u32> = (0..len)
            .map(|_| rng.below(cfg.d_vocab as u64) as u32)
            .collect();
        let stepped = run_kv(&model, &tokens, 1, kv, &mut NoHooks);
        for block in [3, cfg.n_ctx as usize] {
            let blocked = run_kv(&model, &tokens, block, kv, &mut NoHooks);
            assert!(
                stepped == blocked,
                "case {case} ({kind:?}, {kv:?}), block {block}"
            );
        }
        // The reference: f32 cache, values rounded by a hook as the kind stores them.
        let d_head = cfg.d_head as usize;
        let mut round = FnHook(|site: Site, v: &mut [f32]| {
            if !matches!(site.point, HookPoint::K | HookPoint::V) {
                return;
            }
            for x in v.chunks_exact_mut(d_head) {
                match kv {
                    KvStorage::F16 => {
                        for e in x.iter_mut() {
                            *e = half::f16::from_f32(*e).to_f32();
                        }
                    }
                    _ => {
                        let mut q = vec![0i8; d_head];
                        let scale = crate::kernels::quantize_input(x, &mut q);
                        for (e, q) in x.iter_mut().zip(&q) {
                            *e = *q as f32 * scale;
                        }
                    }
                }
            }
        });
        let reference = run_kv(&model, &tokens, 1, KvStorage::F32, &mut round);
        assert_eq!(
            stepped.0, reference.0,
            "case {case} ({kind:?}, {kv:?}): logits"
        );
        let patterns = |r: &Records| -> Records {
            r.iter()
                .filter(|x| x.0 == HookPoint::Pattern as u8)
                .cloned()
                .collect()
        };
        assert_eq!(
            patterns(&stepped.1),
            patterns(&reference.1),
            "case {case}: patterns"
        );
        // The quantized session needs less memory than the f32 one.
        assert!(
            cfg.session_workspace_len(1, kv) < cfg.session_workspace_len(1, KvStorage::F32),
            "case {case}: {kv:?} saves no RAM"
        );
    }
}
