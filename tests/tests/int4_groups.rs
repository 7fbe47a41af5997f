//! int4 group sizes per tensor (blob format version 2): a blob whose int4 tensors
//! have different groups reads back, through the core, exactly as the format says;
//! its forward pass is the dequantized weights' up to the int8 activations; the host
//! engine gives the stepped bits; and a flash budget picks groups other than 32 where
//! they pay.

use std::collections::BTreeMap;

use tinylens_core::blob::{self, TensorId};
use tinylens_core::{Int4Group, Model, Session, StorageKind};
use tinylens_host::convert::{self, write_blob_with};
use tinylens_host::quantize::{self, budget, calibration};
use tinylens_host::tl;
use tinylens_tests::*;

fn int4(cols: u16) -> StorageKind {
    StorageKind::Int4 {
        group: Int4Group::new(cols).unwrap(),
    }
}

/// A kind per matrix with every group size in one blob (vectors f32).
fn mixed_kind(id: TensorId) -> StorageKind {
    match id {
        TensorId::W_E => StorageKind::Int8,
        TensorId::W_pos => int4(64),
        TensorId::W_Q => int4(16),
        TensorId::W_K => int4(32),
        TensorId::W_V => int4(128),
        TensorId::W_O => int4(16),
        TensorId::W_U => int4(16),
        _ => StorageKind::F32,
    }
}

fn load(name: &str) -> tinylens_host::weights::Weights {
    let d = fixture(name);
    tl::load_files(&d.join("model.safetensors"), &d.join("config.json")).unwrap()
}

/// Element `(r, c)` of table entry `index` read from the blob's bytes alone, as
/// core/BLOB_FORMAT.md specifies (no core code): nibble, group from the entry's bytes
/// 20..22, scale `[r, c / G]` after the values padded to 4.
fn spec_int4(bytes: &[u8], index: usize, r: usize, c: usize) -> f32 {
    let e = &bytes[blob::HEADER_LEN + index * blob::ENTRY_LEN..][..blob::ENTRY_LEN];
    let u32_at = |i: usize| u32::from_le_bytes(e[i..i + 4].try_into().unwrap()) as usize;
    assert_eq!(e[1], 3, "entry {index} is int4");
    let (cols, offset) = (u32_at(8), u32_at(12));
    let rows = u32_at(4);
    let g = u16::from_le_bytes([e[20], e[21]]) as usize;
    let data = &bytes[offset..];
    let row_bytes = cols.div_ceil(2);
    let byte = data[r * row_bytes + c / 2];
    let nibble = if c.is_multiple_of(2) {
        byte & 0xf
    } else {
        byte >> 4
    };
    let level = ((nibble << 4) as i8 >> 4) as f32;
    let scales = (rows * row_bytes).next_multiple_of(4);
    let s = scales + 2 * (r * cols.div_ceil(g) + c / g);
    let scale = half_to_f32(u16::from_le_bytes([data[s], data[s + 1]]));
    level * scale
}

/// IEEE half to f32, by the definition (for the finite scales a valid blob holds).
fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f32;
    assert!(exp != 31, "non-finite scale");
    sign * if exp == 0 {
        frac * 2f32.powi(-24)
    } else {
        (1.0 + frac / 1024.0) * 2f32.powi(exp - 15)
    }
}

/// A fixture with every group size: version 2, each tensor's group as written, every
/// weight what the format specifies and within half a step (plus clipping) of the
/// float weight; the logits those weights give in f32, up to the int8 activations.
#[test]
fn mixed_groups_round_trip_through_the_core() {
    for name in ["attn2_shortformer_ln", "attn2_standard_noln"] {
        let w = load(name);
        let kinds: Vec<StorageKind> = convert::stored_tensors(&w)
            .unwrap()
            .iter()
            .map(|(_, s, _)| mixed_kind(s.name.id))
            .collect();
        let q = quantize::quantize(&w, tl::Processing::NONE, None, &kinds, None).unwrap();
        let model = Model::from_bytes(&q.blob).unwrap();
        assert_eq!(
            model.version(),
            2,
            "{name}: a group other than 32 needs version 2"
        );
        let cfg = *model.config();
        let mut dequantized: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        for (i, slot, values) in convert::stored_tensors(&w).unwrap() {
            let t = model.tensor_at(i);
            assert_eq!(t.kind, kinds[i], "{name} {}", slot.name);
            let Some(group) = t.kind.int4_group() else {
                continue;
            };
            let (rows, cols, g) = (t.rows, t.cols, group.cols());
            let mut spec = vec![0.0f32; rows * cols];
            for r in 0..rows {
                for (k, seg) in values[r * cols..(r + 1) * cols].chunks(g).enumerate() {
                    let amax = seg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    for (j, v) in seg.iter().enumerate() {
                        let c = k * g + j;
                        let d = spec_int4(&q.blob, i, r, c);
                        assert_eq!(
                            d.to_bits(),
                            t.get(r, c).to_bits(),
                            "{name} {} [{r},{c}]",
                            slot.name
                        );
                        // Clipping costs at most 30% of the group's largest value.
                        assert!((v - d).abs() <= 0.3 * amax + 0.5 * amax / 7.0 + 1e-6);
                        spec[r * cols + c] = d;
                    }
                }
            }
            dequantized.insert(i, spec);
        }
        // The same weights in f32: the int4 tensors from the spec reading above.
        let (f32_blob, _) = write_blob_with(&w, tl::Processing::NONE, None, |i, slot, values| {
            let v = dequantized.get(&i).map_or(values, |d| d.as_slice());
            let kind = match kinds[i] {
                StorageKind::Int8 => StorageKind::Int8,
                _ => StorageKind::F32,
            };
            Ok((kind, convert::round_to_nearest(kind, slot, v)?))
        })
        .unwrap();
        let dense = Model::from_bytes(&f32_blob).unwrap();
        assert_eq!(dense.version(), 1);
        let reference = load_reference(name, "reference.safetensors");
        let prompts = prompts(&reference);
        let a = quantize::agreement(
            &quantize::logits(&dense, &prompts).unwrap(),
            &quantize::logits(&model, &prompts).unwrap(),
        );
        eprintln!(
            "{name}: mixed int4 groups vs their dequantized weights in f32: mean KL {:.2e}, top-1 {:.2}% of all",
            a.mean_kl,
            a.top1_all * 100.0
        );
        // Only the int8 quantization of the activations differs (int8 blobs keep the
        // KL to TransformerLens at about 1e-3).
        assert!(a.mean_kl <= 2e-3, "{name}: KL {}", a.mean_kl);
        assert!(a.top1_all >= 0.97, "{name}: top-1 {}", a.top1_all);

        // The host engine (SIMD blocks) gives the bits of stepping one token at a time
        // through the core's portable kernels.
        let tokens = &prompts[0];
        let mut ws = vec![0.0; cfg.workspace_len()];
        let mut s = Session::new(&model, &mut ws).unwrap();
        let stepped: Vec<u32> = tokens
            .iter()
            .flat_map(|t| s.step(*t).unwrap().to_vec())
            .map(f32::to_bits)
            .collect();
        let engine: Vec<u32> = quantize::logits(&model, std::slice::from_ref(tokens))
            .unwrap()
            .concat()
            .into_iter()
            .map(f32::to_bits)
            .collect();
        assert!(stepped == engine, "{name}: engine and stepping differ");
    }
}

/// Blobs whose int4 tensors all have groups of 32 are version 1, byte for byte what
/// the converter wrote before groups were stored (the committed demo blob is checked
/// against a fresh conversion in demo.rs); `--int4-group 32` is the same blob.
#[test]
fn default_groups_stay_version_1() {
    let w = load("attn1_ln");
    let g32 = convert::QuantPlan::for_kind(StorageKind::INT4);
    let (a, _) = convert::write_blob(&w, g32, tl::Processing::NONE, None).unwrap();
    assert_eq!(Model::from_bytes(&a).unwrap().version(), 1);
    assert_eq!(&a[8..10], &1u16.to_le_bytes());
    let g16 = convert::QuantPlan::for_kind(int4(16));
    let (b, _) = convert::write_blob(&w, g16, tl::Processing::NONE, None).unwrap();
    let m = Model::from_bytes(&b).unwrap();
    assert_eq!(m.version(), 2);
    assert_eq!(m.layer(0).w_q.kind, int4(16));
    // int4 keeps the embeddings in int8 at any group.
    assert_eq!(m.w_e().kind, StorageKind::Int8);
    assert!(b.len() > a.len(), "groups of 16 store twice the scales");
    for committed in [
        "firmware-examples/models/attn1_ln-int8.tlm",
        "firmware-examples/models/attn2_shortformer_ln-int8.tlm",
        "models/demo/demo-int8.tlm",
    ] {
        let bytes = std::fs::read(repo_root().join(committed)).unwrap();
        assert_eq!(
            Model::from_bytes(&bytes).unwrap().version(),
            1,
            "{committed}"
        );
    }
}

/// A flash budget between the all-int4/g32 blob and the one with a matrix in int8:
/// the plan spends the difference on smaller groups where the measured KL says they
/// pay (groups of 16 for some matrix), reports the group per matrix, and the blob it
/// makes is version 2 and within the budget.
#[test]
fn a_budget_picks_groups_other_than_32_when_they_pay() {
    let name = "attn2_shortformer_ln";
    let w = load(name);
    let cfg = convert::core_config(&w.cfg).unwrap();
    let prompts = calibration::repeated(&cfg, None, CALIBRATION_SEED, 8).unwrap();
    let tensors = convert::stored_tensors(&w).unwrap();
    let all = |k: StorageKind| -> Vec<StorageKind> {
        tensors
            .iter()
            .map(|(_, s, _)| match s.name.id {
                TensorId::W_E
                | TensorId::W_pos
                | TensorId::W_Q
                | TensorId::W_K
                | TensorId::W_V
                | TensorId::W_O
                | TensorId::W_U => k,
                _ => StorageKind::F32,
            })
            .collect()
    };
    let g32 = budget::blob_len(&w, &all(StorageKind::INT4), None).unwrap();
    let g16 = budget::blob_len(&w, &all(int4(16)), None).unwrap();
    // Room for groups of 16 everywhere (or some of that for int8 in a small matrix).
    let limit = g16;
    let plan = budget::plan(&w, tl::Processing::NONE, None, &prompts, limit).unwrap();
    let chosen: Vec<String> = plan
        .matrices
        .iter()
        .map(|m| format!("{} {}", m.name, m.chosen))
        .collect();
    eprintln!(
        "{name} in {limit} bytes (all int4/g32: {g32}, all int4/g16: {g16}): {} bytes, predicted KL {:.2e}: {}",
        plan.blob_bytes,
        plan.predicted_kl,
        chosen.join(", ")
    );
    assert!(plan.blob_bytes <= limit);
    let groups: Vec<Option<u16>> = plan.matrices.iter().map(|m| m.int4_group).collect();
    assert!(
        groups.contains(&Some(16)),
        "no group of 16 chosen: {chosen:?}"
    );
    for m in &plan.matrices {
        // The name and the group agree, and each option names its group.
        let kind = tinylens_host::cli::parse_kind(m.chosen).unwrap();
        assert_eq!(kind.int4_group().map(u16::from), m.int4_group, "{}", m.name);
        for o in &m.options {
            let k = tinylens_host::cli::parse_kind(o.kind).unwrap();
            assert_eq!(k.int4_group().map(u16::from), o.int4_group);
        }
    }
    // Every option of a matrix with groups to choose from was measured, and the chosen
    // group of 16 costs its scale bytes and measured less KL than 32 for that matrix.
    for m in plan.matrices.iter().filter(|m| m.int4_group == Some(16)) {
        let kl = |k: &str| {
            m.options
                .iter()
                .find(|o| o.kind == k)
                .map(|o| (o.bytes, o.kl))
        };
        if let (Some((b16, kl16)), Some((b32, kl32))) = (kl("int4/g16"), kl("int4/g32")) {
            assert!(b16 > b32, "{}", m.name);
            assert!(kl16 <= kl32, "{}: {kl16} vs {kl32}", m.name);
        }
    }
    let q =
        quantize::quantize(&w, tl::Processing::NONE, None, &plan.kinds, Some(&prompts)).unwrap();
    assert_eq!(q.blob.len(), plan.blob_bytes);
    assert_eq!(Model::from_bytes(&q.blob).unwrap().version(), 2);
}
