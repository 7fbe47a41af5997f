//! Hostile and mismatched input at the public API: nothing panics, every problem is a
//! typed error (or, for views and hooks called by hand, a defined no-op), and a NaN or
//! infinity reaching the logits is reported as [`Error::NonFiniteLogits`].

use std::vec;
use std::vec::Vec;

use crate::blob::{self, write};
use crate::config::limits;
use crate::hooks::FnHook;
use crate::intervene::{Ablation, AblationMode, FreezePatterns, FreezeScales, Patch};
use crate::kernels::{self, Input};
use crate::probe::{Precision, Probe, ProbeSet, MAX_PROBES};
use crate::quant::{self, Tensor};
use crate::trace::{decode_frame, frame_buffer_len, Body, Recorder, RingSink, Sink};
use crate::{
    Config, Error, HookPoint, Hooks, Model, Normalization, Positional, Processing, Session, Site,
    StorageKind,
};

fn config(d_model: u32, d_head: u32, n_heads: u32, norm: Normalization) -> Config {
    Config {
        n_layers: 1,
        n_heads,
        d_model,
        d_head,
        d_vocab: 3,
        d_vocab_out: 3,
        n_ctx: 2,
        normalization: norm,
        positional: Positional::Standard,
        eps: 1e-5,
        attn_scale: 1.0,
    }
}

/// A blob for `cfg` with every tensor in `kind`, element `e` of tensor `t` = `value(t, e)`.
pub(crate) fn build(
    cfg: &Config,
    kind: StorageKind,
    value: impl Fn(usize, usize) -> f32,
) -> Vec<u8> {
    build_with(cfg, |_| kind, value)
}

/// A blob for `cfg` with tensor `t` in `kind(t)` (the format version the writer would
/// choose), element `e` of tensor `t` = `value(t, e)`.
pub(crate) fn build_with(
    cfg: &Config,
    kind: impl Fn(usize) -> StorageKind,
    value: impl Fn(usize, usize) -> f32,
) -> Vec<u8> {
    let n = blob::tensor_count(cfg);
    let data_start = (blob::HEADER_LEN + n * blob::ENTRY_LEN).next_multiple_of(blob::ALIGN);
    let version = write::version_for((0..n).map(&kind));
    let mut out = write::header(cfg, Processing::default(), n as u16, version).to_vec();
    let mut data = Vec::new();
    for t in 0..n {
        let slot = blob::slot(cfg, t).unwrap();
        let kind = kind(t);
        let (rows, cols) = (slot.rows as usize, slot.cols as usize);
        let src: Vec<f32> = (0..rows * cols).map(|e| value(t, e)).collect();
        let mut bytes = vec![0u8; kind.data_len(rows, cols).unwrap()];
        assert!(quant::quantize(kind, rows, cols, &src, &mut bytes));
        data.resize(data.len().next_multiple_of(blob::ALIGN), 0);
        let offset = (data_start + data.len()) as u32;
        out.extend(write::entry(
            &slot,
            kind,
            offset,
            bytes.len() as u32,
            version,
        ));
        data.extend(bytes);
    }
    out.resize(data_start, 0);
    out.extend(data);
    write::finish(&mut out);
    out
}

fn small_values(t: usize, e: usize) -> f32 {
    ((t * 31 + e * 7) % 13) as f32 / 13.0 - 0.5
}

/// Every kind a matrix can have: f32, f16, int8 and int4 at each group.
fn matrix_kinds() -> Vec<StorageKind> {
    let mut kinds = vec![StorageKind::F32, StorageKind::F16, StorageKind::Int8];
    kinds.extend(quant::Int4Group::ALL.map(|group| StorageKind::Int4 { group }));
    kinds
}

#[test]
fn test_blobs_load() {
    for kind in matrix_kinds() {
        for norm in [Normalization::None, Normalization::LN, Normalization::LNPre] {
            let cfg = config(8, 4, 2, norm);
            let b = build(&cfg, kind, small_values);
            let m = Model::from_bytes(&b).unwrap();
            let mut ws = vec![0.0; cfg.workspace_len()];
            let mut s = Session::new(&m, &mut ws).unwrap();
            s.step(1).unwrap();
        }
    }
}

// ---- Format versions and int4 groups ------------------------------------------------------

/// Table entry `t` of a blob (its bytes, from the start of the blob).
fn entry_at(t: usize) -> core::ops::Range<usize> {
    blob::HEADER_LEN + t * blob::ENTRY_LEN..blob::HEADER_LEN + (t + 1) * blob::ENTRY_LEN
}

#[test]
fn writers_choose_the_oldest_version_that_holds_the_groups() {
    let cfg = config(64, 16, 2, Normalization::LN);
    let g = |group| StorageKind::Int4 { group };
    for (kinds, want) in [
        (vec![StorageKind::F32, StorageKind::Int8], 1),
        (vec![StorageKind::Int8, StorageKind::INT4], 1),
        (vec![g(quant::Int4Group::G16), StorageKind::INT4], 2),
        (vec![StorageKind::F16, g(quant::Int4Group::G128)], 2),
    ] {
        assert_eq!(write::version_for(kinds), want);
    }
    // A blob of int4/g32 tensors is a version 1 blob with a zero group field; the
    // same with one tensor at another group is version 2 with every int4 group stored.
    let v1 = build(&cfg, StorageKind::INT4, small_values);
    assert_eq!(Model::from_bytes(&v1).unwrap().version(), 1);
    let w_q = 4; // W_E, W_pos, ln1.w, ln1.b, then W_Q
    let mixed = build_with(
        &cfg,
        |t| {
            if t == w_q {
                g(quant::Int4Group::G16)
            } else {
                StorageKind::INT4
            }
        },
        small_values,
    );
    let m = Model::from_bytes(&mixed).unwrap();
    assert_eq!(m.version(), 2);
    assert_eq!(m.layer(0).w_q.kind, g(quant::Int4Group::G16));
    assert_eq!(m.layer(0).w_k.kind, StorageKind::INT4);
    for t in 0..blob::tensor_count(&cfg) {
        let e = &v1[entry_at(t)];
        assert_eq!(e[20..24], [0; 4], "version 1 entry {t}");
        let e = &mixed[entry_at(t)];
        let group = u16::from_le_bytes([e[20], e[21]]);
        let want = m.tensor_at(t).kind.int4_group().map_or(0, u16::from);
        assert_eq!((group, e[22], e[23]), (want, 0, 0), "version 2 entry {t}");
    }
}

#[test]
fn hostile_group_fields_are_typed_errors() {
    let cfg = config(64, 16, 2, Normalization::LN);
    let w_q = 4;
    let name = blob::slot(&cfg, w_q).unwrap().name;
    let g16 = StorageKind::Int4 {
        group: quant::Int4Group::G16,
    };
    let v2 = build_with(
        &cfg,
        |t| if t == w_q { g16 } else { StorageKind::INT4 },
        small_values,
    );
    let v1 = build(&cfg, StorageKind::INT4, small_values);
    let patched = |base: &[u8], at: usize, bytes: &[u8]| -> Vec<u8> {
        let mut b = base.to_vec();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        write::finish(&mut b);
        b
    };
    let field = entry_at(w_q).start + 20;
    // Version 2: an int4 group that is not 16, 32, 64 or 128.
    for bad in [0u16, 1, 8, 17, 48, 96, 256, u16::MAX] {
        let b = patched(&v2, field, &bad.to_le_bytes());
        assert_eq!(
            Model::from_bytes(&b).map(|_| ()),
            Err(Error::Int4Group {
                tensor: name,
                group: bad
            }),
            "group {bad}"
        );
        assert!(Error::Int4Group {
            tensor: name,
            group: bad
        }
        .to_string()
        .contains("16, 32, 64, 128"));
    }
    // A valid group that does not fit the data's length (16 → 32 halves the scales).
    let b = patched(&v2, field, &32u16.to_le_bytes());
    assert_eq!(
        Model::from_bytes(&b).map(|_| ()),
        Err(Error::TensorBounds { tensor: name })
    );
    // The reserved u16 after the group, and a group field on a kind that has none.
    let b = patched(&v2, field + 2, &[1, 0]);
    assert_eq!(
        Model::from_bytes(&b).map(|_| ()),
        Err(Error::TensorBounds { tensor: name })
    );
    let f32_blob = build_with(
        &cfg,
        |t| if t == w_q { g16 } else { StorageKind::F32 },
        small_values,
    );
    let w_k = blob::slot(&cfg, w_q + 1).unwrap().name;
    let b = patched(
        &f32_blob,
        entry_at(w_q + 1).start + 20,
        &32u16.to_le_bytes(),
    );
    assert_eq!(
        Model::from_bytes(&b).map(|_| ()),
        Err(Error::TensorBounds { tensor: w_k })
    );
    // Version 1 has no group field: anything there is refused, as before.
    for bad in [16u16, 32, 1] {
        let b = patched(&v1, field, &bad.to_le_bytes());
        assert_eq!(
            Model::from_bytes(&b).map(|_| ()),
            Err(Error::TensorBounds { tensor: name })
        );
    }
    // A version 2 blob relabelled version 1 reads its groups as 32: lengths disagree.
    let b = patched(&v2, 8, &1u16.to_le_bytes());
    assert!(Model::from_bytes(&b).is_err());
    // Versions this build does not know.
    for version in [0u16, 3, u16::MAX] {
        let b = patched(&v2, 8, &version.to_le_bytes());
        assert_eq!(
            Model::from_bytes(&b).map(|_| ()),
            Err(Error::UnsupportedVersion {
                found: version,
                supported: blob::VERSION
            })
        );
    }
}

// ---- NaN and infinity reaching the logits ----------------------------------------------

#[test]
fn huge_weights_overflow_to_non_finite_logits() {
    // Finite f32 weights near f32::MAX: the embedding times W_U overflows to infinity.
    let cfg = config(4, 2, 2, Normalization::None);
    let b = build(&cfg, StorageKind::F32, |_, _| 3.0e38);
    let m = Model::from_bytes(&b).expect("finite weights load");
    let mut ws = vec![0.0; cfg.workspace_len()];
    let mut s = Session::new(&m, &mut ws).unwrap();
    assert_eq!(s.step(0), Err(Error::NonFiniteLogits { pos: 0 }));
    // The refused position is not kept.
    assert_eq!(s.pos(), 0);
}

#[test]
fn hook_injecting_nan_is_reported_at_its_position() {
    let cfg = config(8, 4, 2, Normalization::LN);
    let b = build(&cfg, StorageKind::Int8, small_values);
    let m = Model::from_bytes(&b).unwrap();
    let mut ws = vec![0.0; cfg.workspace_len()];
    let mut s = Session::new(&m, &mut ws).unwrap();
    s.step(0).unwrap();
    for point in [HookPoint::ResidPost, HookPoint::Z, HookPoint::Ln1Scale] {
        let mut nan = FnHook(|site: Site, v: &mut [f32]| {
            if site.point == point {
                v[0] = f32::NAN;
            }
        });
        assert_eq!(
            s.step_with(1, &mut nan),
            Err(Error::NonFiniteLogits { pos: 1 }),
            "{point:?}"
        );
        assert_eq!(s.pos(), 1);
    }
    let mut inf = FnHook(|site: Site, v: &mut [f32]| {
        if site.point == HookPoint::Logits {
            v[2] = f32::INFINITY;
        }
    });
    assert_eq!(
        s.step_with(1, &mut inf),
        Err(Error::NonFiniteLogits { pos: 1 })
    );
    assert!(s.step(1).is_ok());
}

// ---- Session inputs ----------------------------------------------------------------------

#[test]
fn any_token_and_a_full_context_are_errors() {
    let cfg = config(8, 4, 2, Normalization::LNPre);
    let b = build(&cfg, StorageKind::INT4, small_values);
    let m = Model::from_bytes(&b).unwrap();
    let mut ws = vec![0.0; cfg.workspace_len()];
    let mut s = Session::new(&m, &mut ws).unwrap();
    for t in [3, 4, 1000, u32::MAX] {
        assert_eq!(
            s.step(t),
            Err(Error::TokenOutOfRange {
                token: t,
                d_vocab: 3
            })
        );
    }
    s.step(2).unwrap();
    s.step(2).unwrap();
    assert_eq!(s.step(2), Err(Error::ContextFull { n_ctx: 2 }));
    assert_eq!(s.pos(), 2);
}

#[test]
fn workspace_too_small_is_an_error() {
    let cfg = config(8, 4, 2, Normalization::LN);
    let b = build(&cfg, StorageKind::F16, small_values);
    let m = Model::from_bytes(&b).unwrap();
    for len in [0, 1, cfg.workspace_len() - 1] {
        let mut ws = vec![0.0; len];
        assert!(matches!(
            Session::new(&m, &mut ws),
            Err(Error::BufferTooSmall { .. })
        ));
    }
}

#[test]
fn sizes_of_unvalidated_configs_saturate() {
    let huge = Config {
        n_layers: u32::MAX,
        n_heads: u32::MAX,
        d_model: u32::MAX,
        d_head: u32::MAX,
        d_vocab: u32::MAX,
        d_vocab_out: u32::MAX,
        n_ctx: u32::MAX,
        ..config(8, 4, 2, Normalization::LN)
    };
    assert_eq!(huge.workspace_len(), usize::MAX);
    assert_eq!(huge.kv_cache_len(), usize::MAX);
    assert_eq!(huge.minimum_len(), usize::MAX);
    assert!(huge.validate().is_err());
    assert!(frame_buffer_len(&huge) > u32::MAX as usize);
    // The largest accepted config's sizes are exact and within the limits.
    let big = Config {
        n_layers: 1,
        n_heads: 1,
        d_model: limits::MAX_DIM,
        d_head: limits::MAX_DIM,
        d_vocab: limits::MAX_VOCAB,
        d_vocab_out: limits::MAX_VOCAB,
        n_ctx: 1024,
        ..huge
    };
    assert_eq!(big.validate(), Ok(()));
    assert!(big.workspace_len() as u64 <= limits::MAX_WORKSPACE_WORDS);
    assert_eq!(big.kv_cache_len(), 1024 * limits::MAX_DIM as usize);
}

#[test]
fn layout_functions_take_any_config() {
    let huge = Config {
        n_layers: u32::MAX,
        n_heads: u32::MAX,
        d_model: u32::MAX,
        d_head: u32::MAX,
        ..config(8, 4, 2, Normalization::LN)
    };
    let n = blob::tensor_count(&huge);
    for i in [
        0,
        1,
        2,
        5,
        11,
        12,
        n.saturating_sub(1),
        n,
        n.saturating_add(1),
        usize::MAX,
    ] {
        let _ = blob::slot(&huge, i);
    }
    // A valid config's table is exact.
    let cfg = config(8, 4, 2, Normalization::LN);
    assert_eq!(blob::tensor_count(&cfg), 2 + 10 + 4);
    assert!(blob::slot(&cfg, blob::tensor_count(&cfg) + 1).is_none());
    // `finish` leaves a slice shorter than a header alone.
    let mut short = [7u8; 30];
    write::finish(&mut short);
    assert_eq!(short, [7u8; 30]);
    // Tensor views of absurd shapes are refused, not overflowed.
    for kind in matrix_kinds().into_iter().chain([StorageKind::Bytes]) {
        for (rows, cols) in [(usize::MAX, 2), (2, usize::MAX), (usize::MAX / 2 + 1, 1)] {
            assert!(Tensor::from_data(kind, rows, cols, &[0u8; 64]).is_none());
        }
    }
}

#[test]
fn intervention_sizes_never_overflow() {
    let cfg = config(8, 4, 2, Normalization::LN);
    let v = [0.0f32; 4];
    for len in [3, usize::MAX / 2, usize::MAX] {
        assert!(FreezePatterns::new(&cfg, &v, len).is_err());
        assert!(FreezeScales::new(&cfg, &v, len).is_err());
        for point in HookPoint::ALL {
            assert!(Patch::new(&cfg, point, 0, None, &v, len).is_err());
        }
    }
    // Unvalidated configs: sizes saturate and are refused.
    let huge = Config {
        n_layers: u32::MAX,
        n_heads: u32::MAX,
        d_model: u32::MAX,
        n_ctx: u32::MAX,
        ..cfg
    };
    assert!(matches!(
        Ablation::new(&huge, &[(0, 0)], AblationMode::Mean(&v)),
        Err(Error::InterventionShape { .. })
    ));
    assert!(FreezePatterns::new(&huge, &v, 1 << 20).is_err());
    assert!(FreezeScales::new(&huge, &v, 1 << 20).is_err());
    assert!(Patch::new(&huge, HookPoint::Pattern, 0, None, &v, 1 << 40).is_err());
}

// ---- Tensor views and kernels --------------------------------------------------------------

#[test]
fn tensor_rows_out_of_range_are_cut_off() {
    let (rows, cols) = (5, 40);
    let src: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.01).collect();
    for kind in matrix_kinds() {
        let mut buf = vec![0u8; kind.data_len(rows, cols).unwrap()];
        assert!(quant::quantize(kind, rows, cols, &src, &mut buf));
        let t = Tensor::from_data(kind, rows, cols, &buf).unwrap();
        assert_eq!(t.rows(3, 10).rows, 2);
        assert_eq!(t.rows(3, 10).get(1, 0), t.get(4, 0));
        assert_eq!(t.rows(5, 1).rows, 0);
        assert_eq!(t.rows(usize::MAX, usize::MAX).rows, 0);
        assert_eq!(t.rows(1, usize::MAX).rows, 4);
        assert!(t.get(5, 0).is_nan());
        assert!(t.get(0, 40).is_nan());
        assert!(t.get(usize::MAX, usize::MAX).is_nan());
        // Short and long output rows, a row past the end.
        let mut short = [7.0f32; 3];
        t.dequantize_row(1, &mut short);
        assert_eq!(short[2], t.get(1, 2));
        let mut long = vec![7.0f32; 50];
        t.add_row_to(usize::MAX, &mut long);
        t.dequantize_row(5, &mut long);
        assert!(long.iter().all(|v| *v == 7.0));
        t.dequantize_row(0, &mut long);
        assert_eq!(long[40], 7.0);

        // A view built by hand whose bytes are shorter than its shape.
        let bad = Tensor {
            kind,
            rows: 1000,
            cols: usize::MAX / 2,
            values: &buf[..3],
            scales: &[],
        };
        assert_eq!(bad.rows(999, 1).rows, 0);
        assert!(bad.get(999, 3).is_nan());
        bad.dequantize_row(0, &mut long);
        let x = [1.0f32; 4];
        let q = [1i8; 4];
        let mut out = [0.0f32; 3];
        kernels::matvec(
            &bad,
            &Input {
                x: &x,
                q: &q,
                scale: 1.0,
                pairs: &[],
            },
            &mut out,
        );
        assert!(out.iter().all(|v| v.is_nan()));
    }
}

#[test]
fn matvec_with_mismatched_buffers_gives_nan_not_a_panic() {
    let (rows, cols) = (4, 33);
    let src: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32 - 3.0).collect();
    for kind in matrix_kinds() {
        let mut buf = vec![0u8; kind.data_len(rows, cols).unwrap()];
        assert!(quant::quantize(kind, rows, cols, &src, &mut buf));
        let t = Tensor::from_data(kind, rows, cols, &buf).unwrap();
        let x = vec![0.5f32; cols];
        let mut q = vec![0i8; cols];
        let scale = kernels::quantize_input(&x, &mut q);
        let good = Input {
            x: &x,
            q: &q,
            scale,
            pairs: &[],
        };
        // More outputs than rows: the extra ones are NaN, the others computed.
        let mut out = vec![0.0f32; rows + 2];
        kernels::matvec(&t, &good, &mut out);
        assert!(out[..rows].iter().all(|v| v.is_finite()));
        assert!(out[rows..].iter().all(|v| v.is_nan()));
        let mut exact = vec![0.0f32; rows];
        kernels::matvec(&t, &good, &mut exact);
        assert_eq!(&out[..rows], &exact[..]);
        // Fewer outputs: those rows only.
        let mut two = [0.0f32; 2];
        kernels::matvec(&t, &good, &mut two);
        assert_eq!(&two[..], &exact[..2]);
        // An input shorter than the columns.
        let short = Input {
            x: &x[..cols - 1],
            q: &q[..cols - 1],
            scale,
            pairs: &[],
        };
        let mut out = vec![0.0f32; rows];
        kernels::matvec(&t, &short, &mut out);
        assert!(out.iter().all(|v| v.is_nan()));
    }
}

// ---- Interventions ---------------------------------------------------------------------

#[test]
fn interventions_refuse_wrong_lengths_and_ignore_foreign_sites() {
    let cfg = config(8, 4, 2, Normalization::LN);
    let per_model = 2 * 8;
    assert_eq!(
        Ablation::new(&cfg, &[(0, 0)], AblationMode::Mean(&[0.0; 3])).unwrap_err(),
        Error::InterventionShape {
            expected: per_model,
            found: 3
        }
    );
    assert_eq!(
        Ablation::new(&cfg, &[(1, 0)], AblationMode::Zero).unwrap_err(),
        Error::InvalidProbe
    );
    assert_eq!(
        Ablation::new(&cfg, &[(0, 2)], AblationMode::Zero).unwrap_err(),
        Error::InvalidProbe
    );
    assert!(matches!(
        FreezePatterns::new(&cfg, &[0.0; 7], 2),
        Err(Error::InterventionShape { .. })
    ));
    assert!(matches!(
        FreezePatterns::new(&cfg, &[0.0; 2 * 9], 3),
        Err(Error::InterventionShape { .. })
    ));
    assert!(matches!(
        FreezeScales::new(&cfg, &[0.0; 3], 2),
        Err(Error::InterventionShape { .. })
    ));
    assert!(matches!(
        Patch::new(&cfg, HookPoint::Z, 0, None, &[0.0; 5], 2),
        Err(Error::InterventionShape { .. })
    ));
    assert_eq!(
        Patch::new(&cfg, HookPoint::Z, 1, None, &[0.0; 16], 2).unwrap_err(),
        Error::InvalidProbe
    );
    assert_eq!(
        Patch::new(&cfg, HookPoint::Z, 0, Some(2), &[0.0; 16], 2).unwrap_err(),
        Error::InvalidProbe
    );
    assert_eq!(
        Patch::new(&cfg, HookPoint::Embed, 0, Some(0), &[0.0; 16], 2).unwrap_err(),
        Error::InvalidProbe
    );
    assert_eq!(
        Patch::new(&cfg, HookPoint::Z, 0, None, &[0.0; 0], 3).unwrap_err(),
        Error::InvalidProbe
    );

    // Hooks called by hand with sites and values the forward pass would never give.
    let means = vec![1.0f32; per_model];
    let heads = [(0u16, 1u16)];
    let patterns = vec![0.25f32; 2 * 4];
    let scales = vec![2.0f32; 4];
    let z = vec![3.0f32; 2 * 2 * 4];
    let mut hooks: Vec<(&str, std::boxed::Box<dyn Hooks>)> = vec![
        (
            "ablation",
            std::boxed::Box::new(Ablation::new(&cfg, &heads, AblationMode::Mean(&means)).unwrap()),
        ),
        (
            "patterns",
            std::boxed::Box::new(FreezePatterns::new(&cfg, &patterns, 2).unwrap()),
        ),
        (
            "scales",
            std::boxed::Box::new(FreezeScales::new(&cfg, &scales, 2).unwrap()),
        ),
        (
            "patch",
            std::boxed::Box::new(Patch::new(&cfg, HookPoint::Z, 0, None, &z, 2).unwrap()),
        ),
    ];
    for (name, h) in hooks.iter_mut() {
        for point in HookPoint::ALL {
            for (layer, head, pos) in [
                (0, Some(1), 0),
                (0, Some(1), 1),
                (1, Some(0), 0),
                (0, Some(9), 1),
                (u16::MAX, Some(u16::MAX), u16::MAX),
                (0, None, 0),
            ] {
                for len in [0, 1, 3, 100] {
                    let mut v = vec![0.0f32; len];
                    let site = Site {
                        point,
                        layer,
                        head,
                        pos,
                    };
                    h.hook(site, &mut v);
                    // A site the intervention does not cover is left alone.
                    let foreign_head = point.per_head() && head.is_some_and(|h| h > 1);
                    if (point.per_layer() && layer > 0) || pos > 1 || foreign_head {
                        assert!(v.iter().all(|x| *x == 0.0), "{name} changed {site:?}");
                    }
                }
            }
        }
    }
}

// ---- Recorder and sinks ------------------------------------------------------------------

fn record_all(cfg: &Config, precision: Precision) -> (crate::trace::Summary, Vec<u8>) {
    let b = build(cfg, StorageKind::F32, small_values);
    let m = Model::from_bytes(&b).unwrap();
    let mut probes: ProbeSet = ProbeSet::new();
    for point in HookPoint::ALL {
        if !(point.needs_ln() && cfg.normalization == Normalization::None) {
            probes
                .push(Probe {
                    precision,
                    ..Probe::all(point)
                })
                .unwrap();
        }
    }
    let mut buf = vec![0u8; frame_buffer_len(cfg)];
    let mut trace = Vec::new();
    let mut ws = vec![0.0; cfg.workspace_len()];
    let mut s = Session::new(&m, &mut ws).unwrap();
    let mut rec = Recorder::begin(
        &m,
        &probes,
        |f: &[u8]| -> Result<(), Error> {
            trace.extend_from_slice(f);
            Ok(())
        },
        &mut buf,
    )
    .unwrap();
    for t in 0..cfg.n_ctx.min(3) {
        s.step_with(t % cfg.d_vocab, &mut rec).unwrap();
    }
    let (summary, _) = rec.finish();
    (summary, trace)
}

#[test]
fn frame_buffer_holds_every_record_whatever_dimension_is_widest() {
    // d_head wider than d_model, d_vocab_out and n_ctx: q/k/v/z records are the widest.
    let wide_head = config(4, 200, 1, Normalization::LN);
    // n_ctx widest (attention rows), d_vocab_out widest (logits), d_model widest.
    let long_ctx = Config {
        n_ctx: 70,
        ..config(4, 2, 2, Normalization::None)
    };
    let wide_vocab = Config {
        d_vocab_out: 90,
        ..config(4, 2, 2, Normalization::LNPre)
    };
    let wide_model = config(80, 2, 2, Normalization::LN);
    for cfg in [wide_head, long_ctx, wide_vocab, wide_model] {
        assert_eq!(cfg.validate(), Ok(()));
        let (summary, trace) = record_all(&cfg, Precision::F32);
        assert_eq!(summary.error, None, "{cfg:?}");
        assert_eq!(summary.dropped, 0);
        // Every frame decodes.
        let frames = trace.split(|b| *b == 0).filter(|f| !f.is_empty()).count();
        assert_eq!(frames as u32, summary.frames);
        for f in trace.split(|b| *b == 0).filter(|f| !f.is_empty()) {
            decode_frame(&mut f.to_vec()).unwrap();
        }
    }
}

#[test]
fn recorder_refuses_small_buffers_and_too_many_probes() {
    let cfg = config(8, 4, 2, Normalization::LN);
    let b = build(&cfg, StorageKind::Int8, small_values);
    let m = Model::from_bytes(&b).unwrap();
    let probes: ProbeSet = ProbeSet::everything(Precision::F16);
    let sink = |_: &[u8]| -> Result<(), Error> { Ok(()) };
    for len in [0, 1, frame_buffer_len(&cfg) - 1] {
        let mut buf = vec![0u8; len];
        assert!(matches!(
            Recorder::begin(&m, &probes, sink, &mut buf),
            Err(Error::BufferTooSmall { .. })
        ));
    }
    // A host-sized probe set with more probes than a trace header carries.
    let mut many: ProbeSet<64> = ProbeSet::new();
    many.add_pattern("*").unwrap();
    many.add_pattern("*:f16").unwrap();
    assert!(many.len() > MAX_PROBES);
    let mut buf = vec![0u8; frame_buffer_len(&cfg)];
    assert_eq!(
        Recorder::begin(&m, &many, sink, &mut buf).err(),
        Some(Error::TooManyProbes {
            capacity: MAX_PROBES
        })
    );
    // Probes the model does not have.
    let mut bad: ProbeSet = ProbeSet::new();
    bad.add_pattern("blocks.1.hook_resid_pre").unwrap();
    assert_eq!(
        Recorder::begin(&m, &bad, sink, &mut buf).err(),
        Some(Error::InvalidProbe)
    );
}

#[test]
fn failing_sinks_never_stop_the_forward_pass() {
    let cfg = config(8, 4, 2, Normalization::LN);
    let b = build(&cfg, StorageKind::Int8, small_values);
    let m = Model::from_bytes(&b).unwrap();
    let probes: ProbeSet = ProbeSet::everything(Precision::F32);
    let mut buf = vec![0u8; frame_buffer_len(&cfg)];
    let mut ws = vec![0.0; cfg.workspace_len()];
    let mut s = Session::new(&m, &mut ws).unwrap();
    let mut ok_frames = 0;
    let sink = |_: &[u8]| -> Result<(), Error> {
        ok_frames += 1;
        if ok_frames > 3 {
            Err(Error::SinkFailed)
        } else {
            Ok(())
        }
    };
    let mut rec = Recorder::begin(&m, &probes, sink, &mut buf).unwrap();
    s.step_with(0, &mut rec).unwrap();
    s.step_with(1, &mut rec).unwrap();
    let (summary, _) = rec.finish();
    assert_eq!(summary.error, Some(Error::SinkFailed));
    assert!(summary.dropped > 0);
    assert_eq!(s.pos(), 2);
}

#[test]
fn ring_sink_refuses_frames_larger_than_itself() {
    let mut ring: RingSink<8> = RingSink::new();
    assert_eq!(ring.write_frame(&[1; 9]), Err(Error::SinkFull));
    assert!(ring.is_empty());
    ring.write_frame(&[1, 2, 3, 0]).unwrap();
    ring.write_frame(&[4, 5, 0]).unwrap();
    // Full: the oldest whole frame goes.
    ring.write_frame(&[6, 7, 0]).unwrap();
    assert_eq!(ring.dropped_frames(), 1);
    let mut out = [0u8; 8];
    let n = ring.drain_into(&mut out);
    assert_eq!(&out[..n], &[4, 5, 0, 6, 7, 0]);
    // A frame without its delimiter, then one that needs the room: no hang, no panic.
    ring.write_frame(&[9; 5]).unwrap();
    ring.write_frame(&[1, 0]).unwrap();
    ring.write_frame(&[2; 8]).unwrap();
    assert_eq!(ring.len(), 8);
    // (A `RingSink<0>` does not compile: heapless refuses a zero-capacity deque.)
}

#[test]
fn decoded_records_never_index_past_their_payload() {
    let cfg = config(8, 4, 2, Normalization::LN);
    let (_, trace) = record_all(&cfg, Precision::F16);
    let mut seen = 0;
    for f in trace.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let mut f = f.to_vec();
        if let Body::Record(r) = decode_frame(&mut f).unwrap().body {
            assert!(r.value(r.len()).is_nan());
            assert!(r.value(usize::MAX).is_nan());
            let mut out = vec![0.0; r.len() + 3];
            r.values_into(&mut out);
            seen += 1;
        }
    }
    assert!(seen > 0);
}
