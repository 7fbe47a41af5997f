//! TransformerLens 3.9's weight processing (fold_ln, center_writing_weights,
//! center_unembed, fold_value_biases) and [`process`], which applies them in TL's order.

use nalgebra::{DMatrix, DVector};

use crate::error::{Error, Result};
use crate::weights::{ModelConfig, Normalization, PositionalEmbedding, Weights};

/// Which of TL's weight-processing steps to apply ([`process`]'s request) or were applied
/// (its result): the core's record of processing, which the blob stores, so the request,
/// the result and the blob header are one type. TL's `from_pretrained` defaults are all
/// four ([`Processing::ALL`]).
pub use tinylens_core::Processing;

/// TL 3.9 folds `ln_final` into `W_U` along the wrong axis when `d_vocab_out == d_model`.
pub(super) fn tl_misfolds_ln_final(c: &ModelConfig) -> bool {
    c.d_vocab_out == c.d_model
}

/// TL 3.9 swaps the axes it centres `W_U` along when `d_vocab == d_model != d_vocab_out`.
pub(super) fn tl_swaps_unembed_axes(c: &ModelConfig) -> bool {
    c.d_vocab == c.d_model && c.d_vocab_out != c.d_vocab
}

pub(super) fn check_fold_ln(c: &ModelConfig) -> Result<()> {
    match c.normalization {
        Normalization::LN => {}
        Normalization::LNPre => {
            return Err(Error::Unsupported(
                "fold_ln: the normalization is already LNPre (no LayerNorm weights to fold)".into(),
            ))
        }
        Normalization::None => {
            return Err(Error::Unsupported(
                "fold_ln: the model has no LayerNorm (normalization_type null)".into(),
            ))
        }
    }
    if c.positional == PositionalEmbedding::Shortformer {
        return Err(Error::Unsupported(
            "fold_ln: TransformerLens refuses fold_ln for shortformer models (the positional \
             embedding is added after ln1, so ln1's weights cannot be folded into W_Q/W_K)"
                .into(),
        ));
    }
    if tl_misfolds_ln_final(c) {
        return Err(Error::Unsupported(format!(
            "fold_ln: d_vocab_out == d_model ({}): TransformerLens 3.9 folds ln_final into W_U \
             and b_U along the vocabulary axis in this case, which changes the model's \
             predictions; tinylens refuses rather than produce either a broken model or a \
             result different from TransformerLens",
            c.d_model
        )));
    }
    Ok(())
}

/// Folds the LayerNorms' weights and biases into the following weights, as TL's
/// `fold_layer_norm` (fold_biases and center_weights on) does, and turns the normalization
/// `LN` into `LNPre` (LayerNorm weights become `None`). Does not change the computation.
///
/// Per layer and head, for X in Q, K, V: `b_X += ln1.b @ W_X` (with the original `W_X`),
/// `W_X *= ln1.w` along d_model, then `W_X -= mean over d_model`. Then
/// `b_U += ln_final.b @ W_U`, `W_U *= ln_final.w` along d_model, and `W_U` is centred
/// along d_model (along the vocabulary when `d_vocab == d_model != d_vocab_out`, as TL 3.9
/// does; see the module doc).
///
/// Refused ([`Error::Unsupported`]) unless the normalization is `LN`, for shortformer
/// models (TL's `from_pretrained` refuses), and when `d_vocab_out == d_model` (TL 3.9
/// mis-folds; see the module doc).
pub fn fold_ln(w: &mut Weights) -> Result<()> {
    check_fold_ln(&w.cfg)?;
    fold_ln_unchecked(w);
    Ok(())
}

pub(super) fn fold_ln_unchecked(w: &mut Weights) {
    for layer in &mut w.layers {
        let ln_w = layer.ln1_w.take().expect("LN model has ln1.w");
        let ln_b = layer.ln1_b.take().expect("LN model has ln1.b");
        for (ws, bs) in [
            (&mut layer.w_q, &mut layer.b_q),
            (&mut layer.w_k, &mut layer.b_k),
            (&mut layer.w_v, &mut layer.b_v),
        ] {
            for (m, b) in ws.iter_mut().zip(bs.iter_mut()) {
                *b += m.tr_mul(&ln_b);
                scale_rows(m, &ln_w);
                center_columns(m);
            }
        }
    }
    let ln_w = w.ln_final_w.take().expect("LN model has ln_final.w");
    let ln_b = w.ln_final_b.take().expect("LN model has ln_final.b");
    w.b_u += w.w_u.tr_mul(&ln_b);
    scale_rows(&mut w.w_u, &ln_w);
    if tl_swaps_unembed_axes(&w.cfg) {
        center_rows(&mut w.w_u);
    } else {
        center_columns(&mut w.w_u);
    }
    w.cfg.normalization = Normalization::LNPre;
}

/// Centres the weights that write to the residual stream along d_model, as TL's
/// `center_writing_weights`: `W_E`, `W_pos`, every head's `W_O` and `b_O` get their mean
/// over d_model subtracted. Does not change the computation, because every reader of the
/// residual stream is preceded by a LayerNorm that removes the mean.
///
/// Refused ([`Error::Unsupported`]) without a LayerNorm (TL skips it unless the
/// normalization is LN or LNPre) and for shortformer models (TL's `from_pretrained`
/// refuses; centring `W_pos` would change queries and keys there).
pub fn center_writing_weights(w: &mut Weights) -> Result<()> {
    if w.cfg.normalization == Normalization::None {
        return Err(Error::Unsupported(
            "center_writing_weights: the model has no LayerNorm (normalization_type null), so \
             centring the residual stream's writers would change its computation"
                .into(),
        ));
    }
    if w.cfg.positional == PositionalEmbedding::Shortformer {
        return Err(Error::Unsupported(
            "center_writing_weights: TransformerLens refuses it for shortformer models (the \
             positional embedding is not normalized before queries and keys read it)"
                .into(),
        ));
    }
    center_writing_weights_unchecked(w);
    Ok(())
}

pub(super) fn center_writing_weights_unchecked(w: &mut Weights) {
    center_rows(&mut w.w_e);
    center_rows(&mut w.w_pos);
    for layer in &mut w.layers {
        for m in &mut layer.w_o {
            center_rows(m);
        }
        center_vector(&mut layer.b_o);
    }
}

/// Centres the unembedding over the vocabulary, as TL's `center_unembed`:
/// `W_U -= mean over the vocabulary` (per d_model row), `b_U -= mean(b_U)`. Changes the
/// logits by a per-position constant, not the log-probs.
///
/// When `d_vocab == d_model != d_vocab_out`, TL 3.9 centres `W_U` over d_model instead;
/// this is reproduced, and refused ([`Error::Unsupported`]) unless the normalization is
/// `LNPre`, the only case in which that keeps the log-probs (see the module doc).
pub fn center_unembed(w: &mut Weights) -> Result<()> {
    check_center_unembed(&w.cfg, w.cfg.normalization)?;
    center_unembed_unchecked(w);
    Ok(())
}

pub(super) fn check_center_unembed(c: &ModelConfig, normalization: Normalization) -> Result<()> {
    if tl_swaps_unembed_axes(c) && normalization != Normalization::LNPre {
        return Err(Error::Unsupported(format!(
            "center_unembed: d_vocab == d_model ({}) != d_vocab_out ({}): TransformerLens 3.9 \
             centres W_U over d_model instead of the vocabulary in this case, which changes the \
             model's predictions unless the normalization is LNPre (fold LayerNorm first)",
            c.d_model, c.d_vocab_out
        )));
    }
    Ok(())
}

pub(super) fn center_unembed_unchecked(w: &mut Weights) {
    if tl_swaps_unembed_axes(&w.cfg) {
        center_columns(&mut w.w_u);
    } else {
        center_rows(&mut w.w_u);
    }
    center_vector(&mut w.b_u);
}

/// Folds the value biases into the output bias, as TL's `fold_value_biases`: per layer,
/// `b_O += sum_h b_V[h] @ W_O[h]`, then `b_V = 0`. Does not change the computation
/// (attention patterns sum to 1). Always applicable.
pub fn fold_value_biases(w: &mut Weights) {
    for layer in &mut w.layers {
        for (b_v, w_o) in layer.b_v.iter_mut().zip(&layer.w_o) {
            layer.b_o += w_o.tr_mul(b_v);
            b_v.fill(0.0);
        }
    }
}

/// Applies the requested processing in TL's order and with TL's conditions, as
/// `HookedTransformer.from_pretrained(..., fold_ln, center_writing_weights,
/// center_unembed, fold_value_biases)` would, and returns what was really applied.
///
/// Order: fold_ln, center_writing_weights, center_unembed, fold_value_biases (followed,
/// when center_writing_weights was applied, by centring each `b_O` again, as TL does).
///
/// Steps TL skips with only a logged warning are skipped here too and reported as not
/// applied:
/// * shortformer models: fold_ln, center_writing_weights and center_unembed
///   (`from_pretrained` turns them off); only fold_value_biases applies;
/// * fold_ln when the normalization is not `LN` (`LNPre` has no LayerNorm weights, null has
///   no LayerNorm);
/// * center_writing_weights when there is no LayerNorm (null normalization).
///
/// Errors (before anything is changed): fold_ln on an `LN` model with
/// `d_vocab_out == d_model`, and center_unembed when `d_vocab == d_model != d_vocab_out`
/// and the normalization would not be `LNPre` at that point (TL 3.9 would produce a model
/// with different predictions; see the module doc).
pub fn process(w: &mut Weights, p: Processing) -> Result<Processing> {
    let c = &w.cfg;
    let shortformer = c.positional == PositionalEmbedding::Shortformer;
    let applied = Processing {
        fold_ln: p.fold_ln && !shortformer && c.normalization == Normalization::LN,
        center_writing_weights: p.center_writing_weights
            && !shortformer
            && c.normalization != Normalization::None,
        center_unembed: p.center_unembed && !shortformer,
        fold_value_biases: p.fold_value_biases,
    };
    if applied.fold_ln {
        check_fold_ln(c)?;
    }
    let norm_after_fold = if applied.fold_ln {
        Normalization::LNPre
    } else {
        c.normalization
    };
    if applied.center_unembed {
        check_center_unembed(c, norm_after_fold)?;
    }

    if applied.fold_ln {
        fold_ln_unchecked(w);
    }
    if applied.center_writing_weights {
        center_writing_weights_unchecked(w);
    }
    if applied.center_unembed {
        center_unembed_unchecked(w);
    }
    if applied.fold_value_biases {
        fold_value_biases(w);
        if applied.center_writing_weights {
            for layer in &mut w.layers {
                center_vector(&mut layer.b_o);
            }
        }
    }
    Ok(applied)
}

/// `m[i, :] *= s[i]`.
pub(super) fn scale_rows(m: &mut DMatrix<f32>, s: &DVector<f32>) {
    for (i, mut row) in m.row_iter_mut().enumerate() {
        row *= s[i];
    }
}

/// Subtracts from each column its mean over the rows.
pub(super) fn center_columns(m: &mut DMatrix<f32>) {
    for mut col in m.column_iter_mut() {
        let mean = mean(col.iter());
        col.add_scalar_mut(-mean);
    }
}

/// Subtracts from each row its mean over the columns.
pub(super) fn center_rows(m: &mut DMatrix<f32>) {
    for mut row in m.row_iter_mut() {
        let mean = mean(row.iter());
        row.add_scalar_mut(-mean);
    }
}

pub(super) fn center_vector(v: &mut DVector<f32>) {
    let mean = mean(v.iter());
    v.add_scalar_mut(-mean);
}

pub(super) fn mean<'a>(xs: impl ExactSizeIterator<Item = &'a f32>) -> f32 {
    let n = xs.len();
    if n == 0 {
        return 0.0;
    }
    (xs.map(|&x| x as f64).sum::<f64>() / n as f64) as f32
}
