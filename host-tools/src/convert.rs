//! Host weights ⇄ model blob: writing a blob with a chosen storage kind (and measuring
//! what quantization cost per tensor), and reading a blob back into dense weights — the
//! weights the device really computes with — for analysis.

use nalgebra::{DMatrix, DVector};
use serde::Serialize;
use tinylens_core::blob::{self, Slot, TensorId};
use tinylens_core::{quant, Config, Model, Normalization, Positional, Processing, StorageKind};

use crate::weights::{self, LayerWeights, ModelConfig, Weights};
use crate::{Error, Result};

/// What quantization did to one tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    pub name: String,
    pub kind: &'static str,
    /// Stored shape `[rows, cols]` (one output per row).
    pub shape: [usize; 2],
    pub bytes: usize,
    pub max_abs_error: f32,
    /// `||w - q(w)|| / ||w||` (0 for an all-zero tensor).
    pub relative_rms_error: f32,
}

/// The core's config for host weights.
pub fn core_config(cfg: &ModelConfig) -> Result<Config> {
    let u = |v: usize, field: &str| {
        u32::try_from(v).map_err(|_| Error::Config(format!("{field} = {v} is too large")))
    };
    let c = Config {
        n_layers: u(cfg.n_layers, "n_layers")?,
        n_heads: u(cfg.n_heads, "n_heads")?,
        d_model: u(cfg.d_model, "d_model")?,
        d_head: u(cfg.d_head, "d_head")?,
        d_vocab: u(cfg.d_vocab, "d_vocab")?,
        d_vocab_out: u(cfg.d_vocab_out, "d_vocab_out")?,
        n_ctx: u(cfg.n_ctx, "n_ctx")?,
        normalization: match cfg.normalization {
            weights::Normalization::None => Normalization::None,
            weights::Normalization::LN => Normalization::LN,
            weights::Normalization::LNPre => Normalization::LNPre,
        },
        positional: match cfg.positional {
            weights::PositionalEmbedding::Standard => Positional::Standard,
            weights::PositionalEmbedding::Shortformer => Positional::Shortformer,
        },
        eps: cfg.eps,
        attn_scale: cfg.attn_scale,
    };
    c.validate()?;
    Ok(c)
}

/// Host config from the core's.
pub fn host_config(c: &Config) -> ModelConfig {
    ModelConfig {
        n_layers: c.n_layers as usize,
        d_model: c.d_model as usize,
        d_head: c.d_head as usize,
        n_heads: c.n_heads as usize,
        d_vocab: c.d_vocab as usize,
        d_vocab_out: c.d_vocab_out as usize,
        n_ctx: c.n_ctx as usize,
        normalization: match c.normalization {
            Normalization::None => weights::Normalization::None,
            Normalization::LN => weights::Normalization::LN,
            Normalization::LNPre => weights::Normalization::LNPre,
        },
        positional: match c.positional {
            Positional::Standard => weights::PositionalEmbedding::Standard,
            Positional::Shortformer => weights::PositionalEmbedding::Shortformer,
        },
        eps: c.eps,
        attn_scale: c.attn_scale,
    }
}

/// Storage kinds per group of tensors. Vectors (biases, LayerNorm) are always f32:
/// they are a tiny part of the model and every error in them reaches every position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantPlan {
    /// `W_Q`, `W_K`, `W_V`, `W_O`.
    pub attention: StorageKind,
    /// `W_E`, `W_pos`, `W_U`.
    pub embeddings: StorageKind,
}

impl QuantPlan {
    /// The plan for `--quant KIND`: every matrix in `kind`, except that int4 (at any
    /// group size) keeps the embeddings and unembedding in int8 (as llama.cpp-style
    /// quantizers do): they are a small share of a model's matrices and int4 there
    /// costs most of its accuracy.
    pub fn for_kind(kind: StorageKind) -> Self {
        QuantPlan {
            attention: kind,
            embeddings: match kind {
                StorageKind::Int4 { .. } => StorageKind::Int8,
                k => k,
            },
        }
    }

    /// Every matrix in `kind`.
    pub fn uniform(kind: StorageKind) -> Self {
        QuantPlan {
            attention: kind,
            embeddings: kind,
        }
    }

    pub fn kind_of(&self, id: TensorId) -> StorageKind {
        match id {
            TensorId::W_E | TensorId::W_pos | TensorId::W_U => self.embeddings,
            TensorId::W_Q | TensorId::W_K | TensorId::W_V | TensorId::W_O => self.attention,
            _ => StorageKind::F32,
        }
    }
}

/// The tensor for `slot` in stored layout (row-major `rows x cols`).
fn stored(w: &Weights, slot: &Slot) -> Result<Vec<f32>> {
    let l = slot.name.layer as usize;
    let missing = || Error::MissingTensor {
        name: slot.name.to_string(),
    };
    let layer = || w.layers.get(l).ok_or_else(missing);
    let vec = |v: &DVector<f32>| v.iter().copied().collect::<Vec<f32>>();
    // Row-major copy of a (column-major) nalgebra matrix, optionally transposed.
    let rows_of = |m: &DMatrix<f32>, transpose: bool| -> Vec<f32> {
        let m = if transpose { m.transpose() } else { m.clone() };
        let mut out = Vec::with_capacity(m.len());
        for r in 0..m.nrows() {
            out.extend(m.row(r).iter());
        }
        out
    };
    let heads =
        |ms: &[DMatrix<f32>]| -> Vec<f32> { ms.iter().flat_map(|m| rows_of(m, true)).collect() };
    let data = match slot.name.id {
        TensorId::W_E => rows_of(&w.w_e, false),
        TensorId::W_pos => rows_of(&w.w_pos, false),
        TensorId::W_U => rows_of(&w.w_u, true),
        TensorId::b_U => vec(&w.b_u),
        TensorId::ln_final_w => vec(w.ln_final_w.as_ref().ok_or_else(missing)?),
        TensorId::ln_final_b => vec(w.ln_final_b.as_ref().ok_or_else(missing)?),
        TensorId::ln1_w => vec(layer()?.ln1_w.as_ref().ok_or_else(missing)?),
        TensorId::ln1_b => vec(layer()?.ln1_b.as_ref().ok_or_else(missing)?),
        TensorId::W_Q => heads(&layer()?.w_q),
        TensorId::W_K => heads(&layer()?.w_k),
        TensorId::W_V => heads(&layer()?.w_v),
        TensorId::W_O => heads(&layer()?.w_o),
        TensorId::b_Q => layer()?.b_q.iter().flat_map(vec).collect(),
        TensorId::b_K => layer()?.b_k.iter().flat_map(vec).collect(),
        TensorId::b_V => layer()?.b_v.iter().flat_map(vec).collect(),
        TensorId::b_O => vec(&layer()?.b_o),
        TensorId::Vocab => return Err(Error::Argument("vocab is not a float tensor".into())),
    };
    if data.len() != slot.rows as usize * slot.cols as usize {
        return Err(Error::TensorShape {
            name: slot.name.to_string(),
            expected: vec![slot.rows as usize, slot.cols as usize],
            got: vec![data.len()],
        });
    }
    if data.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFiniteWeight {
            name: slot.name.to_string(),
        });
    }
    Ok(data)
}

fn encode_vocab(vocab: &[String]) -> Vec<u8> {
    let mut offsets = Vec::with_capacity(vocab.len() + 1);
    let mut strings = Vec::new();
    offsets.push(0u32);
    for s in vocab {
        strings.extend_from_slice(s.as_bytes());
        offsets.push(strings.len() as u32);
    }
    let mut out: Vec<u8> = offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
    out.extend(strings);
    out
}

/// Writes `w` as a blob with the storage kinds of `plan` (round-to-nearest, with the
/// int4 clipping search). Returns the blob and, per tensor, the quantization error.
pub fn write_blob(
    w: &Weights,
    plan: QuantPlan,
    processing: Processing,
    vocab: Option<&[String]>,
) -> Result<(Vec<u8>, Vec<TensorReport>)> {
    if plan.attention == StorageKind::Bytes || plan.embeddings == StorageKind::Bytes {
        return Err(Error::Argument(
            "storage kind must be f32, f16, int8 or int4".into(),
        ));
    }
    write_blob_with(w, processing, vocab, |_, slot, values| {
        let kind = plan.kind_of(slot.name.id);
        Ok((kind, round_to_nearest(kind, slot, values)?))
    })
}

/// The data of one tensor stored as `kind` by round-to-nearest ([`quant::quantize`]).
pub fn round_to_nearest(kind: StorageKind, slot: &Slot, values: &[f32]) -> Result<Vec<u8>> {
    let (rows, cols) = (slot.rows as usize, slot.cols as usize);
    let mut bytes = vec![
        0u8;
        kind.data_len(rows, cols)
            .ok_or_else(|| Error::Config("tensor too large".into()))?
    ];
    if !quant::quantize(kind, rows, cols, values, &mut bytes) {
        return Err(Error::Argument(format!(
            "{}: cannot store as {}",
            slot.name,
            kind.name()
        )));
    }
    Ok(bytes)
}

/// The float tensors of `w` in stored layout, one per blob slot (the vocabulary slot,
/// which holds no floats, is left out): `(slot index, slot, row-major values)`.
pub fn stored_tensors(w: &Weights) -> Result<Vec<(usize, Slot, Vec<f32>)>> {
    let cfg = core_config(&w.cfg)?;
    (0..blob::tensor_count(&cfg))
        .map(|i| {
            let slot = blob::slot(&cfg, i).expect("index below tensor count");
            Ok((i, slot, stored(w, &slot)?))
        })
        .collect()
}

/// Writes `w` as a blob whose tensor data come from `encode(slot index, slot, values)`,
/// which returns the storage kind and the data in that kind's layout (e.g.
/// [`round_to_nearest`], or levels chosen by a calibrated quantizer). Returns the blob
/// and, per tensor, the quantization error.
pub fn write_blob_with(
    w: &Weights,
    processing: Processing,
    vocab: Option<&[String]>,
    mut encode: impl FnMut(usize, &Slot, &[f32]) -> Result<(StorageKind, Vec<u8>)>,
) -> Result<(Vec<u8>, Vec<TensorReport>)> {
    let cfg = core_config(&w.cfg)?;
    if let Some(v) = vocab {
        if v.len() != cfg.d_vocab as usize {
            return Err(Error::Argument(format!(
                "vocabulary has {} entries, the model has d_vocab = {}",
                v.len(),
                cfg.d_vocab
            )));
        }
    }
    let n = blob::tensor_count(&cfg) + vocab.is_some() as usize;
    let mut entries = Vec::with_capacity(n);
    let mut data = Vec::new();
    let mut reports = Vec::new();
    let data_start = (blob::HEADER_LEN + n * blob::ENTRY_LEN).next_multiple_of(blob::ALIGN);
    for i in 0..n {
        let slot = blob::slot(&cfg, i).expect("index below tensor count");
        let (rows, cols) = (slot.rows as usize, slot.cols as usize);
        let (kind, bytes) = if slot.name.id == TensorId::Vocab {
            (StorageKind::Bytes, encode_vocab(vocab.unwrap_or_default()))
        } else {
            let values = stored(w, &slot)?;
            let (kind, bytes) = encode(i, &slot, &values)?;
            if kind == StorageKind::Bytes || kind.data_len(rows, cols) != Some(bytes.len()) {
                return Err(Error::Argument(format!(
                    "{}: {} bytes is no {} tensor of {rows}x{cols}",
                    slot.name,
                    bytes.len(),
                    kind.name()
                )));
            }
            reports.push(report(&slot, kind, &values, &bytes));
            (kind, bytes)
        };
        while (data_start + data.len()) % blob::ALIGN != 0 {
            data.push(0);
        }
        let offset = data_start + data.len();
        entries.push((slot, kind, offset as u32, bytes.len() as u32));
        data.extend(bytes);
    }
    // The oldest format that holds these kinds: version 1 unless an int4 tensor has a
    // group other than 32 (so blobs that need nothing new stay byte for byte the same).
    let version = blob::write::version_for(entries.iter().map(|e| e.1));
    let mut out = blob::write::header(&cfg, processing, n as u16, version).to_vec();
    for (slot, kind, offset, len) in &entries {
        out.extend(blob::write::entry(slot, *kind, *offset, *len, version));
    }
    out.resize(data_start, 0);
    out.extend(data);
    if out.len() > u32::MAX as usize {
        return Err(Error::Config(
            "model too large for a blob (over 4 GiB)".into(),
        ));
    }
    blob::write::finish(&mut out);
    // The writer and the reader share the layout functions; reading back is the check
    // that this blob is one the device will accept.
    Model::from_bytes(&out)?;
    Ok((out, reports))
}

fn report(slot: &Slot, kind: StorageKind, values: &[f32], bytes: &[u8]) -> TensorReport {
    let (rows, cols) = (slot.rows as usize, slot.cols as usize);
    let mut back = vec![0.0f32; cols];
    let (mut max_abs, mut err2, mut norm2) = (0.0f32, 0.0f64, 0.0f64);
    let Some(tensor) = quant::Tensor::from_data(kind, rows, cols, bytes) else {
        unreachable!("quantize wrote exactly data_len bytes")
    };
    for r in 0..rows {
        tensor.dequantize_row(r, &mut back);
        for c in 0..cols {
            let e = (values[r * cols + c] - back[c]).abs();
            max_abs = max_abs.max(e);
            err2 += (e as f64).powi(2);
            norm2 += (values[r * cols + c] as f64).powi(2);
        }
    }
    TensorReport {
        name: slot.name.to_string(),
        kind: kind.name(),
        shape: [rows, cols],
        bytes: bytes.len(),
        max_abs_error: max_abs,
        relative_rms_error: if norm2 > 0.0 {
            (err2 / norm2).sqrt() as f32
        } else {
            0.0
        },
    }
}

/// Dense f32 weights of a loaded blob (dequantized: what the device computes with).
pub fn weights_from_model(model: &Model<'_>) -> Weights {
    let cfg = host_config(model.config());
    let dense = |t: quant::Tensor<'_>| -> DMatrix<f32> {
        let mut m = DMatrix::zeros(t.rows, t.cols);
        let mut row = vec![0.0; t.cols];
        for r in 0..t.rows {
            t.dequantize_row(r, &mut row);
            for c in 0..t.cols {
                m[(r, c)] = row[c];
            }
        }
        m
    };
    let vector = |t: quant::Tensor<'_>| -> DVector<f32> {
        DVector::from_iterator(t.cols, dense(t).row(0).iter().copied())
    };
    let (dm, dh, nh) = (cfg.d_model, cfg.d_head, cfg.n_heads);
    let per_head_in = |t: quant::Tensor<'_>| -> Vec<DMatrix<f32>> {
        // Stored [n_heads*d_head, d_model]; TL's W[h] is [d_model, d_head].
        let m = dense(t);
        (0..nh).map(|h| m.rows(h * dh, dh).transpose()).collect()
    };
    let per_head_bias = |t: quant::Tensor<'_>| -> Vec<DVector<f32>> {
        let v = vector(t);
        (0..nh).map(|h| v.rows(h * dh, dh).into_owned()).collect()
    };
    let layers = (0..cfg.n_layers)
        .map(|l| {
            let lt = model.layer(l);
            let w_o = dense(lt.w_o);
            LayerWeights {
                ln1_w: lt.ln1_w.map(vector),
                ln1_b: lt.ln1_b.map(vector),
                w_q: per_head_in(lt.w_q),
                w_k: per_head_in(lt.w_k),
                w_v: per_head_in(lt.w_v),
                w_o: (0..nh).map(|h| w_o.rows(h * dm, dm).transpose()).collect(),
                b_q: per_head_bias(lt.b_q),
                b_k: per_head_bias(lt.b_k),
                b_v: per_head_bias(lt.b_v),
                b_o: vector(lt.b_o),
            }
        })
        .collect();
    let ln_final = model.ln_final();
    Weights {
        w_e: dense(model.w_e()),
        w_pos: dense(model.w_pos()),
        layers,
        ln_final_w: ln_final.map(|(w, _)| vector(w)),
        ln_final_b: ln_final.map(|(_, b)| vector(b)),
        w_u: dense(model.w_u()).transpose(),
        b_u: vector(model.b_u()),
        cfg,
    }
}

/// The blob's vocabulary, when it has one.
pub fn vocab_of(model: &Model<'_>) -> Option<Vec<String>> {
    model.has_vocab().then(|| {
        (0..model.config().d_vocab)
            .map(|t| model.token_str(t).unwrap_or("").to_string())
            .collect()
    })
}
