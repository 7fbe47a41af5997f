//! TransformerLens import: config, `state_dict` and weight processing.
//!
//! A TransformerLens (TL) model is read from two files: the `state_dict` saved with
//! safetensors (`safetensors.torch.save_file(model.state_dict(), ...)`) and TL's config
//! dict (`json.dump(cfg.to_dict(), ...)`, with non-JSON values such as `dtype` turned into
//! strings or dropped). [`load_files`] reads both into the host weight model
//! [`Weights`]; [`parse_config`] and [`load_state_dict`] do the same from memory.
//!
//! Weight processing follows TransformerLens 3.9 (`HookedTransformer.from_pretrained`,
//! `HookedTransformer.load_and_process_state_dict` and `weight_processing.ProcessWeights`):
//! [`fold_ln`], [`center_writing_weights`], [`center_unembed`], [`fold_value_biases`], and
//! [`process`], which applies a requested set of them in TL's order with TL's conditions
//! and reports in a [`Processing`] what was really applied.
//!
//! Two shape-dependent quirks of TL 3.9 matter for models with tiny vocabularies. TL
//! decides which axis of `W_U` ([d_model, d_vocab_out]) is which by comparing sizes:
//! * when `d_vocab_out == d_model`, its fold_ln folds `ln_final` into `W_U` and `b_U` along
//!   the vocabulary axis instead of `d_model`, which changes the model's log-probs. This
//!   module refuses fold_ln then (a result that matched TL would be a broken model);
//! * when `d_vocab == d_model != d_vocab_out`, its fold_ln centres `W_U` over the
//!   vocabulary instead of `d_model` (log-probs are kept, logits move by a per-position
//!   constant) and its center_unembed centres `W_U` over `d_model` instead of the
//!   vocabulary (harmless only after a parameter-free LayerNorm). This module reproduces
//!   both exactly, and refuses center_unembed in that case unless the normalization is
//!   `LNPre` at that point (otherwise TL's result would change the log-probs).
//!
//! With both fold_ln and center_unembed (TL's defaults) the second quirk cancels out:
//! `W_U` ends up centred along both axes, as it would with the intended axes.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use nalgebra::{DMatrix, DVector};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::weights::{LayerWeights, ModelConfig, Normalization, PositionalEmbedding, Weights};

/// TL's default LayerNorm epsilon.
pub const DEFAULT_EPS: f32 = 1e-5;

// ---------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------

/// Parses TL's `HookedTransformerConfig.to_dict()` as JSON into a [`ModelConfig`].
///
/// Unknown keys are ignored; missing keys take TL 3.9's defaults (`normalization_type`
/// "LN", `positional_embedding_type` "standard", `eps` 1e-5, `use_attn_scale` true,
/// `attn_only` false, `n_heads` `d_model / d_head`, `d_vocab_out` `d_vocab`). The divisor
/// of attention scores follows TL's rule: `attn_scale` from the dict when
/// `use_attn_scale` is true and `attn_scale` is set (`to_dict()` of a built config already
/// carries `sqrt(d_head)` there), `sqrt(d_head)` when it is -1 or missing, and 1 when
/// `use_attn_scale` is false.
///
/// Refused with [`Error::Unsupported`]: models that are not attention-only, positional
/// embeddings other than "standard"/"shortformer", normalization other than
/// null/"LN"/"LNPre", `final_rms` with a LayerNorm, grouped-query attention
/// (`n_key_value_heads`), local attention, non-causal attention, per-layer score scaling
/// (`scale_attn_by_inverse_layer_idx` with more than one layer), soft caps, QK norm,
/// `clip_qkv`, log-n attention, attention sinks, `post_embedding_ln`,
/// `use_normalization_before_and_after`, `parallel_attn_mlp`, 4-bit weights and
/// post-norm architectures. Invalid values (non-positive sizes, a non-finite or
/// non-positive `eps` or `attn_scale`, `d_model` not divisible by `d_head` when `n_heads`
/// is not given) are [`Error::Config`]; malformed JSON is [`Error::Json`].
pub fn parse_config(json: &str) -> Result<ModelConfig> {
    parse_config_at(json, Path::new("<config>"))
}

fn parse_config_at(json: &str, path: &Path) -> Result<ModelConfig> {
    let value: Value = serde_json::from_str(json).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let obj = value.as_object().ok_or_else(|| Error::Json {
        path: path.to_path_buf(),
        message: "expected a JSON object (TransformerLens `cfg.to_dict()`)".into(),
    })?;
    config_from_map(obj)
}

fn config_from_map(obj: &Map<String, Value>) -> Result<ModelConfig> {
    // Architecture refusals first: they explain more than a bad value would.
    if !get_bool(obj, "attn_only", false)? {
        return Err(Error::Unsupported(
            "the model is not attention-only (`attn_only` is false or missing); tinylens runs \
             only attention-only transformers"
                .into(),
        ));
    }
    let positional = match get_str(obj, "positional_embedding_type")? {
        StrField::Missing => PositionalEmbedding::Standard,
        StrField::Value(s) if s == "standard" => PositionalEmbedding::Standard,
        StrField::Value(s) if s == "shortformer" => PositionalEmbedding::Shortformer,
        StrField::Value(s) => {
            return Err(Error::Unsupported(format!(
                "positional_embedding_type `{s}`: only \"standard\" and \"shortformer\" are \
                 supported"
            )))
        }
        StrField::Null => {
            return Err(Error::Unsupported(
                "positional_embedding_type null: only \"standard\" and \"shortformer\" are \
                 supported"
                    .into(),
            ))
        }
    };
    let normalization = match get_str(obj, "normalization_type")? {
        StrField::Missing => Normalization::LN, // TL's default
        StrField::Null => Normalization::None,
        StrField::Value(s) if s == "LN" => Normalization::LN,
        StrField::Value(s) if s == "LNPre" => Normalization::LNPre,
        StrField::Value(s) => {
            return Err(Error::Unsupported(format!(
                "normalization_type `{s}`: only null, \"LN\" and \"LNPre\" are supported \
                 (RMSNorm is not)"
            )))
        }
    };
    let n_layers = get_dim(obj, "n_layers")?;
    refuse_features(obj, normalization, n_layers)?;

    let d_model = get_dim(obj, "d_model")?;
    let d_head = get_dim(obj, "d_head")?;
    let n_ctx = get_dim(obj, "n_ctx")?;
    let n_heads = match get_int(obj, "n_heads")? {
        None | Some(-1) => {
            if d_model % d_head != 0 {
                return Err(Error::Config(format!(
                    "`n_heads` is not set and d_model ({d_model}) is not divisible by d_head \
                     ({d_head})"
                )));
            }
            d_model / d_head
        }
        Some(n) => positive("n_heads", n)?,
    };
    let d_vocab =
        match get_int(obj, "d_vocab")? {
            None | Some(-1) => return Err(Error::Config(
                "`d_vocab` is not set (-1 or missing); the config must give the vocabulary size"
                    .into(),
            )),
            Some(n) => positive("d_vocab", n)?,
        };
    let d_vocab_out = match get_int(obj, "d_vocab_out")? {
        None | Some(-1) => d_vocab,
        Some(n) => positive("d_vocab_out", n)?,
    };

    let eps = match get_float(obj, "eps")? {
        None => DEFAULT_EPS,
        Some(e) => {
            let e32 = e as f32;
            if !(e.is_finite() && e32.is_finite() && e32 > 0.0) {
                return Err(Error::Config(format!(
                    "`eps` must be finite and > 0, got {e}"
                )));
            }
            e32
        }
    };

    let attn_scale = if get_bool(obj, "use_attn_scale", true)? {
        match get_float(obj, "attn_scale")? {
            None | Some(-1.0) => (d_head as f64).sqrt() as f32,
            Some(s) => {
                let s32 = s as f32;
                if !(s.is_finite() && s32.is_finite() && s32 > 0.0) {
                    return Err(Error::Config(format!(
                        "`attn_scale` must be finite and > 0 (or -1 for sqrt(d_head)), got {s}"
                    )));
                }
                s32
            }
        }
    } else {
        1.0
    };

    let cfg = ModelConfig {
        n_layers,
        d_model,
        d_head,
        n_heads,
        d_vocab,
        d_vocab_out,
        n_ctx,
        normalization,
        positional,
        eps,
        attn_scale,
    };
    check_sizes(&cfg)?;
    Ok(cfg)
}

/// Refuses config flags that change an attention-only model's computation in ways
/// tinylens does not implement.
fn refuse_features(
    obj: &Map<String, Value>,
    normalization: Normalization,
    n_layers: usize,
) -> Result<()> {
    let unsupported = |what: &str| Err(Error::Unsupported(what.to_string()));
    let has_ln = normalization != Normalization::None;
    if has_ln && get_bool(obj, "final_rms", false)? {
        return unsupported("`final_rms`: the final normalization would be RMSNorm");
    }
    if !is_null(obj, "n_key_value_heads") {
        return unsupported("`n_key_value_heads`: grouped-query attention is not supported");
    }
    if get_bool(obj, "use_local_attn", false)? {
        let all_global = match obj.get("attn_types") {
            Some(Value::Array(types)) => {
                types.len() >= n_layers
                    && types[..n_layers]
                        .iter()
                        .all(|t| t.as_str() == Some("global"))
            }
            _ => false,
        };
        if !all_global {
            return unsupported(
                "`use_local_attn` with local `attn_types`: local (windowed) attention is not \
                 supported",
            );
        }
    }
    match get_str(obj, "attention_dir")? {
        StrField::Missing => {}
        StrField::Value(s) if s == "causal" => {}
        StrField::Value(s) => {
            return Err(Error::Unsupported(format!(
                "attention_dir `{s}`: only causal attention is supported"
            )))
        }
        StrField::Null => return unsupported("attention_dir null: only \"causal\" is supported"),
    }
    if n_layers > 1 && get_bool(obj, "scale_attn_by_inverse_layer_idx", false)? {
        return unsupported(
            "`scale_attn_by_inverse_layer_idx`: per-layer attention score scaling is not \
             supported",
        );
    }
    for key in ["attn_scores_soft_cap", "output_logits_soft_cap"] {
        if get_float(obj, key)?.is_some_and(|cap| cap > 0.0) {
            return Err(Error::Unsupported(format!(
                "`{key}`: soft caps are not supported"
            )));
        }
    }
    if get_bool(obj, "use_qk_norm", false)? {
        return unsupported("`use_qk_norm`: QK normalization is not supported");
    }
    if !is_null(obj, "clip_qkv") {
        return unsupported("`clip_qkv`: clamping of q/k/v is not supported");
    }
    if get_bool(obj, "use_logn_attn", false)? {
        return unsupported("`use_logn_attn`: log-n attention scaling is not supported");
    }
    if get_bool(obj, "use_attention_sinks", false)? {
        return unsupported("`use_attention_sinks`: attention sinks are not supported");
    }
    if get_bool(obj, "post_embedding_ln", false)? {
        return unsupported(
            "`post_embedding_ln`: a LayerNorm after the embedding is not supported",
        );
    }
    if has_ln && get_bool(obj, "use_normalization_before_and_after", false)? {
        return unsupported(
            "`use_normalization_before_and_after`: normalization after attention is not supported",
        );
    }
    if get_bool(obj, "parallel_attn_mlp", false)? {
        return unsupported("`parallel_attn_mlp` is not supported");
    }
    if get_bool(obj, "load_in_4bit", false)? {
        return unsupported("`load_in_4bit`: quantized TransformerLens weights are not supported");
    }
    if let StrField::Value(arch) = get_str(obj, "original_architecture")? {
        if matches!(
            arch.as_str(),
            "Olmo2ForCausalLM" | "Olmo3ForCausalLM" | "OlmoeForCausalLM"
        ) {
            return Err(Error::Unsupported(format!(
                "original_architecture `{arch}`: post-norm / QK-norm architectures are not \
                 supported"
            )));
        }
    }
    Ok(())
}

/// Refuses configs whose tensors could not even be indexed, and dimensions beyond what
/// the tinylens core accepts (before reading any weights: a config with a billion layers
/// must not make the reader list a billion layers' tensors).
fn check_sizes(c: &ModelConfig) -> Result<()> {
    use tinylens_core::config::limits;
    let dims = [
        ("n_layers", c.n_layers, limits::MAX_LAYERS),
        ("n_heads", c.n_heads, limits::MAX_HEADS),
        ("d_model", c.d_model, limits::MAX_DIM),
        ("d_head", c.d_head, limits::MAX_DIM),
        ("n_ctx", c.n_ctx, limits::MAX_CTX),
        ("d_vocab", c.d_vocab, limits::MAX_VOCAB),
        ("d_vocab_out", c.d_vocab_out, limits::MAX_VOCAB),
    ];
    for (name, v, max) in dims {
        if v > max as usize {
            return Err(Error::Config(format!(
                "`{name}` = {v} is too large (tinylens supports at most {max})"
            )));
        }
    }
    let products = [
        c.d_vocab.checked_mul(c.d_model),
        c.n_ctx.checked_mul(c.d_model),
        c.n_heads
            .checked_mul(c.d_model)
            .and_then(|x| x.checked_mul(c.d_head))
            .and_then(|x| x.checked_mul(4))
            .and_then(|x| x.checked_mul(c.n_layers)),
        c.d_model.checked_mul(c.d_vocab_out),
    ];
    if products
        .iter()
        .any(|p| p.is_none_or(|n| n > isize::MAX as usize / 8))
    {
        return Err(Error::Config(
            "the model's dimensions are too large to be addressed".into(),
        ));
    }
    Ok(())
}

enum StrField {
    Missing,
    Null,
    Value(String),
}

fn get_str(obj: &Map<String, Value>, key: &str) -> Result<StrField> {
    match obj.get(key) {
        None => Ok(StrField::Missing),
        Some(Value::Null) => Ok(StrField::Null),
        Some(Value::String(s)) => Ok(StrField::Value(s.clone())),
        Some(v) => Err(Error::Config(format!("`{key}` must be a string, got {v}"))),
    }
}

fn is_null(obj: &Map<String, Value>, key: &str) -> bool {
    matches!(obj.get(key), None | Some(Value::Null))
}

/// A boolean with Python's truthiness for null (`None` is false).
fn get_bool(obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool> {
    match obj.get(key) {
        None => Ok(default),
        Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(Error::Config(format!("`{key}` must be a boolean, got {v}"))),
    }
}

fn get_int(obj: &Map<String, Value>, key: &str) -> Result<Option<i64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            if let Some(i) = v.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = v.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15) {
                Ok(Some(f as i64))
            } else {
                Err(Error::Config(format!(
                    "`{key}` must be an integer, got {v}"
                )))
            }
        }
    }
}

fn get_float(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| Error::Config(format!("`{key}` must be a number, got {v}"))),
    }
}

fn positive(key: &str, n: i64) -> Result<usize> {
    if n <= 0 {
        return Err(Error::Config(format!("`{key}` must be > 0, got {n}")));
    }
    usize::try_from(n).map_err(|_| Error::Config(format!("`{key}` is too large: {n}")))
}

fn get_dim(obj: &Map<String, Value>, key: &str) -> Result<usize> {
    match get_int(obj, key)? {
        None => Err(Error::Config(format!("missing `{key}`"))),
        Some(n) => positive(key, n),
    }
}

/// Writes a [`ModelConfig`] as a TL config dict (JSON), the keys TL's
/// `HookedTransformerConfig.from_dict` accepts. [`parse_config`] reads it back to an equal
/// config. `use_attn_scale` is always true and `attn_scale` explicit (1 for a model that
/// had `use_attn_scale=False`, which is equivalent).
pub fn config_to_json(cfg: &ModelConfig) -> String {
    let mut m = Map::new();
    m.insert("n_layers".into(), cfg.n_layers.into());
    m.insert("d_model".into(), cfg.d_model.into());
    m.insert("d_head".into(), cfg.d_head.into());
    m.insert("n_heads".into(), cfg.n_heads.into());
    m.insert("d_vocab".into(), cfg.d_vocab.into());
    m.insert("d_vocab_out".into(), cfg.d_vocab_out.into());
    m.insert("n_ctx".into(), cfg.n_ctx.into());
    m.insert("attn_only".into(), true.into());
    m.insert(
        "normalization_type".into(),
        match cfg.normalization {
            Normalization::None => Value::Null,
            Normalization::LN => "LN".into(),
            Normalization::LNPre => "LNPre".into(),
        },
    );
    m.insert(
        "positional_embedding_type".into(),
        match cfg.positional {
            PositionalEmbedding::Standard => "standard",
            PositionalEmbedding::Shortformer => "shortformer",
        }
        .into(),
    );
    m.insert("eps".into(), f32_json(cfg.eps));
    m.insert("use_attn_scale".into(), true.into());
    m.insert("attn_scale".into(), f32_json(cfg.attn_scale));
    serde_json::to_string_pretty(&Value::Object(m)).expect("a JSON map always serializes")
}

/// An f32 as the shortest decimal that reads back to it (1e-5, not 9.99999974737875e-6).
fn f32_json(x: f32) -> Value {
    let shortest: f64 = x.to_string().parse().unwrap_or(x as f64);
    serde_json::Number::from_f64(shortest).map_or(Value::Null, Value::Number)
}

// ---------------------------------------------------------------------------------------
// State dict
// ---------------------------------------------------------------------------------------

/// The tensors of an attention-only TL model with this config, in TL naming and shapes,
/// in a fixed order.
fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
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
fn is_ignored_buffer(name: &str, cfg: &ModelConfig) -> bool {
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

fn unexpected_tensor(name: &str, cfg: &ModelConfig) -> Error {
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

fn load_state_dict_at(bytes: &[u8], cfg: &ModelConfig, path: &Path) -> Result<Weights> {
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
fn read_tensor(view: &TensorView<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
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

// ---------------------------------------------------------------------------------------
// Weight processing
// ---------------------------------------------------------------------------------------

/// Which of TL's weight-processing steps to apply ([`process`]'s request) or were applied
/// (its result): the core's record of processing, which the blob stores, so the request,
/// the result and the blob header are one type. TL's `from_pretrained` defaults are all
/// four ([`Processing::ALL`]).
pub use tinylens_core::Processing;

/// TL 3.9 folds `ln_final` into `W_U` along the wrong axis when `d_vocab_out == d_model`.
fn tl_misfolds_ln_final(c: &ModelConfig) -> bool {
    c.d_vocab_out == c.d_model
}

/// TL 3.9 swaps the axes it centres `W_U` along when `d_vocab == d_model != d_vocab_out`.
fn tl_swaps_unembed_axes(c: &ModelConfig) -> bool {
    c.d_vocab == c.d_model && c.d_vocab_out != c.d_vocab
}

fn check_fold_ln(c: &ModelConfig) -> Result<()> {
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

fn fold_ln_unchecked(w: &mut Weights) {
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

fn center_writing_weights_unchecked(w: &mut Weights) {
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

fn check_center_unembed(c: &ModelConfig, normalization: Normalization) -> Result<()> {
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

fn center_unembed_unchecked(w: &mut Weights) {
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
fn scale_rows(m: &mut DMatrix<f32>, s: &DVector<f32>) {
    for (i, mut row) in m.row_iter_mut().enumerate() {
        row *= s[i];
    }
}

/// Subtracts from each column its mean over the rows.
fn center_columns(m: &mut DMatrix<f32>) {
    for mut col in m.column_iter_mut() {
        let mean = mean(col.iter());
        col.add_scalar_mut(-mean);
    }
}

/// Subtracts from each row its mean over the columns.
fn center_rows(m: &mut DMatrix<f32>) {
    for mut row in m.row_iter_mut() {
        let mean = mean(row.iter());
        row.add_scalar_mut(-mean);
    }
}

fn center_vector(v: &mut DVector<f32>) {
    let mean = mean(v.iter());
    v.add_scalar_mut(-mean);
}

fn mean<'a>(xs: impl ExactSizeIterator<Item = &'a f32>) -> f32 {
    let n = xs.len();
    if n == 0 {
        return 0.0;
    }
    (xs.map(|&x| x as f64).sum::<f64>() / n as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::path::PathBuf;

    // ---- helpers -------------------------------------------------------------------

    fn cfg_json(extra: &[(&str, Value)]) -> String {
        let mut m = serde_json::json!({
            "n_layers": 2, "d_model": 8, "d_head": 4, "n_heads": 2, "d_vocab": 11,
            "d_vocab_out": -1, "n_ctx": 6, "attn_only": true, "normalization_type": "LN",
            "positional_embedding_type": "standard", "eps": 1e-5, "use_attn_scale": true,
            "attn_scale": 2.0, "model_name": "custom", "dtype": "torch.float32",
            "device": "cpu", "seed": null, "d_mlp": null, "act_fn": "relu",
            "initializer_range": 0.28284271247461906, "attn_types": null,
            "n_key_value_heads": null, "final_rms": false
        });
        let obj = m.as_object_mut().unwrap();
        for (k, v) in extra {
            obj.insert(k.to_string(), v.clone());
        }
        serde_json::to_string(&m).unwrap()
    }

    fn cfg_with(extra: &[(&str, Value)]) -> ModelConfig {
        parse_config(&cfg_json(extra)).unwrap()
    }

    fn unsupported(json: &str, needle: &str) {
        match parse_config(json) {
            Err(Error::Unsupported(msg)) => {
                assert!(msg.contains(needle), "message `{msg}` lacks `{needle}`")
            }
            other => panic!("expected Unsupported({needle}), got {other:?}"),
        }
    }

    fn config_err(json: &str, needle: &str) {
        match parse_config(json) {
            Err(Error::Config(msg)) => {
                assert!(msg.contains(needle), "message `{msg}` lacks `{needle}`")
            }
            other => panic!("expected Config({needle}), got {other:?}"),
        }
    }

    fn random_weights(cfg: &ModelConfig, seed: u64) -> Weights {
        let mut rng = StdRng::seed_from_u64(seed);
        let mat = |r: usize, c: usize, rng: &mut StdRng| {
            DMatrix::from_fn(r, c, |_, _| rng.gen_range(-1.0f32..1.0))
        };
        let vecn = |n: usize, off: f32, rng: &mut StdRng| {
            DVector::from_fn(n, |_, _| off + rng.gen_range(-0.5f32..0.5))
        };
        let (dm, dh, nh) = (cfg.d_model, cfg.d_head, cfg.n_heads);
        let ln = cfg.normalization == Normalization::LN;
        let layers = (0..cfg.n_layers)
            .map(|_| LayerWeights {
                ln1_w: ln.then(|| vecn(dm, 1.0, &mut rng)),
                ln1_b: ln.then(|| vecn(dm, 0.0, &mut rng)),
                w_q: (0..nh).map(|_| mat(dm, dh, &mut rng)).collect(),
                w_k: (0..nh).map(|_| mat(dm, dh, &mut rng)).collect(),
                w_v: (0..nh).map(|_| mat(dm, dh, &mut rng)).collect(),
                w_o: (0..nh).map(|_| mat(dh, dm, &mut rng)).collect(),
                b_q: (0..nh).map(|_| vecn(dh, 0.0, &mut rng)).collect(),
                b_k: (0..nh).map(|_| vecn(dh, 0.0, &mut rng)).collect(),
                b_v: (0..nh).map(|_| vecn(dh, 0.0, &mut rng)).collect(),
                b_o: vecn(dm, 0.0, &mut rng),
            })
            .collect();
        Weights {
            cfg: cfg.clone(),
            w_e: mat(cfg.d_vocab, dm, &mut rng),
            w_pos: mat(cfg.n_ctx, dm, &mut rng),
            layers,
            ln_final_w: ln.then(|| vecn(dm, 1.0, &mut rng)),
            ln_final_b: ln.then(|| vecn(dm, 0.0, &mut rng)),
            w_u: mat(dm, cfg.d_vocab_out, &mut rng),
            b_u: vecn(cfg.d_vocab_out, 0.0, &mut rng),
        }
    }

    /// Reference forward pass (f64) following TL's semantics; returns logits [pos, vocab_out].
    fn forward(w: &Weights, toks: &[usize]) -> DMatrix<f64> {
        let c = &w.cfg;
        let f = |m: &DMatrix<f32>| m.map(|x| x as f64);
        let fv = |v: &DVector<f32>| v.map(|x| x as f64);
        let n = toks.len();
        let pos = DMatrix::from_fn(n, c.d_model, |p, j| w.w_pos[(p, j)] as f64);
        let mut resid = DMatrix::from_fn(n, c.d_model, |p, j| w.w_e[(toks[p], j)] as f64);
        if c.positional == PositionalEmbedding::Standard {
            resid += &pos;
        }
        let norm = |x: &DMatrix<f64>, lw: Option<&DVector<f32>>, lb: Option<&DVector<f32>>| {
            if c.normalization == Normalization::None {
                return x.clone();
            }
            let mut y = x.clone();
            for mut row in y.row_iter_mut() {
                let mean = row.mean();
                row.add_scalar_mut(-mean);
                let scale = (row.map(|v| v * v).mean() + c.eps as f64).sqrt();
                row /= scale;
            }
            if let (Some(lw), Some(lb)) = (lw, lb) {
                for mut row in y.row_iter_mut() {
                    for j in 0..row.len() {
                        row[j] = row[j] * lw[j] as f64 + lb[j] as f64;
                    }
                }
            }
            y
        };
        for l in &w.layers {
            let x = norm(&resid, l.ln1_w.as_ref(), l.ln1_b.as_ref());
            let qk_in = if c.positional == PositionalEmbedding::Shortformer {
                &x + &pos
            } else {
                x.clone()
            };
            let mut out = DMatrix::<f64>::zeros(n, c.d_model);
            for h in 0..c.n_heads {
                let bias = |m: DMatrix<f64>, b: &DVector<f32>| {
                    let b = fv(b);
                    let mut m = m;
                    for mut row in m.row_iter_mut() {
                        row += b.transpose();
                    }
                    m
                };
                let q = bias(&qk_in * f(&l.w_q[h]), &l.b_q[h]);
                let k = bias(&qk_in * f(&l.w_k[h]), &l.b_k[h]);
                let v = bias(&x * f(&l.w_v[h]), &l.b_v[h]);
                let scores = &q * k.transpose() / c.attn_scale as f64;
                let mut pattern = DMatrix::<f64>::zeros(n, n);
                for i in 0..n {
                    let mx = (0..=i).map(|j| scores[(i, j)]).fold(f64::MIN, f64::max);
                    let tot: f64 = (0..=i).map(|j| (scores[(i, j)] - mx).exp()).sum();
                    for j in 0..=i {
                        pattern[(i, j)] = (scores[(i, j)] - mx).exp() / tot;
                    }
                }
                out += &pattern * v * f(&l.w_o[h]);
            }
            for mut row in out.row_iter_mut() {
                row += fv(&l.b_o).transpose();
            }
            resid += out;
        }
        let x = norm(&resid, w.ln_final_w.as_ref(), w.ln_final_b.as_ref());
        let mut logits = x * f(&w.w_u);
        for mut row in logits.row_iter_mut() {
            row += fv(&w.b_u).transpose();
        }
        logits
    }

    fn log_softmax(m: &DMatrix<f64>) -> DMatrix<f64> {
        let mut y = m.clone();
        for mut row in y.row_iter_mut() {
            let mx = row.max();
            let lse = row.map(|v| (v - mx).exp()).sum().ln() + mx;
            row.add_scalar_mut(-lse);
        }
        y
    }

    fn max_diff(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
        (a - b).abs().max()
    }

    const TOKS: [usize; 6] = [3, 1, 4, 1, 5, 9];
    /// For models with a vocabulary of 8.
    const TOKS8: [usize; 6] = [3, 1, 4, 1, 5, 7];

    fn mdiff(a: &DMatrix<f32>, b: &DMatrix<f32>) -> f32 {
        assert_eq!(a.shape(), b.shape());
        (a - b).abs().max()
    }

    fn vdiff(a: &DVector<f32>, b: &DVector<f32>) -> f32 {
        assert_eq!(a.len(), b.len());
        (a - b).abs().max()
    }

    fn odiff(a: &Option<DVector<f32>>, b: &Option<DVector<f32>>) -> f32 {
        match (a, b) {
            (None, None) => 0.0,
            (Some(a), Some(b)) => vdiff(a, b),
            _ => panic!("LayerNorm weights present in one model and not the other"),
        }
    }

    /// Largest absolute difference between two models' tensors (configs must be equal).
    fn weights_diff(a: &Weights, b: &Weights) -> f32 {
        assert_eq!(a.cfg, b.cfg);
        let mut d = mdiff(&a.w_e, &b.w_e)
            .max(mdiff(&a.w_pos, &b.w_pos))
            .max(mdiff(&a.w_u, &b.w_u))
            .max(vdiff(&a.b_u, &b.b_u))
            .max(odiff(&a.ln_final_w, &b.ln_final_w))
            .max(odiff(&a.ln_final_b, &b.ln_final_b));
        for (la, lb) in a.layers.iter().zip(&b.layers) {
            d = d
                .max(odiff(&la.ln1_w, &lb.ln1_w))
                .max(odiff(&la.ln1_b, &lb.ln1_b))
                .max(vdiff(&la.b_o, &lb.b_o));
            for h in 0..a.cfg.n_heads {
                d = d
                    .max(mdiff(&la.w_q[h], &lb.w_q[h]))
                    .max(mdiff(&la.w_k[h], &lb.w_k[h]))
                    .max(mdiff(&la.w_v[h], &lb.w_v[h]))
                    .max(mdiff(&la.w_o[h], &lb.w_o[h]))
                    .max(vdiff(&la.b_q[h], &lb.b_q[h]))
                    .max(vdiff(&la.b_k[h], &lb.b_k[h]))
                    .max(vdiff(&la.b_v[h], &lb.b_v[h]));
            }
        }
        d
    }

    /// A state dict built tensor by tensor, to break it on purpose.
    struct RawDict(Vec<(String, Dtype, Vec<usize>, Vec<u8>)>);

    impl RawDict {
        fn from_weights(w: &Weights) -> Self {
            let bytes = save_state_dict(w);
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let mut v: Vec<_> = st
                .tensors()
                .into_iter()
                .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            RawDict(v)
        }
        fn get(&mut self, name: &str) -> &mut (String, Dtype, Vec<usize>, Vec<u8>) {
            self.0.iter_mut().find(|t| t.0 == name).unwrap()
        }
        fn remove(&mut self, name: &str) {
            self.0.retain(|t| t.0 != name);
        }
        fn insert(&mut self, name: &str, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) {
            self.0.push((name.to_string(), dtype, shape, data));
        }
        fn f32_values(&self, name: &str) -> Vec<f32> {
            let t = self.0.iter().find(|t| t.0 == name).unwrap();
            t.3.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        }
        fn bytes(&self) -> Vec<u8> {
            let views: Vec<_> = self
                .0
                .iter()
                .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
                .collect();
            safetensors::serialize(views, None).unwrap()
        }
    }

    // ---- config --------------------------------------------------------------------

    #[test]
    fn config_basic_and_unknown_keys_ignored() {
        let c = cfg_with(&[]);
        assert_eq!(
            c,
            ModelConfig {
                n_layers: 2,
                d_model: 8,
                d_head: 4,
                n_heads: 2,
                d_vocab: 11,
                d_vocab_out: 11,
                n_ctx: 6,
                normalization: Normalization::LN,
                positional: PositionalEmbedding::Standard,
                eps: 1e-5,
                attn_scale: 2.0,
            }
        );
    }

    #[test]
    fn config_defaults_follow_tl() {
        let json = r#"{"n_layers": 1, "d_model": 12, "d_head": 3, "n_ctx": 5,
                       "d_vocab": 7, "attn_only": true}"#;
        let c = parse_config(json).unwrap();
        assert_eq!(c.n_heads, 4); // d_model / d_head
        assert_eq!(c.d_vocab_out, 7);
        assert_eq!(c.normalization, Normalization::LN); // TL's default
        assert_eq!(c.positional, PositionalEmbedding::Standard);
        assert_eq!(c.eps, 1e-5);
        assert_eq!(c.attn_scale, 3f32.sqrt());
        let c = cfg_with(&[("n_heads", (-1).into()), ("attn_scale", (-1.0).into())]);
        assert_eq!(c.n_heads, 2);
        assert_eq!(c.attn_scale, 2.0);
    }

    #[test]
    fn config_attn_scale_rule() {
        assert_eq!(
            cfg_with(&[("use_attn_scale", false.into())]).attn_scale,
            1.0
        );
        assert_eq!(cfg_with(&[("use_attn_scale", Value::Null)]).attn_scale, 1.0);
        assert_eq!(cfg_with(&[("attn_scale", 3.5.into())]).attn_scale, 3.5);
        assert_eq!(cfg_with(&[("attn_scale", Value::Null)]).attn_scale, 2.0);
        config_err(&cfg_json(&[("attn_scale", 0.0.into())]), "attn_scale");
        config_err(&cfg_json(&[("attn_scale", (-2.0).into())]), "attn_scale");
    }

    #[test]
    fn config_normalization_and_positional() {
        let c = cfg_with(&[("normalization_type", Value::Null)]);
        assert_eq!(c.normalization, Normalization::None);
        let c = cfg_with(&[("normalization_type", "LNPre".into())]);
        assert_eq!(c.normalization, Normalization::LNPre);
        let c = cfg_with(&[("positional_embedding_type", "shortformer".into())]);
        assert_eq!(c.positional, PositionalEmbedding::Shortformer);
        unsupported(&cfg_json(&[("normalization_type", "RMS".into())]), "RMS");
        unsupported(
            &cfg_json(&[("normalization_type", "RMSPre".into())]),
            "RMSPre",
        );
        unsupported(
            &cfg_json(&[("positional_embedding_type", "rotary".into())]),
            "rotary",
        );
        unsupported(
            &cfg_json(&[("positional_embedding_type", "alibi".into())]),
            "alibi",
        );
    }

    #[test]
    fn config_refusals() {
        unsupported(&cfg_json(&[("attn_only", false.into())]), "attention-only");
        unsupported(
            r#"{"n_layers": 1, "d_model": 8, "d_head": 4, "n_ctx": 5, "d_vocab": 7}"#,
            "attention-only",
        );
        unsupported(&cfg_json(&[("final_rms", true.into())]), "final_rms");
        // final_rms is irrelevant without normalization (TL creates no ln_final).
        cfg_with(&[
            ("final_rms", true.into()),
            ("normalization_type", Value::Null),
        ]);
        unsupported(
            &cfg_json(&[("n_key_value_heads", 1.into())]),
            "grouped-query",
        );
        unsupported(
            &cfg_json(&[
                ("use_local_attn", true.into()),
                ("window_size", 2.into()),
                ("attn_types", serde_json::json!(["global", "local"])),
            ]),
            "local",
        );
        cfg_with(&[
            ("use_local_attn", true.into()),
            ("window_size", 2.into()),
            ("attn_types", serde_json::json!(["global", "global"])),
        ]);
        // attn_types without use_local_attn is ignored by TL.
        cfg_with(&[("attn_types", serde_json::json!(["local", "local"]))]);
        unsupported(
            &cfg_json(&[("attention_dir", "bidirectional".into())]),
            "causal",
        );
        unsupported(
            &cfg_json(&[("scale_attn_by_inverse_layer_idx", true.into())]),
            "scale_attn_by_inverse_layer_idx",
        );
        // With one layer the factor is 1.
        cfg_with(&[
            ("scale_attn_by_inverse_layer_idx", true.into()),
            ("n_layers", 1.into()),
        ]);
        unsupported(
            &cfg_json(&[("attn_scores_soft_cap", 50.0.into())]),
            "soft cap",
        );
        unsupported(
            &cfg_json(&[("output_logits_soft_cap", 30.0.into())]),
            "soft cap",
        );
        cfg_with(&[("output_logits_soft_cap", (-1.0).into())]);
        unsupported(&cfg_json(&[("use_qk_norm", true.into())]), "use_qk_norm");
        unsupported(&cfg_json(&[("clip_qkv", 8.0.into())]), "clip_qkv");
        unsupported(
            &cfg_json(&[("use_logn_attn", true.into())]),
            "use_logn_attn",
        );
        unsupported(
            &cfg_json(&[("use_attention_sinks", true.into())]),
            "use_attention_sinks",
        );
        unsupported(
            &cfg_json(&[("post_embedding_ln", true.into())]),
            "post_embedding_ln",
        );
        unsupported(
            &cfg_json(&[("use_normalization_before_and_after", true.into())]),
            "use_normalization_before_and_after",
        );
        unsupported(
            &cfg_json(&[("parallel_attn_mlp", true.into())]),
            "parallel_attn_mlp",
        );
        unsupported(&cfg_json(&[("load_in_4bit", true.into())]), "load_in_4bit");
        unsupported(
            &cfg_json(&[("original_architecture", "Olmo2ForCausalLM".into())]),
            "Olmo2ForCausalLM",
        );
        cfg_with(&[("original_architecture", "neel".into())]);
    }

    #[test]
    fn config_invalid_values() {
        config_err(&cfg_json(&[("d_model", 0.into())]), "d_model");
        config_err(&cfg_json(&[("n_layers", (-3).into())]), "n_layers");
        config_err(&cfg_json(&[("n_ctx", "six".into())]), "n_ctx");
        config_err(&cfg_json(&[("d_head", 2.5.into())]), "d_head");
        config_err(&cfg_json(&[("d_vocab", (-1).into())]), "d_vocab");
        config_err(&cfg_json(&[("d_vocab_out", 0.into())]), "d_vocab_out");
        config_err(&cfg_json(&[("n_heads", 0.into())]), "n_heads");
        config_err(
            &cfg_json(&[("n_heads", (-1).into()), ("d_head", 3.into())]),
            "divisible",
        );
        config_err(&cfg_json(&[("eps", 0.0.into())]), "eps");
        config_err(&cfg_json(&[("eps", (-1e-5).into())]), "eps");
        config_err(&cfg_json(&[("eps", 1e-50.into())]), "eps"); // 0 in f32
        config_err(&cfg_json(&[("eps", 1e300.into())]), "eps"); // inf in f32
        config_err(
            &cfg_json(&[("use_attn_scale", "yes".into())]),
            "use_attn_scale",
        );
        config_err(
            r#"{"d_model": 8, "d_head": 4, "n_ctx": 5, "d_vocab": 7, "attn_only": true}"#,
            "missing `n_layers`",
        );
        config_err(
            &cfg_json(&[
                ("d_vocab", 1_000_000_000_000i64.into()),
                ("d_model", 1_000_000_000i64.into()),
            ]),
            "too large",
        );
        // 8.0 is accepted as an integer.
        assert_eq!(cfg_with(&[("d_model", 8.0.into())]).d_model, 8);
        assert!(matches!(parse_config("{"), Err(Error::Json { .. })));
        assert!(matches!(parse_config("[1, 2]"), Err(Error::Json { .. })));
    }

    #[test]
    fn config_json_round_trip() {
        for extra in [
            vec![],
            vec![("normalization_type", Value::Null)],
            vec![
                ("normalization_type", "LNPre".into()),
                ("positional_embedding_type", "shortformer".into()),
                ("eps", 1e-6.into()),
                ("attn_scale", 1.7.into()),
            ],
            vec![("use_attn_scale", false.into()), ("d_vocab_out", 5.into())],
        ] {
            let c = cfg_with(&extra);
            let json = config_to_json(&c);
            assert_eq!(parse_config(&json).unwrap(), c, "{json}");
        }
        // eps is written as the decimal TL wrote (1e-5), not as f32-rounded digits.
        let json: Value = serde_json::from_str(&config_to_json(&cfg_with(&[]))).unwrap();
        assert_eq!(json["eps"].as_f64(), Some(1e-5));
    }

    // ---- state dict ------------------------------------------------------------------

    #[test]
    fn state_dict_round_trip_all_normalizations() {
        for norm in [Value::from("LN"), Value::from("LNPre"), Value::Null] {
            for pos in ["standard", "shortformer"] {
                let c = cfg_with(&[
                    ("normalization_type", norm.clone()),
                    ("positional_embedding_type", pos.into()),
                    ("d_vocab_out", 5.into()),
                ]);
                let w = random_weights(&c, 7);
                let back = load_state_dict(&save_state_dict(&w), &c).unwrap();
                assert_eq!(weights_diff(&w, &back), 0.0);
            }
        }
    }

    #[test]
    fn state_dict_ignores_tl_buffers() {
        let c = cfg_with(&[]);
        let w = random_weights(&c, 1);
        let mut raw = RawDict::from_weights(&w);
        for l in 0..2 {
            raw.insert(
                &format!("blocks.{l}.attn.mask"),
                Dtype::BOOL,
                vec![0, 0],
                vec![],
            );
            raw.insert(
                &format!("blocks.{l}.attn.IGNORE"),
                Dtype::F32,
                vec![],
                f32::NEG_INFINITY.to_le_bytes().to_vec(),
            );
        }
        let back = load_state_dict(&raw.bytes(), &c).unwrap();
        assert_eq!(weights_diff(&w, &back), 0.0);
        // A buffer of a layer the model does not have is not ignored.
        raw.insert("blocks.2.attn.mask", Dtype::BOOL, vec![0, 0], vec![]);
        match load_state_dict(&raw.bytes(), &c) {
            Err(Error::Unsupported(m)) => assert!(m.contains("blocks.2.attn.mask"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn state_dict_converts_float_dtypes() {
        let c = cfg_with(&[]);
        let w = random_weights(&c, 2);
        let name = "blocks.1.attn.W_V";
        let base = RawDict::from_weights(&w);
        let values = base.f32_values(name);
        type Conv = fn(f32) -> (Vec<u8>, f32);
        let convs: [(Dtype, Conv); 3] = [
            (Dtype::F16, |x| {
                let h = half::f16::from_f32(x);
                (h.to_le_bytes().to_vec(), h.to_f32())
            }),
            (Dtype::BF16, |x| {
                let h = half::bf16::from_f32(x);
                (h.to_le_bytes().to_vec(), h.to_f32())
            }),
            (Dtype::F64, |x| ((x as f64).to_le_bytes().to_vec(), x)),
        ];
        for (dtype, conv) in convs {
            let mut raw = RawDict(base.0.clone());
            let (bytes, expect): (Vec<Vec<u8>>, Vec<f32>) = values.iter().map(|&x| conv(x)).unzip();
            let t = raw.get(name);
            t.1 = dtype;
            t.3 = bytes.concat();
            let back = load_state_dict(&raw.bytes(), &c).unwrap();
            let got: Vec<f32> = back.layers[1]
                .w_v
                .iter()
                .flat_map(|m| {
                    (0..m.nrows()).flat_map(move |r| m.row(r).iter().copied().collect::<Vec<_>>())
                })
                .collect();
            assert_eq!(got, expect, "{dtype}");
        }
    }

    #[test]
    fn state_dict_errors() {
        let c = cfg_with(&[]);
        let w = random_weights(&c, 3);
        let base = RawDict::from_weights(&w);

        let mut raw = RawDict(base.0.clone());
        raw.remove("blocks.1.attn.b_K");
        assert!(matches!(load_state_dict(&raw.bytes(), &c),
            Err(Error::MissingTensor { name }) if name == "blocks.1.attn.b_K"));

        let mut raw = RawDict(base.0.clone());
        raw.remove("blocks.0.ln1.w");
        assert!(matches!(load_state_dict(&raw.bytes(), &c),
            Err(Error::MissingTensor { name }) if name == "blocks.0.ln1.w"));

        let mut raw = RawDict(base.0.clone());
        raw.get("unembed.W_U").2 = vec![11, 8];
        match load_state_dict(&raw.bytes(), &c) {
            Err(Error::TensorShape {
                name,
                expected,
                got,
            }) => {
                assert_eq!(name, "unembed.W_U");
                assert_eq!(expected, vec![8, 11]);
                assert_eq!(got, vec![11, 8]);
            }
            other => panic!("{other:?}"),
        }

        for dtype in [Dtype::I32, Dtype::U32] {
            let mut raw = RawDict(base.0.clone());
            raw.get("embed.W_E").1 = dtype;
            match load_state_dict(&raw.bytes(), &c) {
                Err(Error::TensorDtype { name, dtype: d }) => {
                    assert_eq!(name, "embed.W_E");
                    assert_eq!(d, dtype.to_string());
                }
                other => panic!("{other:?}"),
            }
        }
        let mut raw = RawDict(base.0.clone());
        let t = raw.get("blocks.0.attn.b_O");
        t.1 = Dtype::BOOL;
        t.3 = vec![1u8; 8];
        assert!(matches!(load_state_dict(&raw.bytes(), &c),
            Err(Error::TensorDtype { name, .. }) if name == "blocks.0.attn.b_O"));
        let mut raw = RawDict(base.0.clone());
        let t = raw.get("blocks.0.attn.b_O");
        t.1 = Dtype::I64;
        t.3 = vec![0u8; 8 * 8];
        assert!(matches!(load_state_dict(&raw.bytes(), &c),
            Err(Error::TensorDtype { name, .. }) if name == "blocks.0.attn.b_O"));

        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut raw = RawDict(base.0.clone());
            raw.get("pos_embed.W_pos").3[12..16].copy_from_slice(&bad.to_le_bytes());
            assert!(matches!(load_state_dict(&raw.bytes(), &c),
                Err(Error::NonFiniteWeight { name }) if name == "pos_embed.W_pos"));
        }
        // F64 values beyond f32's range become infinite.
        let mut raw = RawDict(base.0.clone());
        let t = raw.get("unembed.b_U");
        t.1 = Dtype::F64;
        t.3 = (0..11)
            .flat_map(|i| (if i == 3 { 1e300 } else { 0.5f64 }).to_le_bytes())
            .collect();
        assert!(matches!(load_state_dict(&raw.bytes(), &c),
            Err(Error::NonFiniteWeight { name }) if name == "unembed.b_U"));

        let mut raw = RawDict(base.0.clone());
        raw.insert(
            "blocks.0.mlp.W_in",
            Dtype::F32,
            vec![8, 32],
            vec![0; 8 * 32 * 4],
        );
        match load_state_dict(&raw.bytes(), &c) {
            Err(Error::Unsupported(m)) => {
                assert!(m.contains("blocks.0.mlp.W_in") && m.contains("MLP"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let mut raw = RawDict(base.0.clone());
        raw.insert("blocks.0.attn.sinks", Dtype::F32, vec![2], vec![0; 8]);
        match load_state_dict(&raw.bytes(), &c) {
            Err(Error::Unsupported(m)) => assert!(m.contains("blocks.0.attn.sinks"), "{m}"),
            other => panic!("{other:?}"),
        }

        // LayerNorm weights in a model whose config says LNPre.
        let pre = cfg_with(&[("normalization_type", "LNPre".into())]);
        match load_state_dict(&base.bytes(), &pre) {
            Err(Error::Unsupported(m)) => {
                assert!(m.contains("blocks.0.ln1.b") && m.contains("LNPre"), "{m}")
            }
            other => panic!("{other:?}"),
        }

        assert!(matches!(
            load_state_dict(b"not a safetensors file", &c),
            Err(Error::Safetensors { .. })
        ));
    }

    #[test]
    fn load_files_reports_paths() {
        let dir = std::env::temp_dir().join(format!("tinylens_tl_test_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = cfg_with(&[("d_vocab_out", 4.into())]);
        let w = random_weights(&c, 4);
        let (wp, cp) = (dir.join("model.safetensors"), dir.join("config.json"));
        std::fs::write(&wp, save_state_dict(&w)).unwrap();
        std::fs::write(&cp, config_to_json(&c)).unwrap();
        let back = load_files(&wp, &cp).unwrap();
        assert_eq!(weights_diff(&w, &back), 0.0);

        let missing = dir.join("nope.safetensors");
        match load_files(&missing, &cp) {
            Err(e @ Error::Io { .. }) => {
                assert!(e.to_string().contains("nope.safetensors"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        match load_files(&wp, &dir.join("nope.json")) {
            Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("nope.json"), "{e}"),
            other => panic!("{other:?}"),
        }
        let bad_json = dir.join("bad.json");
        std::fs::write(&bad_json, "{\"n_layers\": ").unwrap();
        match load_files(&wp, &bad_json) {
            Err(Error::Json { path, .. }) => assert_eq!(path, bad_json),
            other => panic!("{other:?}"),
        }
        match load_files(&cp, &cp) {
            Err(Error::Safetensors { path, .. }) => assert_eq!(path, cp),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // ---- processing: invariants --------------------------------------------------------

    #[test]
    fn fold_ln_preserves_logits_and_makes_lnpre() {
        let c = cfg_with(&[("d_vocab_out", 5.into())]);
        let w0 = random_weights(&c, 10);
        let mut w = w0.clone();
        fold_ln(&mut w).unwrap();
        assert_eq!(w.cfg.normalization, Normalization::LNPre);
        assert!(w.ln_final_w.is_none() && w.layers.iter().all(|l| l.ln1_w.is_none()));
        assert!(max_diff(&forward(&w0, &TOKS), &forward(&w, &TOKS)) < 1e-4);
        // Folded weights are centred along d_model.
        for l in &w.layers {
            for m in l.w_q.iter().chain(&l.w_k).chain(&l.w_v) {
                assert!(m.row_mean().abs().max() < 1e-6);
            }
        }
        assert!(w.w_u.row_mean().abs().max() < 1e-6);
        assert!(matches!(fold_ln(&mut w), Err(Error::Unsupported(m)) if m.contains("LNPre")));
    }

    #[test]
    fn fold_ln_refusals() {
        let mut w = random_weights(&cfg_with(&[("normalization_type", Value::Null)]), 1);
        assert!(
            matches!(fold_ln(&mut w), Err(Error::Unsupported(m)) if m.contains("no LayerNorm"))
        );
        let mut w = random_weights(
            &cfg_with(&[("positional_embedding_type", "shortformer".into())]),
            1,
        );
        assert!(matches!(fold_ln(&mut w), Err(Error::Unsupported(m)) if m.contains("shortformer")));
        // d_vocab_out == d_model: TL 3.9 mis-folds ln_final.
        let mut w = random_weights(&cfg_with(&[("d_vocab_out", 8.into())]), 1);
        let before = w.clone();
        assert!(
            matches!(fold_ln(&mut w), Err(Error::Unsupported(m)) if m.contains("d_vocab_out == d_model"))
        );
        assert_eq!(weights_diff(&w, &before), 0.0);
    }

    #[test]
    fn center_writing_weights_preserves_logits() {
        for norm in [Value::from("LN"), Value::from("LNPre")] {
            let c = cfg_with(&[("normalization_type", norm)]);
            let w0 = random_weights(&c, 11);
            let mut w = w0.clone();
            center_writing_weights(&mut w).unwrap();
            assert!(max_diff(&forward(&w0, &TOKS), &forward(&w, &TOKS)) < 1e-4);
            assert!(w.w_e.column_mean().abs().max() < 1e-6);
            assert!(w.w_pos.column_mean().abs().max() < 1e-6);
            assert!(w.layers[1].w_o[1].column_mean().abs().max() < 1e-6);
            assert!(w.layers[0].b_o.mean().abs() < 1e-6);
        }
        let mut w = random_weights(&cfg_with(&[("normalization_type", Value::Null)]), 1);
        assert!(center_writing_weights(&mut w).is_err());
        let mut w = random_weights(
            &cfg_with(&[("positional_embedding_type", "shortformer".into())]),
            1,
        );
        assert!(center_writing_weights(&mut w).is_err());
    }

    #[test]
    fn center_unembed_preserves_log_probs() {
        for norm in [Value::from("LN"), Value::Null] {
            let c = cfg_with(&[("normalization_type", norm)]);
            let w0 = random_weights(&c, 12);
            let mut w = w0.clone();
            center_unembed(&mut w).unwrap();
            let (a, b) = (forward(&w0, &TOKS), forward(&w, &TOKS));
            assert!(max_diff(&log_softmax(&a), &log_softmax(&b)) < 1e-4);
            assert!(max_diff(&a, &b) > 1e-3); // logits do move
            assert!(w.w_u.column_mean().abs().max() < 1e-6);
            assert!(w.b_u.mean().abs() < 1e-6);
        }
    }

    #[test]
    fn fold_value_biases_preserves_logits() {
        let c = cfg_with(&[("positional_embedding_type", "shortformer".into())]);
        let w0 = random_weights(&c, 13);
        let mut w = w0.clone();
        fold_value_biases(&mut w);
        assert!(max_diff(&forward(&w0, &TOKS), &forward(&w, &TOKS)) < 1e-4);
        assert!(w
            .layers
            .iter()
            .all(|l| l.b_v.iter().all(|b| b.iter().all(|&x| x == 0.0))));
    }

    #[test]
    fn process_all_preserves_log_probs() {
        let c = cfg_with(&[("d_vocab_out", 5.into())]);
        let w0 = random_weights(&c, 14);
        let mut w = w0.clone();
        assert_eq!(process(&mut w, Processing::ALL).unwrap(), Processing::ALL);
        let (a, b) = (forward(&w0, &TOKS), forward(&w, &TOKS));
        assert!(max_diff(&log_softmax(&a), &log_softmax(&b)) < 1e-4);
        assert!(w.layers.iter().all(|l| l.b_o.mean().abs() < 1e-6));
        assert_eq!(w.cfg.normalization, Normalization::LNPre);
        // Steps one at a time in TL's order give the same result.
        let mut v = w0.clone();
        fold_ln(&mut v).unwrap();
        center_writing_weights(&mut v).unwrap();
        center_unembed(&mut v).unwrap();
        fold_value_biases(&mut v);
        for l in &mut v.layers {
            center_vector(&mut l.b_o);
        }
        assert_eq!(weights_diff(&w, &v), 0.0);
        // Nothing requested: nothing changes.
        let mut u = w0.clone();
        assert_eq!(process(&mut u, Processing::NONE).unwrap(), Processing::NONE);
        assert_eq!(weights_diff(&u, &w0), 0.0);
    }

    #[test]
    fn process_skips_what_tl_skips() {
        // Shortformer: from_pretrained turns off everything but fold_value_biases.
        let c = cfg_with(&[("positional_embedding_type", "shortformer".into())]);
        let mut w = random_weights(&c, 15);
        let applied = process(&mut w, Processing::ALL).unwrap();
        assert_eq!(
            applied,
            Processing {
                fold_value_biases: true,
                ..Processing::NONE
            }
        );
        assert_eq!(w.cfg.normalization, Normalization::LN);

        // No LayerNorm: fold_ln and center_writing_weights are skipped.
        let c = cfg_with(&[("normalization_type", Value::Null)]);
        let w0 = random_weights(&c, 16);
        let mut w = w0.clone();
        let applied = process(&mut w, Processing::ALL).unwrap();
        assert_eq!(
            applied,
            Processing {
                center_unembed: true,
                fold_value_biases: true,
                ..Processing::NONE
            }
        );
        let (a, b) = (forward(&w0, &TOKS), forward(&w, &TOKS));
        assert!(max_diff(&log_softmax(&a), &log_softmax(&b)) < 1e-4);

        // LNPre: nothing to fold, the rest applies.
        let c = cfg_with(&[("normalization_type", "LNPre".into())]);
        let mut w = random_weights(&c, 17);
        let applied = process(&mut w, Processing::ALL).unwrap();
        assert_eq!(
            applied,
            Processing {
                fold_ln: false,
                ..Processing::ALL
            }
        );
    }

    #[test]
    fn process_refusals_leave_weights_unchanged() {
        // d_vocab_out == d_model with LN: TL 3.9 would mis-fold.
        let c = cfg_with(&[("d_vocab_out", 8.into())]);
        let w0 = random_weights(&c, 18);
        let mut w = w0.clone();
        assert!(matches!(
            process(&mut w, Processing::ALL),
            Err(Error::Unsupported(_))
        ));
        assert_eq!(weights_diff(&w, &w0), 0.0);
        // ... but without fold_ln it is fine.
        let p = Processing {
            fold_ln: false,
            ..Processing::ALL
        };
        assert_eq!(process(&mut w, p).unwrap(), p);

        // d_vocab == d_model != d_vocab_out: center_unembed needs LNPre at that point.
        let c = cfg_with(&[("d_vocab", 8.into()), ("d_vocab_out", 5.into())]);
        let w0 = random_weights(&c, 19);
        let mut w = w0.clone();
        let p = Processing {
            center_unembed: true,
            ..Processing::NONE
        };
        assert!(
            matches!(process(&mut w, p), Err(Error::Unsupported(m)) if m.contains("center_unembed"))
        );
        assert_eq!(weights_diff(&w, &w0), 0.0);
        assert!(center_unembed(&mut w).is_err());
    }

    #[test]
    fn tl_axis_quirk_reproduced_when_d_vocab_equals_d_model() {
        // d_vocab == d_model != d_vocab_out: TL 3.9 centres W_U over the vocabulary in
        // fold_ln and over d_model in center_unembed.
        let c = cfg_with(&[("d_vocab", 8.into()), ("d_vocab_out", 5.into())]);
        let w0 = random_weights(&c, 20);
        let mut w = w0.clone();
        fold_ln(&mut w).unwrap();
        assert!(w.w_u.column_mean().abs().max() < 1e-6); // centred over the vocabulary
        let (a, b) = (forward(&w0, &TOKS8), forward(&w, &TOKS8));
        assert!(max_diff(&log_softmax(&a), &log_softmax(&b)) < 1e-4);
        center_unembed(&mut w).unwrap(); // allowed now: LNPre
        assert!(w.w_u.row_mean().abs().max() < 1e-6);
        assert!(w.w_u.column_mean().abs().max() < 1e-6);
        let b = forward(&w, &TOKS8);
        assert!(max_diff(&log_softmax(&a), &log_softmax(&b)) < 1e-4);
        // With both steps, the result equals the intended processing.
        let mut all = w0.clone();
        process(&mut all, Processing::ALL).unwrap();
        let b = forward(&all, &TOKS8);
        assert!(max_diff(&log_softmax(&a), &log_softmax(&b)) < 1e-4);
    }

    // ---- TransformerLens fixtures -----------------------------------------------------

    fn fixture_in(model: &str, name: &str) -> PathBuf {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(model)
            .join(name);
        assert!(
            p.exists(),
            "missing fixture {} (written by scripts/make_fixtures.py)",
            p.display()
        );
        p
    }

    fn load_fixture(model: &str) -> Weights {
        load_files(
            &fixture_in(model, "model.safetensors"),
            &fixture_in(model, "config.json"),
        )
        .unwrap()
    }

    /// `tokens` [n, pos] and `logits` [n, pos, vocab] of a TL reference file.
    fn reference_logits(model: &str, file: &str) -> (Vec<Vec<usize>>, Vec<DMatrix<f64>>) {
        let bytes = std::fs::read(fixture_in(model, file)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("tokens").unwrap();
        assert_eq!(t.dtype(), Dtype::I32);
        let (n, pos) = (t.shape()[0], t.shape()[1]);
        let toks: Vec<usize> = t
            .data()
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as usize)
            .collect();
        let l = st.tensor("logits").unwrap();
        let vocab = l.shape()[2];
        let logits = read_tensor(&l, "logits", &[n, pos, vocab]).unwrap();
        let tokens = toks.chunks(pos).map(<[usize]>::to_vec).collect();
        let logits = logits
            .chunks(pos * vocab)
            .map(|c| DMatrix::from_row_slice(pos, vocab, c).map(|x| x as f64))
            .collect();
        (tokens, logits)
    }

    /// The loaded weights, run through the test's reference forward pass, give TL's logits.
    fn check_logits(model: &str, w: &Weights, file: &str) {
        let (tokens, logits) = reference_logits(model, file);
        for (t, want) in tokens.iter().zip(&logits).take(4) {
            let d = max_diff(&forward(w, t), want);
            assert!(d < 1e-3, "{model}/{file}: max |logit diff| {d}");
        }
    }

    #[test]
    fn tl_fixtures_load_and_reproduce_tl_logits() {
        let w = load_fixture("attn1_ln");
        assert_eq!(w.cfg.normalization, Normalization::LN);
        check_logits("attn1_ln", &w, "reference.safetensors");
        let w = load_fixture("attn2_standard_noln");
        assert_eq!(w.cfg.normalization, Normalization::None);
        check_logits("attn2_standard_noln", &w, "reference.safetensors");
        let w = load_fixture("attn2_shortformer_ln");
        assert_eq!(w.cfg.positional, PositionalEmbedding::Shortformer);
        check_logits("attn2_shortformer_ln", &w, "reference.safetensors");
    }

    fn check_against_tl(model: &str, request: Processing, applied: Processing, processed: &str) {
        let mut w = load_fixture(model);
        assert_eq!(process(&mut w, request).unwrap(), applied);
        let expected = load_files(
            &fixture_in(model, &format!("{processed}.safetensors")),
            &fixture_in(model, &format!("{processed}.config.json")),
        )
        .unwrap();
        let d = weights_diff(&w, &expected);
        assert!(d <= 1e-5, "{model}/{processed}: max abs difference {d}");
    }

    #[test]
    fn tl_fixture_fold_ln_matches() {
        let p = Processing {
            fold_ln: true,
            ..Processing::NONE
        };
        check_against_tl("attn1_ln", p, p, "processed_fold_ln");
    }

    #[test]
    fn tl_fixture_all_processing_matches() {
        check_against_tl(
            "attn1_ln",
            Processing::ALL,
            Processing::ALL,
            "processed_all",
        );
        let mut w = load_fixture("attn1_ln");
        process(&mut w, Processing::ALL).unwrap();
        check_logits("attn1_ln", &w, "reference_processed_all.safetensors");
    }

    #[test]
    fn tl_fixture_no_ln_processing_matches() {
        // TL skips fold_ln and center_writing_weights without a LayerNorm.
        let applied = Processing {
            center_unembed: true,
            fold_value_biases: true,
            ..Processing::NONE
        };
        check_against_tl(
            "attn2_standard_noln",
            Processing::ALL,
            applied,
            "processed_cu_fvb",
        );
        check_against_tl("attn2_standard_noln", applied, applied, "processed_cu_fvb");
        let mut w = load_fixture("attn2_standard_noln");
        process(&mut w, Processing::ALL).unwrap();
        check_logits(
            "attn2_standard_noln",
            &w,
            "reference_processed_cu_fvb.safetensors",
        );
    }

    #[test]
    fn tl_fixture_shortformer_processing_keeps_log_probs() {
        let w0 = load_fixture("attn2_shortformer_ln");
        let mut w = w0.clone();
        let applied = process(&mut w, Processing::ALL).unwrap();
        assert_eq!(
            applied,
            Processing {
                fold_value_biases: true,
                ..Processing::NONE
            }
        );
        check_logits("attn2_shortformer_ln", &w, "reference.safetensors");
    }
}
