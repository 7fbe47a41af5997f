//! `--quant auto --flash-budget SIZE`: a storage kind per matrix, chosen to minimise
//! the measured KL on the calibration data within a flash budget.
//!
//! 1. Sensitivity: for every matrix and every kind (f16, int8, int4 at each group
//!    size the matrix can tell apart, see [`candidates`]), the model with
//!    only that matrix quantized (int8/int4 by GPTQ against the float model's inputs)
//!    is run on the calibration data and its mean KL(float ‖ quantized) measured; f32
//!    costs nothing.
//! 2. Choice: the per-matrix KLs are taken as additive (first order: the matrices'
//!    errors are small and nearly independent), and the kinds that minimise their sum
//!    within the budget are found exactly by a multiple-choice knapsack (dynamic
//!    programming over the budget in 16-byte units, the blob's alignment).
//! 3. The chosen kinds are quantized together (calibrated, stage by stage) and the
//!    real KL is measured and reported beside the predicted sum.
//!
//! The budget is the whole blob — header, table, alignment, vectors (always f32) and
//! vocabulary included: what the flash must hold. The int4 group is part of the
//! choice: a group of 16 columns spends twice the scale bytes of 32 and follows the
//! weights more closely, one of 128 a quarter of them.

use serde::Serialize;
use tinylens_core::blob::{self, TensorId};
use tinylens_core::{Int4Group, Model, Processing, StorageKind};

use crate::convert::{core_config, stored_tensors};
use crate::weights::Weights;
use crate::{Error, Result};

use crate::convert::round_to_nearest;

use super::{agreement, blob_of, calibrated, calibrates, calibration, gptq, logits};

/// The kinds a matrix of `cols` columns may get, most precise first (ties go to the
/// more precise): f32, f16, int8, then int4 from the smallest group up. Every group as
/// wide as the row or wider is one scale per row and stores the same bytes, so only
/// one of them is tried: the default 32 when it is one of them (keeping the blob in
/// format version 1 where nothing is gained), else the narrowest.
pub fn candidates(cols: usize) -> Vec<StorageKind> {
    let mut kinds = vec![StorageKind::F32, StorageKind::F16, StorageKind::Int8];
    let whole_row = cols.next_power_of_two().max(Int4Group::DEFAULT.cols());
    for group in Int4Group::ALL {
        if group.cols() < cols || group.cols() == whole_row {
            kinds.push(StorageKind::Int4 { group });
        }
    }
    kinds
}

/// A kind's name in the plan, the int4 group always written out (`int4/g32` too):
/// there the groups compete. (`cli::parse_kind` reads these names.)
pub fn label(kind: StorageKind) -> &'static str {
    if kind == StorageKind::INT4 {
        "int4/g32"
    } else {
        kind.name()
    }
}

/// Parses a size: `96KiB`, `40KiB`, `1MiB`, `64KB` (1000 bytes), `50000` (bytes).
pub fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" | "k" => 1024.0,
        "kb" => 1000.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "mb" => 1e6,
        _ => {
            return Err(Error::Argument(format!(
                "flash budget `{s}`: unknown unit (B, KB, KiB, MB, MiB)"
            )))
        }
    };
    let v: f64 = num
        .parse()
        .map_err(|_| Error::Argument(format!("flash budget `{s}` is not a size")))?;
    let bytes = v * mult;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u32::MAX as f64) {
        return Err(Error::Argument(format!(
            "flash budget `{s}` is out of range"
        )));
    }
    Ok(bytes as usize)
}

/// Exact size of the blob with these kinds (and a vocabulary of `vocab_len` bytes).
pub fn blob_len(w: &Weights, kinds: &[StorageKind], vocab_len: Option<usize>) -> Result<usize> {
    let cfg = core_config(&w.cfg)?;
    let n = blob::tensor_count(&cfg) + vocab_len.is_some() as usize;
    let mut end = (blob::HEADER_LEN + n * blob::ENTRY_LEN).next_multiple_of(blob::ALIGN);
    for (i, kind) in kinds.iter().enumerate() {
        let slot = blob::slot(&cfg, i).expect("index below tensor count");
        end = end.next_multiple_of(blob::ALIGN)
            + kind
                .data_len(slot.rows as usize, slot.cols as usize)
                .ok_or_else(|| Error::Config("tensor too large".into()))?;
    }
    if let Some(v) = vocab_len {
        end = end.next_multiple_of(blob::ALIGN) + v;
    }
    Ok(end)
}

/// Bytes of the encoded vocabulary (offsets and strings).
pub fn vocab_len(vocab: &[String]) -> usize {
    (vocab.len() + 1) * 4 + vocab.iter().map(|s| s.len()).sum::<usize>()
}

/// The measured cost of one kind for one matrix.
#[derive(Debug, Clone, Serialize)]
pub struct KindOption {
    pub kind: &'static str,
    /// Columns per scale, for int4.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub int4_group: Option<u16>,
    pub bytes: usize,
    /// Mean KL(float ‖ model with only this matrix quantized).
    pub kl: f64,
}

/// One matrix: its options and the chosen one.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    pub name: String,
    pub chosen: &'static str,
    /// Columns per scale of the chosen kind, for int4.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub int4_group: Option<u16>,
    pub options: Vec<KindOption>,
}

/// The result of the search.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    #[serde(skip)]
    pub kinds: Vec<StorageKind>,
    pub budget_bytes: usize,
    /// Size of the blob with the chosen kinds.
    pub blob_bytes: usize,
    /// Sum of the chosen options' KLs (the knapsack's objective).
    pub predicted_kl: f64,
    pub matrices: Vec<Choice>,
}

fn is_matrix(id: TensorId) -> bool {
    matches!(
        id,
        TensorId::W_E
            | TensorId::W_pos
            | TensorId::W_Q
            | TensorId::W_K
            | TensorId::W_V
            | TensorId::W_O
            | TensorId::W_U
    )
}

/// Chooses a kind per matrix for `budget` bytes (see the module docs).
pub fn plan(
    w: &Weights,
    processing: Processing,
    vocab: Option<&[String]>,
    prompts: &[Vec<u32>],
    budget: usize,
) -> Result<Plan> {
    let tensors = stored_tensors(w)?;
    let base: Vec<StorageKind> = vec![StorageKind::F32; tensors.len()];
    let vlen = vocab.map(vocab_len);
    let matrices: Vec<usize> = tensors
        .iter()
        .filter(|(_, s, _)| is_matrix(s.name.id))
        .map(|(i, _, _)| *i)
        .collect();
    let with = |i: usize, k: StorageKind| {
        let mut v = base.clone();
        v[i] = k;
        v
    };
    // The smallest possible blob: every matrix int4 in the widest groups.
    let mut smallest = base.clone();
    for &i in &matrices {
        smallest[i] = StorageKind::Int4 {
            group: Int4Group::G128,
        };
    }
    let min_len = blob_len(w, &smallest, vlen)?;
    if min_len > budget {
        return Err(Error::Argument(format!(
            "flash budget {budget} bytes is below the smallest blob this model makes ({min_len} bytes, every matrix int4/g128)"
        )));
    }
    // Sensitivities: each matrix alone quantized, so its inputs are the float model's,
    // captured once; calibrated by GPTQ (1% damping) as `quantize` would.
    let none: Vec<Option<Vec<u8>>> = vec![None; tensors.len()];
    let float = blob_of(w, processing, &base, &none)?;
    let float_model = Model::from_bytes(&float)?;
    let reference = logits(&float_model, prompts)?;
    let acts = calibration::capture(&float_model, prompts)?;
    let fixed = blob_len(w, &base, vlen)?
        - matrices
            .iter()
            .map(|&i| cost(w, &with(i, StorageKind::F32), i))
            .sum::<Result<usize>>()?;
    let mut options: Vec<Vec<(StorageKind, usize, f64)>> = Vec::new();
    for &i in &matrices {
        let (_, slot, values) = &tensors[i];
        let mut opts = Vec::new();
        for k in candidates(slot.cols as usize) {
            let kinds = with(i, k);
            let kl = if k == StorageKind::F32 {
                0.0
            } else {
                let bytes = if calibrates(slot, k, w.cfg.n_layers) {
                    calibrated(k, slot, values, &acts, None, w, gptq::DAMPING)?.0
                } else {
                    round_to_nearest(k, slot, values)?
                };
                let mut done = none.clone();
                done[i] = Some(bytes);
                let b = blob_of(w, processing, &kinds, &done)?;
                agreement(&reference, &logits(&Model::from_bytes(&b)?, prompts)?)
                    .mean_kl
                    .max(0.0)
            };
            opts.push((k, cost(w, &kinds, i)?, kl));
        }
        options.push(opts);
    }
    // Multiple-choice knapsack in ALIGN-byte units; each option's cost is its data
    // rounded up to the alignment, so the sum bounds the blob from above.
    let unit = blob::ALIGN;
    let cap = (budget - fixed.min(budget)) / unit;
    let units = |b: usize| b.div_ceil(unit);
    const NONE: f64 = f64::INFINITY;
    let mut best = vec![NONE; cap + 1];
    best[0] = 0.0;
    // best[c]: least KL sum of the matrices so far with exactly c units used.
    let mut picks: Vec<Vec<u8>> = Vec::new();
    for opts in &options {
        let mut next = vec![NONE; cap + 1];
        let mut pick = vec![0u8; cap + 1];
        for c in 0..=cap {
            for (j, (_, bytes, kl)) in opts.iter().enumerate() {
                let u = units(*bytes);
                if u <= c && best[c - u] + kl < next[c] {
                    next[c] = best[c - u] + kl;
                    pick[c] = j as u8;
                }
            }
        }
        best = next;
        picks.push(pick);
    }
    let (mut c, predicted) = best
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(&b.0)))
        .map(|(c, v)| (c, *v))
        .ok_or_else(|| {
            Error::Argument(format!(
                "flash budget {budget} bytes: no choice of kinds fits (the smallest blob is {min_len} bytes)"
            ))
        })?;
    let mut kinds = base.clone();
    let mut chosen = vec![0usize; matrices.len()];
    for m in (0..matrices.len()).rev() {
        let j = picks[m][c] as usize;
        chosen[m] = j;
        kinds[matrices[m]] = options[m][j].0;
        c -= units(options[m][j].1);
    }
    let blob_bytes = blob_len(w, &kinds, vlen)?;
    Ok(Plan {
        matrices: matrices
            .iter()
            .enumerate()
            .map(|(m, &i)| Choice {
                name: tensors[i].1.name.to_string(),
                chosen: label(options[m][chosen[m]].0),
                int4_group: options[m][chosen[m]].0.int4_group().map(u16::from),
                options: options[m]
                    .iter()
                    .map(|(k, bytes, kl)| KindOption {
                        kind: label(*k),
                        int4_group: k.int4_group().map(u16::from),
                        bytes: *bytes,
                        kl: *kl,
                    })
                    .collect(),
            })
            .collect(),
        kinds,
        budget_bytes: budget,
        blob_bytes,
        predicted_kl: predicted,
    })
}

/// Bytes of matrix `i` under `kinds`, rounded up to the alignment.
fn cost(w: &Weights, kinds: &[StorageKind], i: usize) -> Result<usize> {
    let cfg = core_config(&w.cfg)?;
    let slot = blob::slot(&cfg, i).expect("index below tensor count");
    Ok(kinds[i]
        .data_len(slot.rows as usize, slot.cols as usize)
        .ok_or_else(|| Error::Config("tensor too large".into()))?
        .next_multiple_of(blob::ALIGN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_try_each_group_the_row_can_tell_apart() {
        let names = |cols| -> Vec<&str> { candidates(cols).into_iter().map(label).collect() };
        let all = [
            "f32",
            "f16",
            "int8",
            "int4/g16",
            "int4/g32",
            "int4/g64",
            "int4/g128",
        ];
        assert_eq!(names(200), all);
        assert_eq!(names(128), all);
        assert_eq!(names(64), all[..6]);
        assert_eq!(names(40), all[..6]);
        assert_eq!(names(32), all[..5]);
        assert_eq!(names(17), all[..5]);
        // One group per row at any size: tried once, at the default group.
        assert_eq!(names(16), ["f32", "f16", "int8", "int4/g32"]);
        assert_eq!(names(5), ["f32", "f16", "int8", "int4/g32"]);
        for name in all {
            let k = crate::cli::parse_kind(name).unwrap();
            assert_eq!(label(k), name);
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("96KiB").unwrap(), 96 * 1024);
        assert_eq!(parse_size("40 KiB").unwrap(), 40 * 1024);
        assert_eq!(parse_size("64KB").unwrap(), 64_000);
        assert_eq!(parse_size("1.5MiB").unwrap(), 1_572_864);
        assert_eq!(parse_size("5000").unwrap(), 5000);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("0").is_err());
    }
}
