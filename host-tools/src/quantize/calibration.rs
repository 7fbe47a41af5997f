//! Calibration: the data, and the input of every weight matrix exactly as the device
//! computes it — the core itself runs the calibration prompts on the host, with the
//! already-quantized weights of the earlier layers, and the inputs are taken from its
//! hook points (then passed through the LayerNorm weight and bias, and the int8
//! activation quantization, by the core's own functions).

use tinylens_core::kernels;
use tinylens_core::{Config, HookPoint, Hooks, Model, Normalization, Positional, Session, Site};

use crate::analysis::ablation::{parse_data, repeated_dataset};
use crate::{Error, Result};

use super::gptq::Hessian;

/// Default number of sequences of `--calibrate repeated`.
pub const REPEATED_SEQUENCES: usize = 64;

/// Longest half of a built-in calibration sequence: with a long context (2048 for
/// TransformerLens's attn-only-2l) a sequence filling it would make the built-in set
/// 64 × 2048 positions of logits per model (25 GB for a 48k vocabulary); 64 + 64 tokens
/// show the same induction behaviour.
pub const MAX_REPEATED_HALF: usize = 64;

/// The built-in calibration set: `sequences` sequences of random tokens repeated twice
/// (TransformerLens's induction test, as `tinylens heads --repeated` and `ablate
/// --repeated` draw them), filling the context up to [`MAX_REPEATED_HALF`] tokens per
/// half, after BOS when the vocabulary's token 0 is spelled like `<bos>`. Seeds
/// `seed..seed+sequences`.
pub fn repeated(
    cfg: &Config,
    vocab: Option<&[String]>,
    seed: u64,
    sequences: usize,
) -> Result<Vec<Vec<u32>>> {
    let bos = vocab
        .and_then(|v| v.first())
        .filter(|s| s.starts_with('<') && s.ends_with('>'))
        .map(|_| 0u32);
    let n = ((cfg.n_ctx as usize - bos.is_some() as usize) / 2).min(MAX_REPEATED_HALF);
    Ok(
        repeated_dataset(n.max(1), sequences, seed, bos, cfg.d_vocab, cfg.n_ctx)?
            .into_iter()
            .map(|p| p.tokens)
            .collect(),
    )
}

/// Prompts of a calibration file: one prompt per line, token ids separated by commas
/// or whitespace (the format of `ablate --data`).
pub fn from_text(text: &str, cfg: &Config) -> Result<Vec<Vec<u32>>> {
    Ok(parse_data(text, cfg.d_vocab, cfg.n_ctx)?
        .into_iter()
        .map(|p| p.tokens)
        .collect())
}

/// The inputs of every weight matrix over the calibration prompts, one vector per
/// position, before the int8 activation quantization (applied per consumer by
/// [`hessian`], since it depends on the consumer's storage kind).
#[derive(Debug, Clone, Default)]
pub struct Activations {
    /// `[layer][sample]`: the LayerNorm output (after its weight and bias), which W_V
    /// reads (and W_Q, W_K with standard positions).
    pub attn_in: Vec<Vec<Vec<f32>>>,
    /// `[layer][sample]`: what W_Q and W_K read with shortformer positions (`attn_in +
    /// W_pos`); empty otherwise.
    pub qk_in: Vec<Vec<Vec<f32>>>,
    /// `[layer][head][sample]`: `hook_z`, which the head's rows of W_O read.
    pub z: Vec<Vec<Vec<Vec<f32>>>>,
    /// `[sample]`: the final LayerNorm output, which W_U reads.
    pub final_in: Vec<Vec<f32>>,
}

impl Activations {
    /// The samples read by W_Q/W_K of `layer`.
    pub fn qk(&self, layer: usize) -> &[Vec<f32>] {
        match self.qk_in.get(layer) {
            Some(v) => v,
            None => &self.attn_in[layer],
        }
    }
}

struct Capture<'m> {
    model: Model<'m>,
    cfg: Config,
    pos_embed: Vec<f32>,
    acts: Activations,
}

impl Capture<'_> {
    fn attention_input(&mut self, layer: usize, x: Vec<f32>) {
        if self.cfg.positional == Positional::Shortformer {
            let mut qk = x.clone();
            for (a, e) in qk.iter_mut().zip(&self.pos_embed) {
                *a += e;
            }
            self.acts.qk_in[layer].push(qk);
        }
        self.acts.attn_in[layer].push(x);
    }
}

impl Hooks for Capture<'_> {
    fn wants(&self, point: HookPoint) -> bool {
        matches!(
            point,
            HookPoint::PosEmbed
                | HookPoint::ResidPre
                | HookPoint::Ln1Normalized
                | HookPoint::Z
                | HookPoint::ResidPost
                | HookPoint::LnFinalNormalized
        )
    }

    fn hook(&mut self, site: Site, value: &mut [f32]) {
        let layer = site.layer as usize;
        let no_ln = self.cfg.normalization == Normalization::None;
        match site.point {
            HookPoint::PosEmbed => self.pos_embed = value.to_vec(),
            // Without LayerNorm the layer reads the residual stream itself.
            HookPoint::ResidPre if no_ln => self.attention_input(layer, value.to_vec()),
            HookPoint::Ln1Normalized => {
                let mut x = value.to_vec();
                let lt = self.model.layer(layer);
                // The core's own LayerNorm affine step, so the values are bit-identical.
                if let (Some(w), Some(b)) = (lt.ln1_w, lt.ln1_b) {
                    w.zip_row(0, &mut x, |o, wv| *o *= wv);
                    b.add_row_to(0, &mut x);
                }
                self.attention_input(layer, x);
            }
            HookPoint::Z => {
                if let Some(h) = site.head {
                    self.acts.z[layer][h as usize].push(value.to_vec());
                }
            }
            HookPoint::ResidPost if no_ln && layer + 1 == self.cfg.n_layers as usize => {
                self.acts.final_in.push(value.to_vec())
            }
            HookPoint::LnFinalNormalized => {
                let mut x = value.to_vec();
                if let Some((w, b)) = self.model.ln_final() {
                    w.zip_row(0, &mut x, |o, wv| *o *= wv);
                    b.add_row_to(0, &mut x);
                }
                self.acts.final_in.push(x);
            }
            _ => {}
        }
    }
}

/// Runs `prompts` through the core and collects the inputs of every matrix.
pub fn capture(model: &Model<'_>, prompts: &[Vec<u32>]) -> Result<Activations> {
    let cfg = *model.config();
    let (nl, nh) = (cfg.n_layers as usize, cfg.n_heads as usize);
    let shortformer = cfg.positional == Positional::Shortformer;
    let mut c = Capture {
        model: *model,
        cfg,
        pos_embed: Vec::new(),
        acts: Activations {
            attn_in: vec![Vec::new(); nl],
            qk_in: if shortformer {
                vec![Vec::new(); nl]
            } else {
                Vec::new()
            },
            z: vec![vec![Vec::new(); nh]; nl],
            final_in: Vec::new(),
        },
    };
    let mut ws = vec![0.0f32; cfg.workspace_len()];
    let mut session = Session::new(model, &mut ws)?;
    for p in prompts {
        session.reset();
        for &t in p {
            session.step_with(t, &mut c)?;
        }
    }
    if c.acts.final_in.is_empty() {
        return Err(Error::Argument("calibration data holds no token".into()));
    }
    Ok(c.acts)
}

/// `Σ x xᵀ` over `samples`; with `quantized`, of each sample as the int8 kernels see
/// it (`round(x / s) * s`, the core's activation quantization).
pub fn hessian(samples: &[Vec<f32>], quantized: bool) -> Hessian {
    let dim = samples.first().map_or(0, |s| s.len());
    let mut h = Hessian::new(dim);
    let mut q = vec![0i8; dim];
    let mut x = vec![0.0f32; dim];
    for s in samples {
        if quantized {
            let scale = kernels::quantize_input(s, &mut q);
            for (xi, qi) in x.iter_mut().zip(&q) {
                *xi = *qi as f32 * scale;
            }
            h.add(&x);
        } else {
            h.add(s);
        }
    }
    h
}

/// `Σ x_float x_deviceᵀ` over aligned samples (the same positions of the same prompts)
/// of the float model's inputs and the quantized model's inputs, the latter as the int8
/// kernels see them: the cross term of `Σ ||W x_float - Q x_device||²`.
pub fn cross(float: &[Vec<f32>], device: &[Vec<f32>]) -> nalgebra::DMatrix<f64> {
    let dim = device.first().map_or(0, |s| s.len());
    let mut c = nalgebra::DMatrix::zeros(dim, dim);
    let mut q = vec![0i8; dim];
    for (f, d) in float.iter().zip(device) {
        let scale = kernels::quantize_input(d, &mut q);
        let xd =
            nalgebra::DVector::from_iterator(dim, q.iter().map(|v| (*v as f32 * scale) as f64));
        let xf = nalgebra::DVector::from_iterator(dim, f.iter().map(|v| *v as f64));
        c.ger(1.0, &xf, &xd, 1.0);
    }
    c
}

/// Prompts of a calibration text file, one per line, tokenized as TransformerLens's
/// `to_tokens` does (BOS prepended when the tokenizer has one); blank lines skipped.
pub fn from_text_lines(
    text: &str,
    tok: &crate::tokenizer::TextTokenizer,
    cfg: &Config,
) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let tokens = tok.to_tokens(line, tok.bos().is_some())?;
        if tokens.len() < 2 || tokens.len() > cfg.n_ctx as usize {
            return Err(Error::Argument(format!(
                "line {}: {} tokens; a prompt needs 2 to n_ctx = {}",
                i + 1,
                tokens.len(),
                cfg.n_ctx
            )));
        }
        if let Some(t) = tokens.iter().find(|t| **t >= cfg.d_vocab) {
            return Err(Error::Argument(format!(
                "line {}: token {t} is out of range (d_vocab = {})",
                i + 1,
                cfg.d_vocab
            )));
        }
        out.push(tokens);
    }
    if out.is_empty() {
        return Err(Error::Argument(
            "the calibration file holds no prompt".into(),
        ));
    }
    Ok(out)
}
