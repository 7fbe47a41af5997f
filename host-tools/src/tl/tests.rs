//! Tests of the TransformerLens import: config, state_dict, processing, and the
//! committed TL fixtures.

use super::config::*;
use super::processing::*;
use super::state_dict::*;
use crate::error::Error;
use crate::weights::{LayerWeights, ModelConfig, Normalization, PositionalEmbedding, Weights};
use nalgebra::{DMatrix, DVector};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::Value;
use std::path::Path;
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
    assert!(matches!(fold_ln(&mut w), Err(Error::Unsupported(m)) if m.contains("no LayerNorm")));
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
