//! TransformerLens's config dict (`HookedTransformerConfig.to_dict()`) ⇄ [`ModelConfig`].

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::weights::{ModelConfig, Normalization, PositionalEmbedding};

use super::DEFAULT_EPS;

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

pub(super) fn parse_config_at(json: &str, path: &Path) -> Result<ModelConfig> {
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

pub(super) fn config_from_map(obj: &Map<String, Value>) -> Result<ModelConfig> {
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
pub(super) fn refuse_features(
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
pub(super) fn check_sizes(c: &ModelConfig) -> Result<()> {
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

pub(super) enum StrField {
    Missing,
    Null,
    Value(String),
}

pub(super) fn get_str(obj: &Map<String, Value>, key: &str) -> Result<StrField> {
    match obj.get(key) {
        None => Ok(StrField::Missing),
        Some(Value::Null) => Ok(StrField::Null),
        Some(Value::String(s)) => Ok(StrField::Value(s.clone())),
        Some(v) => Err(Error::Config(format!("`{key}` must be a string, got {v}"))),
    }
}

pub(super) fn is_null(obj: &Map<String, Value>, key: &str) -> bool {
    matches!(obj.get(key), None | Some(Value::Null))
}

/// A boolean with Python's truthiness for null (`None` is false).
pub(super) fn get_bool(obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool> {
    match obj.get(key) {
        None => Ok(default),
        Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(Error::Config(format!("`{key}` must be a boolean, got {v}"))),
    }
}

pub(super) fn get_int(obj: &Map<String, Value>, key: &str) -> Result<Option<i64>> {
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

pub(super) fn get_float(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| Error::Config(format!("`{key}` must be a number, got {v}"))),
    }
}

pub(super) fn positive(key: &str, n: i64) -> Result<usize> {
    if n <= 0 {
        return Err(Error::Config(format!("`{key}` must be > 0, got {n}")));
    }
    usize::try_from(n).map_err(|_| Error::Config(format!("`{key}` is too large: {n}")))
}

pub(super) fn get_dim(obj: &Map<String, Value>, key: &str) -> Result<usize> {
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
pub(super) fn f32_json(x: f32) -> Value {
    let shortest: f64 = x.to_string().parse().unwrap_or(x as f64);
    serde_json::Number::from_f64(shortest).map_or(Value::Null, Value::Number)
}
