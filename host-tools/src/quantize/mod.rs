//! Quantization that keeps the circuits: calibrated (GPTQ) rounding through the device's
//! own numerics ([`calibration`], [`gptq`]), a storage kind per tensor chosen for a
//! flash budget ([`budget`]), and what survives of the model's circuits ([`survival`]).

pub mod budget;
pub mod calibration;
pub mod gptq;
pub mod survival;

use serde::Serialize;
use tinylens_core::blob::{Slot, TensorId};
use tinylens_core::{quant, Model, Processing, Session, StorageKind};

use crate::convert::{round_to_nearest, stored_tensors, write_blob_with, TensorReport};
use crate::numerics::log_softmax;
use crate::weights::Weights;
use crate::{Error, Result};

use gptq::Method;

/// How one matrix was rounded.
#[derive(Debug, Clone, Serialize)]
pub struct Rounding {
    pub name: String,
    pub kind: &'static str,
    pub method: Method,
    /// GPTQ's damping (fraction of the mean diagonal of H); None for round-to-nearest.
    pub damping: Option<f64>,
    /// Whether the target was the float model's output `W x_float` (compensating the
    /// error of the quantized earlier layers) rather than `W x_device`.
    pub compensates_upstream: bool,
    /// Output error over the calibration inputs, `Σ (w - q)ᵀ H (w - q)`, relative to
    /// the same for round-to-nearest (1 = no gain).
    pub relative_loss: f64,
    /// What the choice minimised, on the calibration data, when this matrix was
    /// chosen (the earlier ones quantized, the later ones in f32): the mean
    /// KL(float ‖ quantized) of the predictions plus that of the attention patterns.
    pub calibration_divergence: f64,
}

/// A blob made by [`quantize`].
#[derive(Debug, Clone)]
pub struct Quantized {
    pub blob: Vec<u8>,
    pub tensors: Vec<TensorReport>,
    /// One entry per matrix rounded with calibration.
    pub rounding: Vec<Rounding>,
}

/// Whether `kind` is rounded to integer levels (and its input quantized to int8).
fn integer(kind: StorageKind) -> bool {
    matches!(kind, StorageKind::Int8 | StorageKind::Int4 { .. })
}

/// Whether the matrix in `slot` is rounded with calibration when stored as `kind`.
fn calibrates(slot: &Slot, kind: StorageKind, n_layers: usize) -> bool {
    integer(kind) && stage(slot, n_layers).is_some()
}

/// The calibration stage of a matrix: the matrices of one stage read inputs that only
/// earlier stages change (Q, K, V of a layer; then its O; ...; then W_U). None for the
/// embeddings (looked up, not multiplied) and vectors.
fn stage(slot: &Slot, n_layers: usize) -> Option<usize> {
    let l = slot.name.layer as usize;
    match slot.name.id {
        TensorId::W_Q | TensorId::W_K | TensorId::W_V => Some(2 * l),
        TensorId::W_O => Some(2 * l + 1),
        TensorId::W_U => Some(2 * n_layers),
        _ => None,
    }
}

/// Writes `w` with storage `kinds` (one per blob tensor, in table order, vocabulary
/// excluded). With `calibration` prompts, every int8/int4 matrix is rounded against
/// its inputs as the device computes them, stage by stage in forward order, each stage
/// seeing the earlier stages already quantized (so later matrices also compensate the
/// error of earlier ones); without, everything is rounded to nearest.
///
/// Per calibrated matrix the candidates are GPTQ at each of [`gptq::DAMPINGS`] for
/// each of two targets, and round-to-nearest; GPTQ minimises the matrix's own output error, which is not
/// always what the model's predictions need (without LayerNorm, say, an error the
/// next layer amplifies costs more than its size), so the candidate kept is the one
/// with the least measured divergence of the whole model from the float model on the
/// calibration data — mean KL of the predictions plus mean KL of every head's
/// attention pattern, so that the circuits are kept and not only the outputs (the
/// matrices decided so far quantized, the later ones in f32). Candidates for GPTQ's
/// target: the float weights on the device's inputs, and the float model's outputs
/// (compensating the earlier layers' error, see `float_target`).
/// Deterministic: the same weights, kinds and prompts give the same bytes.
pub fn quantize(
    w: &Weights,
    processing: Processing,
    vocab: Option<&[String]>,
    kinds: &[StorageKind],
    calibration: Option<&[Vec<u32>]>,
) -> Result<Quantized> {
    let tensors = stored_tensors(w)?;
    if kinds.len() != tensors.len() {
        return Err(Error::Argument(format!(
            "{} storage kinds for {} tensors",
            kinds.len(),
            tensors.len()
        )));
    }
    let nl = w.cfg.n_layers;
    let mut done: Vec<Option<Vec<u8>>> = vec![None; tensors.len()];
    let mut rounding = Vec::new();
    if let Some(prompts) = calibration {
        // Everything that is not calibrated is rounded to nearest from the start.
        for (i, slot, values) in &tensors {
            if stage(slot, nl).is_none() || !integer(kinds[*i]) {
                done[*i] = Some(round_to_nearest(kinds[*i], slot, values)?);
            }
        }
        let f32s = vec![StorageKind::F32; tensors.len()];
        let float = blob_of(w, processing, &f32s, &vec![None; tensors.len()])?;
        let float_model = Model::from_bytes(&float)?;
        let reference = Outputs::of(&float_model, prompts)?;
        let float_acts = calibration::capture(&float_model, prompts)?;
        for s in 0..=2 * nl {
            let members: Vec<usize> = tensors
                .iter()
                .filter(|(i, slot, _)| stage(slot, nl) == Some(s) && integer(kinds[*i]))
                .map(|(i, _, _)| *i)
                .collect();
            if members.is_empty() {
                continue;
            }
            // Earlier stages as they will be stored, this stage and later ones rounded
            // to nearest: the inputs of this stage depend on the earlier stages' values
            // and on this stage's kinds only.
            let blob = blob_of(w, processing, kinds, &done)?;
            let acts = calibration::capture(&Model::from_bytes(&blob)?, prompts)?;
            for i in members {
                let (_, slot, values) = &tensors[i];
                let nearest = round_to_nearest(kinds[i], slot, values)?;
                let mut candidates = vec![(None, nearest, 1.0)];
                for upstream in [false, true] {
                    for damping in gptq::DAMPINGS {
                        let float_in = upstream.then_some(&float_acts);
                        let (bytes, method, rel) =
                            calibrated(kinds[i], slot, values, &acts, float_in, w, damping)?;
                        candidates.push((Some((method, damping, upstream)), bytes, rel));
                    }
                }
                // Measured with the later matrices in f32.
                let mut trial_kinds = kinds.to_vec();
                let mut trial = done.clone();
                for (j, _, _) in &tensors {
                    if done[*j].is_none() && *j != i {
                        trial_kinds[*j] = StorageKind::F32;
                    }
                }
                let mut best: Option<(f64, usize)> = None;
                for (c, (_, bytes, _)) in candidates.iter().enumerate() {
                    trial[i] = Some(bytes.clone());
                    let b = blob_of(w, processing, &trial_kinds, &trial)?;
                    let kl = reference.divergence(&Outputs::of(&Model::from_bytes(&b)?, prompts)?);
                    if best.is_none_or(|(k, _)| kl < k) {
                        best = Some((kl, c));
                    }
                }
                let (kl, c) = best.expect("at least one candidate");
                let (choice, bytes, rel) = candidates.swap_remove(c);
                rounding.push(Rounding {
                    name: slot.name.to_string(),
                    kind: kinds[i].name(),
                    method: choice.map_or(Method::Nearest, |(m, _, _)| m),
                    damping: choice.map(|(_, d, _)| d),
                    compensates_upstream: choice.is_some_and(|(_, _, u)| u),
                    relative_loss: rel,
                    calibration_divergence: kl,
                });
                done[i] = Some(bytes);
            }
        }
    }
    let (blob, reports) = write_blob_with(w, processing, vocab, |i, slot, v| match &done[i] {
        Some(b) => Ok((kinds[i], b.clone())),
        None => Ok((kinds[i], round_to_nearest(kinds[i], slot, v)?)),
    })?;
    Ok(Quantized {
        blob,
        tensors: reports,
        rounding,
    })
}

/// A blob (no vocabulary) with `kinds`, taking the data in `done` where given and
/// rounding the rest to nearest.
pub(crate) fn blob_of(
    w: &Weights,
    processing: Processing,
    kinds: &[StorageKind],
    done: &[Option<Vec<u8>>],
) -> Result<Vec<u8>> {
    Ok(
        write_blob_with(w, processing, None, |i, slot, v| match &done[i] {
            Some(b) => Ok((kinds[i], b.clone())),
            None => Ok((kinds[i], round_to_nearest(kinds[i], slot, v)?)),
        })?
        .0,
    )
}

/// GPTQ of one matrix against its captured inputs: W_O per head (each head's rows read
/// only that head's `z`). Returns the data, the method most rows used, and the output
/// error relative to round-to-nearest's.
pub(crate) fn calibrated(
    kind: StorageKind,
    slot: &Slot,
    values: &[f32],
    acts: &calibration::Activations,
    float_acts: Option<&calibration::Activations>,
    w: &Weights,
    damping: f64,
) -> Result<(Vec<u8>, Method, f64)> {
    let (rows, cols) = (slot.rows as usize, slot.cols as usize);
    let l = slot.name.layer as usize;
    let inputs = |a: &'_ calibration::Activations| -> Vec<(usize, Vec<Vec<f32>>)> {
        match slot.name.id {
            TensorId::W_V => vec![(rows, a.attn_in[l].clone())],
            TensorId::W_Q | TensorId::W_K => vec![(rows, a.qk(l).to_vec())],
            TensorId::W_O => a.z[l].iter().map(|z| (w.cfg.d_model, z.clone())).collect(),
            _ => vec![(rows, a.final_in.clone())],
        }
    };
    let blocks = inputs(acts);
    let float_blocks = float_acts.map(inputs);
    let (mut levels, mut scales) = (Vec::new(), Vec::new());
    let (mut loss, mut nearest, mut methods) = (0.0, 0.0, Vec::new());
    let mut row = 0;
    for (b, (n, samples)) in blocks.iter().enumerate() {
        let n = *n;
        let h = calibration::hessian(samples, true);
        let block = &values[row * cols..(row + n) * cols];
        let target = match &float_blocks {
            Some(fb) => float_target(block, n, cols, &h, &fb[b].1, samples, damping),
            None => block.to_vec(),
        };
        let r = gptq::quantize(kind, n, cols, &target, &h, damping);
        levels.extend(r.levels);
        scales.extend(r.scales);
        loss += r.loss;
        nearest += r.nearest_loss;
        methods.push(r.method);
        row += n;
    }
    let mut bytes = vec![0u8; kind.data_len(rows, cols).unwrap_or(0)];
    if row != rows || !quant::pack(kind, rows, cols, &levels, &scales, &mut bytes) {
        return Err(Error::Argument(format!(
            "{}: calibrated rounding failed",
            slot.name
        )));
    }
    // The method most of the blocks used (ties: the first).
    let method = [Method::Gptq, Method::GptqActOrder, Method::Nearest]
        .into_iter()
        .max_by_key(|m| methods.iter().filter(|x| *x == m).count())
        .unwrap_or(Method::Nearest);
    let rel = if nearest > 0.0 { loss / nearest } else { 1.0 };
    Ok((bytes, method, rel))
}

/// The weights `W̃ = W C (H + λ)⁻¹` whose output on the device's inputs is closest to
/// the float model's (`C = Σ x_float x_deviceᵀ`, `H = Σ x_device x_deviceᵀ`): since
/// `Σ ||W x_float - Q x_device||² = Σ ||(W̃ - Q) x_device||² + const`, GPTQ of W̃ with H
/// rounds W towards what the float model computes, compensating the error the
/// quantized earlier layers left in the inputs (the asymmetric form of GPTQ's
/// objective). Falls back to W when the system cannot be solved.
fn float_target(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &gptq::Hessian,
    float: &[Vec<f32>],
    device: &[Vec<f32>],
    damping: f64,
) -> Vec<f32> {
    let c = calibration::cross(float, device);
    let mut hd = h.h.clone();
    let mean = (0..cols).map(|i| hd[(i, i)]).sum::<f64>() / cols.max(1) as f64;
    for i in 0..cols {
        if hd[(i, i)] <= 0.0 {
            hd[(i, i)] = 1.0;
        }
        hd[(i, i)] += damping * mean;
    }
    let wm = nalgebra::DMatrix::from_fn(rows, cols, |r, k| w[r * cols + k] as f64);
    // W̃ᵀ = (H + λ)⁻¹ Cᵀ Wᵀ.
    let Some(chol) = hd.cholesky() else {
        return w.to_vec();
    };
    let t = chol.solve(&(c.transpose() * wm.transpose()));
    let out: Vec<f32> = (0..rows)
        .flat_map(|r| (0..cols).map(move |k| (r, k)))
        .map(|(r, k)| t[(k, r)] as f32)
        .collect();
    if out.iter().all(|v| v.is_finite()) {
        out
    } else {
        w.to_vec()
    }
}

/// What the calibrated quantizer compares between the float model and a candidate:
/// the logits and every head's attention pattern at every position.
struct Outputs {
    logits: Vec<Vec<f32>>,
    patterns: Vec<Vec<f32>>,
}

struct PatternRows(Vec<Vec<f32>>);

impl tinylens_core::Hooks for PatternRows {
    fn wants(&self, point: tinylens_core::HookPoint) -> bool {
        point == tinylens_core::HookPoint::Pattern
    }

    fn hook(&mut self, _site: tinylens_core::Site, value: &mut [f32]) {
        self.0.push(value.to_vec());
    }
}

impl Outputs {
    fn of(model: &Model<'_>, prompts: &[Vec<u32>]) -> Result<Outputs> {
        let mut ws = vec![0.0f32; model.config().workspace_len()];
        let mut s = Session::new(model, &mut ws)?;
        let mut pats = PatternRows(Vec::new());
        let mut logits = Vec::new();
        for p in prompts {
            s.reset();
            for &t in p {
                logits.push(s.step_with(t, &mut pats)?.to_vec());
            }
        }
        Ok(Outputs {
            logits,
            patterns: pats.0,
        })
    }

    /// Mean KL of the predictions plus mean KL of the attention patterns (per head and
    /// query position): the predictions, and the circuits that make them.
    fn divergence(&self, other: &Outputs) -> f64 {
        let logits = agreement(&self.logits, &other.logits).mean_kl;
        let mut kl = 0.0;
        for (p, q) in self.patterns.iter().zip(&other.patterns) {
            kl += p
                .iter()
                .zip(q)
                .filter(|(a, _)| **a > 0.0)
                .map(|(a, b)| {
                    let (a, b) = (*a as f64, (*b as f64).max(1e-30));
                    a * (a / b).ln()
                })
                .sum::<f64>();
        }
        logits + kl / self.patterns.len().max(1) as f64
    }
}

/// The logits of every position of every prompt, through the host engine (blocks of
/// positions; the same bits as stepping).
pub fn logits(model: &Model<'_>, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
    let v = model.config().d_vocab_out as usize;
    let mut out = Vec::new();
    for p in prompts {
        out.extend(
            prompt_logits(model, p)?
                .chunks_exact(v)
                .map(<[f32]>::to_vec),
        );
    }
    Ok(out)
}

/// The logits `[pos * d_vocab_out]` of one prompt.
fn prompt_logits(model: &Model<'_>, prompt: &[u32]) -> Result<Vec<f32>> {
    let engine = crate::engine::Engine::new(model);
    let sampling = crate::engine::Sampling::default();
    Ok(engine
        .run(prompt, 0, &sampling, &mut tinylens_core::NoHooks)?
        .logits)
}

/// [`agreement`] of `ours` with `reference` on `prompts`, one prompt at a time (memory:
/// two prompts' logits, whatever the number of prompts).
pub fn agreement_on(
    reference: &Model<'_>,
    ours: &Model<'_>,
    prompts: &[Vec<u32>],
) -> Result<Agreement> {
    let v = reference.config().d_vocab_out as usize;
    let mut sum = AgreementSum::default();
    for p in prompts {
        let (r, o) = (prompt_logits(reference, p)?, prompt_logits(ours, p)?);
        for (r, o) in r.chunks_exact(v).zip(o.chunks_exact(v)) {
            sum.add(r, o);
        }
    }
    Ok(sum.finish())
}

/// Agreement of a model's logits with reference logits, position by position.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Agreement {
    /// Mean KL(reference ‖ model) over every position.
    pub mean_kl: f64,
    /// Top-1 agreement where the reference predicts (top-1 probability >= 0.5).
    pub top1_predicted: f64,
    /// Number of those positions.
    pub predicted: usize,
    /// Top-1 agreement over every position.
    pub top1_all: f64,
}

/// Compares `ours` with `reference` (the same positions in the same order).
pub fn agreement(reference: &[Vec<f32>], ours: &[Vec<f32>]) -> Agreement {
    let mut sum = AgreementSum::default();
    for (r, o) in reference.iter().zip(ours) {
        sum.add(r, o);
    }
    sum.finish()
}

/// Running sums of an [`Agreement`], a position at a time.
#[derive(Default)]
struct AgreementSum {
    kl: f64,
    positions: usize,
    same: usize,
    same_pred: usize,
    predicted: usize,
}

impl AgreementSum {
    fn add(&mut self, r: &[f32], o: &[f32]) {
        let (lr, lo) = (log_softmax(r), log_softmax(o));
        self.kl += lr
            .iter()
            .zip(&lo)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
        let (ar, ao) = (
            tinylens_core::sample::greedy(r),
            tinylens_core::sample::greedy(o),
        );
        self.positions += 1;
        self.same += (ar == ao) as usize;
        if lr[ar as usize].exp() >= 0.5 {
            self.predicted += 1;
            self.same_pred += (ar == ao) as usize;
        }
    }

    fn finish(&self) -> Agreement {
        let n = self.positions.max(1) as f64;
        Agreement {
            mean_kl: self.kl / n,
            top1_predicted: if self.predicted > 0 {
                self.same_pred as f64 / self.predicted as f64
            } else {
                f64::NAN
            },
            predicted: self.predicted,
            top1_all: self.same as f64 / n,
        }
    }
}

/// Storage kinds for [`quantize`] from a per-group plan.
pub fn kinds_for(w: &Weights, plan: crate::convert::QuantPlan) -> Result<Vec<StorageKind>> {
    Ok(stored_tensors(w)?
        .iter()
        .map(|(_, slot, _)| plan.kind_of(slot.name.id))
        .collect())
}
