//! Dense f32 weights of an attention-only model in TransformerLens layout and names.
//!
//! This is the host's working form of a model: the converter builds it from a
//! TransformerLens `state_dict`, applies weight processing to it and writes it to a
//! blob; the analysis reads it back from a blob (dequantized, i.e. the weights the
//! device really uses). Shapes follow TransformerLens (row vectors, `x @ W`).

use nalgebra::{DMatrix, DVector};

/// Normalization of the residual stream before each attention layer and the unembedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalization {
    None,
    LN,
    LNPre,
}

/// How the positional embedding enters the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PositionalEmbedding {
    Standard,
    Shortformer,
}

/// The subset of TransformerLens's `HookedTransformerConfig` that an attention-only model needs.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub n_layers: usize,
    pub d_model: usize,
    pub d_head: usize,
    pub n_heads: usize,
    pub d_vocab: usize,
    pub d_vocab_out: usize,
    pub n_ctx: usize,
    pub normalization: Normalization,
    pub positional: PositionalEmbedding,
    pub eps: f32,
    /// The divisor of attention scores (`sqrt(d_head)` by default, 1 with `use_attn_scale=False`).
    pub attn_scale: f32,
}

/// One attention layer. Per-head matrices are indexed `[head]`.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// `ln1.w`, `ln1.b` (only with `Normalization::LN`).
    pub ln1_w: Option<DVector<f32>>,
    pub ln1_b: Option<DVector<f32>>,
    /// `W_Q[h]`: [d_model, d_head].
    pub w_q: Vec<DMatrix<f32>>,
    pub w_k: Vec<DMatrix<f32>>,
    pub w_v: Vec<DMatrix<f32>>,
    /// `W_O[h]`: [d_head, d_model].
    pub w_o: Vec<DMatrix<f32>>,
    /// `b_Q[h]`: [d_head].
    pub b_q: Vec<DVector<f32>>,
    pub b_k: Vec<DVector<f32>>,
    pub b_v: Vec<DVector<f32>>,
    /// `b_O`: [d_model].
    pub b_o: DVector<f32>,
}

/// A whole attention-only model.
#[derive(Clone, Debug)]
pub struct Weights {
    pub cfg: ModelConfig,
    /// `W_E`: [d_vocab, d_model].
    pub w_e: DMatrix<f32>,
    /// `W_pos`: [n_ctx, d_model].
    pub w_pos: DMatrix<f32>,
    pub layers: Vec<LayerWeights>,
    pub ln_final_w: Option<DVector<f32>>,
    pub ln_final_b: Option<DVector<f32>>,
    /// `W_U`: [d_model, d_vocab_out].
    pub w_u: DMatrix<f32>,
    /// `b_U`: [d_vocab_out].
    pub b_u: DVector<f32>,
}

impl Weights {
    /// TL's `W_V[h] @ W_O[h]` ([d_model, d_model]): the OV circuit of a head in row-vector form.
    pub fn ov(&self, layer: usize, head: usize) -> DMatrix<f32> {
        let l = &self.layers[layer];
        &l.w_v[head] * &l.w_o[head]
    }

    /// TL's `W_Q[h] @ W_K[h]^T` ([d_model, d_model]): the QK circuit of a head.
    pub fn qk(&self, layer: usize, head: usize) -> DMatrix<f32> {
        let l = &self.layers[layer];
        &l.w_q[head] * l.w_k[head].transpose()
    }
}
