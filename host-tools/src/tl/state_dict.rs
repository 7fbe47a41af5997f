//! TransformerLens `state_dict` tensors (safetensors) ⇄ [`Weights`].

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use nalgebra::{DMatrix, DVector};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::weights::{LayerWeights, ModelConfig, Normalization, Weights};

use super::config::parse_config_at;

/// The tensors of an attention-only TL model with this config, in TL naming and shapes,
/// in a fixed order.
pub(super) fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (dm, dh, nh) = (cfg.d_model, cfg.d_head, cfg.n_heads);
    let ln = cfg.normalization == Normalization::LN;
    let mut v = vec![
        ("embed.W_E".to_string(), vec![cfg.d_vocab, dm]),
        ("pos_embed.W_pos".to_string(), vec![cfg.n_ctx, dm]),
    ];
    for l in 0..cfg.n_layers {
        if ln {
            v.push((format!("blocks.{l}.ln1.w"), vec![dm]));
            v.push((format!("blocks.{l}.ln1.b"), vec![dm]));
        }
        for m in ["W_Q", "W_K", "W_V"] {
            v.push((format!("blocks.{l}.attn.{m}"), vec![nh, dm, dh]));
        }
        v.push((format!("blocks.{l}.attn.W_O"), vec![nh, dh, dm]));
        for b in ["b_Q", "b_K", "b_V"] {
            v.push((format!("blocks.{l}.attn.{b}"), vec![nh, dh]));
        }
        v.push((format!("blocks.{l}.attn.b_O"), vec![dm]));
    }
    if ln {
        v.push(("ln_final.w".to_string(), vec![dm]));
        v.push(("ln_final.b".to_string(), vec![dm]));
    }
    v.push(("unembed.W_U".to_string(), vec![dm, cfg.d_vocab_out]));
    v.push(("unembed.b_U".to_string(), vec![cfg.d_vocab_out]));
    v
}

/// Buffers TL keeps in the state_dict that carry no weights: the attention's (empty) causal
/// mask and its `IGNORE` constant (-inf).
pub(super) fn is_ignored_buffer(name: &str, cfg: &ModelConfig) -> bool {
    let Some(rest) = name.strip_prefix("blocks.") else {
        return false;
    };
    let Some((layer, tail)) = rest.split_once('.') else {
        return false;
    };
    let layer_ok = !layer.starts_with('+')
        && layer.parse::<usize>().is_ok_and(|l| l < cfg.n_layers)
        && (layer == "0" || !layer.starts_with('0'));
    layer_ok && (tail == "attn.mask" || tail == "attn.IGNORE")
}

pub(super) fn unexpected_tensor(name: &str, cfg: &ModelConfig) -> Error {
    let why = if name.contains(".mlp.") || name.contains(".ln2.") {
        "it belongs to an MLP layer; only attention-only models are supported".to_string()
    } else if name.contains(".ln1.") || name.starts_with("ln_final.") {
        format!(
            "normalization_type is {}, which has no LayerNorm weights",
            match cfg.normalization {
                Normalization::None => "null",
                Normalization::LN => "LN",
                Normalization::LNPre => "LNPre",
            }
        )
    } else {
        "it is not part of an attention-only TransformerLens model with this config".to_string()
    };
    Error::Unsupported(format!(
        "unexpected tensor `{name}` in the state_dict: {why}"
    ))
}

/// Reads a TL `state_dict` saved with safetensors into [`Weights`] for the given config.
///
/// Tensors may be F32, F16, BF16 or F64 (converted to f32). `blocks.L.attn.mask` and
/// `blocks.L.attn.IGNORE` are ignored. Errors: [`Error::Safetensors`] (unreadable file),
/// [`Error::MissingTensor`], [`Error::TensorShape`], [`Error::TensorDtype`] (integer, bool
/// or 8-bit-and-smaller float types), [`Error::NonFiniteWeight`] (NaN or infinity, also
/// after conversion to f32), [`Error::Unsupported`] for a tensor the model should not have
/// (an MLP weight, LayerNorm weights of an `LNPre`/null-normalization model, anything else
/// unknown). LayerNorm weights are required iff the normalization is `LN`; biases are
/// always required (TL always saves them; TL 3.9 has no bias-less attention-only config).
pub fn load_state_dict(bytes: &[u8], cfg: &ModelConfig) -> Result<Weights> {
    load_state_dict_at(bytes, cfg, Path::new("<state_dict>"))
}

pub(super) fn load_state_dict_at(bytes: &[u8], cfg: &ModelConfig, path: &Path) -> Result<Weights> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let expected = expected_tensors(cfg);
    let expected_names: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut names = st.names();
    names.sort_unstable();
    for name in names {
        if !expected_names.contains(name) && !is_ignored_buffer(name, cfg) {
            return Err(unexpected_tensor(name, cfg));
        }
    }
    let mut tensors: HashMap<String, Vec<f32>> = HashMap::with_capacity(expected.len());
    for (name, shape) in &expected {
        let view = st
            .tensor(name)
            .map_err(|_| Error::MissingTensor { name: name.clone() })?;
        tensors.insert(name.clone(), read_tensor(&view, name, shape)?);
    }
    let mut take = |name: &str| {
        tensors
            .remove(name)
            .expect("every expected tensor was read")
    };
    let (dm, dh, nh) = (cfg.d_model, cfg.d_head, cfg.n_heads);
    let ln = cfg.normalization == Normalization::LN;

    let w_e = DMatrix::from_row_slice(cfg.d_vocab, dm, &take("embed.W_E"));
    let w_pos = DMatrix::from_row_slice(cfg.n_ctx, dm, &take("pos_embed.W_pos"));
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("blocks.{l}.");
        let (ln1_w, ln1_b) = if ln {
            (
                Some(DVector::from_vec(take(&format!("{p}ln1.w")))),
                Some(DVector::from_vec(take(&format!("{p}ln1.b")))),
            )
        } else {
            (None, None)
        };
        let heads = |data: Vec<f32>, rows: usize, cols: usize| -> Vec<DMatrix<f32>> {
            data.chunks_exact(rows * cols)
                .map(|c| DMatrix::from_row_slice(rows, cols, c))
                .collect()
        };
        let biases = |data: Vec<f32>| -> Vec<DVector<f32>> {
            data.chunks_exact(dh)
                .map(DVector::from_column_slice)
                .collect()
        };
        layers.push(LayerWeights {
            ln1_w,
            ln1_b,
            w_q: heads(take(&format!("{p}attn.W_Q")), dm, dh),
            w_k: heads(take(&format!("{p}attn.W_K")), dm, dh),
            w_v: heads(take(&format!("{p}attn.W_V")), dm, dh),
            w_o: heads(take(&format!("{p}attn.W_O")), dh, dm),
            b_q: biases(take(&format!("{p}attn.b_Q"))),
            b_k: biases(take(&format!("{p}attn.b_K"))),
            b_v: biases(take(&format!("{p}attn.b_V"))),
            b_o: DVector::from_vec(take(&format!("{p}attn.b_O"))),
        });
        debug_assert_eq!(layers[l].w_q.len(), nh);
    }
    let (ln_final_w, ln_final_b) = if ln {
        (
            Some(DVector::from_vec(take("ln_final.w"))),
            Some(DVector::from_vec(take("ln_final.b"))),
        )
    } else {
        (None, None)
    };
    let w_u = DMatrix::from_row_slice(dm, cfg.d_vocab_out, &take("unembed.W_U"));
    let b_u = DVector::from_vec(take("unembed.b_U"));
    Ok(Weights {
        cfg: cfg.clone(),
        w_e,
        w_pos,
        layers,
        ln_final_w,
        ln_final_b,
        w_u,
        b_u,
    })
}

/// Checks a tensor's dtype and shape and returns its elements (row-major) as f32.
pub(super) fn read_tensor(view: &TensorView<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let dtype = view.dtype();
    if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64) {
        return Err(Error::TensorDtype {
            name: name.to_string(),
            dtype: dtype.to_string(),
        });
    }
    if view.shape() != shape {
        return Err(Error::TensorShape {
            name: name.to_string(),
            expected: shape.to_vec(),
            got: view.shape().to_vec(),
        });
    }
    let d = view.data();
    let values: Vec<f32> = match dtype {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => unreachable!("dtype checked above"),
    };
    debug_assert_eq!(values.len(), shape.iter().product::<usize>());
    if values.iter().any(|x| !x.is_finite()) {
        return Err(Error::NonFiniteWeight {
            name: name.to_string(),
        });
    }
    Ok(values)
}

/// Reads a TL model from its safetensors `state_dict` and its JSON config dict.
/// I/O errors name the file ([`Error::Io`]), as do parse errors of either file.
pub fn load_files(weights: &Path, config: &Path) -> Result<Weights> {
    let json = std::fs::read_to_string(config).map_err(|e| Error::io(config, e))?;
    let cfg = parse_config_at(&json, config)?;
    let bytes = std::fs::read(weights).map_err(|e| Error::io(weights, e))?;
    load_state_dict_at(&bytes, &cfg, weights)
}

/// Writes the weights as a TL `state_dict` in safetensors (F32, TL names and shapes; no
/// `mask`/`IGNORE` buffers, LayerNorm weights only when present). TL loads it with
/// `model.load_state_dict(safetensors.torch.load_file(path), strict=False)`.
pub fn save_state_dict(w: &Weights) -> Vec<u8> {
    let mut entries: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, values: Vec<f32>| {
        let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        entries.push((name, shape, bytes));
    };
    let rows = |m: &DMatrix<f32>| -> Vec<f32> {
        let mut v = Vec::with_capacity(m.len());
        for r in 0..m.nrows() {
            v.extend(m.row(r).iter().copied());
        }
        v
    };
    let stack = |ms: &[DMatrix<f32>]| -> Vec<f32> { ms.iter().flat_map(rows).collect() };
    let stack_v =
        |vs: &[DVector<f32>]| -> Vec<f32> { vs.iter().flat_map(|v| v.iter().copied()).collect() };
    let c = &w.cfg;
    let (dm, dh, nh) = (c.d_model, c.d_head, c.n_heads);
    put("embed.W_E".into(), vec![c.d_vocab, dm], rows(&w.w_e));
    put("pos_embed.W_pos".into(), vec![c.n_ctx, dm], rows(&w.w_pos));
    for (l, lw) in w.layers.iter().enumerate() {
        let p = format!("blocks.{l}.");
        if let Some(x) = &lw.ln1_w {
            put(format!("{p}ln1.w"), vec![dm], x.iter().copied().collect());
        }
        if let Some(x) = &lw.ln1_b {
            put(format!("{p}ln1.b"), vec![dm], x.iter().copied().collect());
        }
        put(format!("{p}attn.W_Q"), vec![nh, dm, dh], stack(&lw.w_q));
        put(format!("{p}attn.W_K"), vec![nh, dm, dh], stack(&lw.w_k));
        put(format!("{p}attn.W_V"), vec![nh, dm, dh], stack(&lw.w_v));
        put(format!("{p}attn.W_O"), vec![nh, dh, dm], stack(&lw.w_o));
        put(format!("{p}attn.b_Q"), vec![nh, dh], stack_v(&lw.b_q));
        put(format!("{p}attn.b_K"), vec![nh, dh], stack_v(&lw.b_k));
        put(format!("{p}attn.b_V"), vec![nh, dh], stack_v(&lw.b_v));
        put(
            format!("{p}attn.b_O"),
            vec![dm],
            lw.b_o.iter().copied().collect(),
        );
    }
    if let Some(x) = &w.ln_final_w {
        put("ln_final.w".into(), vec![dm], x.iter().copied().collect());
    }
    if let Some(x) = &w.ln_final_b {
        put("ln_final.b".into(), vec![dm], x.iter().copied().collect());
    }
    put("unembed.W_U".into(), vec![dm, c.d_vocab_out], rows(&w.w_u));
    put(
        "unembed.b_U".into(),
        vec![c.d_vocab_out],
        w.b_u.iter().copied().collect(),
    );

    let views: Vec<(String, TensorView<'_>)> = entries
        .iter()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
                .expect("tensor shape and byte length agree");
            (name.clone(), view)
        })
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).expect("F32 tensors always serialize")
}
