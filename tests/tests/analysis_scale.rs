//! Every analysis command on a generated model larger than the fixtures (2 layers x 8
//! heads, d_model 128, d_head 16, vocabulary 1500, LayerNorm; random weights from a seed,
//! never committed), through the commands' own code paths, against computations that do
//! not share them: dense vocab x vocab circuits, eigenvalues of the small product formed
//! from the vocabulary-sized factors by nalgebra, composition from dense `d_model`
//! products, the model's own logits, patterns recorded by `run`, and losses of ablated
//! runs made through `run`'s interventions.

use std::path::{Path, PathBuf};

use nalgebra::{DMatrix, DVector};
use serde_json::Value;
use tinylens_core::intervene::HeadRef;
use tinylens_core::{Model, StorageKind};
use tinylens_host::analysis::attribution::next_token_loss;
use tinylens_host::commands::{ablate, attribute, circuits, heads, paths};
use tinylens_host::convert;
use tinylens_host::run::{run, AblateMode, RunOptions};
use tinylens_host::weights::{
    LayerWeights, ModelConfig, Normalization, PositionalEmbedding, Weights,
};
use tinylens_tests::*;

const N_LAYERS: usize = 2;
const N_HEADS: usize = 8;
const D_MODEL: usize = 128;
const D_HEAD: usize = 16;
const D_VOCAB: usize = 1500;
const N_CTX: usize = 96;

/// SplitMix64 and Box-Muller: a seeded normal stream without a dependency.
struct Normal(u64);

impl Normal {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn sample(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    fn matrix(&mut self, rows: usize, cols: usize, std: f32) -> DMatrix<f32> {
        DMatrix::from_fn(rows, cols, |_, _| self.sample() * std)
    }

    fn vector(&mut self, n: usize, mean: f32, std: f32) -> DVector<f32> {
        DVector::from_fn(n, |_, _| mean + self.sample() * std)
    }
}

/// A random attention-only model initialised as TransformerLens does (normal weights of
/// std 0.8/sqrt(d_model)), with LayerNorm weights near 1 and small biases, so that every
/// term of every analysis is non-trivial.
fn generated(seed: u64) -> Weights {
    let mut r = Normal(seed);
    let std = 0.8 / (D_MODEL as f32).sqrt();
    let cfg = ModelConfig {
        n_layers: N_LAYERS,
        d_model: D_MODEL,
        d_head: D_HEAD,
        n_heads: N_HEADS,
        d_vocab: D_VOCAB,
        d_vocab_out: D_VOCAB,
        n_ctx: N_CTX,
        normalization: Normalization::LN,
        positional: PositionalEmbedding::Standard,
        eps: 1e-5,
        attn_scale: (D_HEAD as f32).sqrt(),
    };
    let layers = (0..N_LAYERS)
        .map(|_| LayerWeights {
            ln1_w: Some(r.vector(D_MODEL, 1.0, 0.1)),
            ln1_b: Some(r.vector(D_MODEL, 0.0, 0.02)),
            w_q: (0..N_HEADS)
                .map(|_| r.matrix(D_MODEL, D_HEAD, std))
                .collect(),
            w_k: (0..N_HEADS)
                .map(|_| r.matrix(D_MODEL, D_HEAD, std))
                .collect(),
            w_v: (0..N_HEADS)
                .map(|_| r.matrix(D_MODEL, D_HEAD, std))
                .collect(),
            w_o: (0..N_HEADS)
                .map(|_| r.matrix(D_HEAD, D_MODEL, std))
                .collect(),
            b_q: (0..N_HEADS).map(|_| r.vector(D_HEAD, 0.0, 0.02)).collect(),
            b_k: (0..N_HEADS).map(|_| r.vector(D_HEAD, 0.0, 0.02)).collect(),
            b_v: (0..N_HEADS).map(|_| r.vector(D_HEAD, 0.0, 0.02)).collect(),
            b_o: r.vector(D_MODEL, 0.0, 0.02),
        })
        .collect();
    Weights {
        w_e: r.matrix(D_VOCAB, D_MODEL, std),
        w_pos: r.matrix(N_CTX, D_MODEL, std),
        layers,
        ln_final_w: Some(r.vector(D_MODEL, 1.0, 0.1)),
        ln_final_b: Some(r.vector(D_MODEL, 0.0, 0.02)),
        w_u: r.matrix(D_MODEL, D_VOCAB, std),
        b_u: r.vector(D_VOCAB, 0.0, 0.02),
        cfg,
    }
}

fn f64m(m: &DMatrix<f32>) -> DMatrix<f64> {
    m.map(f64::from)
}

fn model_file(dir: &Path) -> (PathBuf, Weights) {
    let w = generated(20211222);
    let (bytes, _) = convert::write_blob(
        &w,
        convert::QuantPlan::for_kind(StorageKind::F32),
        Default::default(),
        None,
    )
    .expect("blob");
    let path = dir.join("generated.tlm");
    std::fs::write(&path, bytes).unwrap();
    (path, w)
}

fn prompt(repeated: usize) -> heads::PromptArgs {
    heads::PromptArgs {
        repeated: Some(repeated),
        seed: 3,
        bos: "none".into(),
        ..Default::default()
    }
}

/// The five largest `(value, row, col)`, largest first.
fn top5(items: impl Iterator<Item = (f64, usize, usize)>) -> Vec<(f64, usize, usize)> {
    let mut top: Vec<(f64, usize, usize)> = Vec::with_capacity(6);
    for x in items {
        if top.len() < 5 || x.0 > top[4].0 {
            let at = top.iter().position(|y| x.0 > y.0).unwrap_or(top.len());
            top.insert(at, x);
            top.truncate(5);
        }
    }
    top
}

fn close(what: &str, ours: f64, want: f64, tol: f64) {
    assert!(
        (ours - want).abs() <= tol * want.abs().max(1.0),
        "{what}: ours {ours} vs {want}"
    );
}

#[test]
fn circuits_on_a_generated_model_match_dense_circuits() {
    let dir = temp_dir("scale-circuits");
    let (path, w) = model_file(&dir);
    let j = circuits::json(&circuits::CircuitsArgs {
        model: path,
        compare: None,
        json: true,
        top: 4,
        baseline_samples: 8,
        top_pairs: 5,
        tokens_subset: None,
        full_scans: true,
        no_scans: false,
    })
    .unwrap();
    assert_eq!(j["scan"]["tokens"], "all");
    assert_eq!(j["scan"]["rows"], D_VOCAB);
    let w_e = f64m(&w.w_e);
    let w_u = f64m(&w.w_u);
    for l in 0..N_LAYERS {
        for h in 0..N_HEADS {
            let lw = &w.layers[l];
            // The small product W_O W_U W_E W_V, formed from the vocabulary-sized factors
            // and solved by nalgebra (the command uses Gram matrices and faer).
            let left = &w_e * f64m(&lw.w_v[h]);
            let right = f64m(&lw.w_o[h]) * &w_u;
            let eig = (&right * &left).complex_eigenvalues();
            let copying =
                eig.iter().map(|z| z.re).sum::<f64>() / eig.iter().map(|z| z.norm()).sum::<f64>();
            let ours = j["copying"][l][h].as_f64().unwrap();
            close(&format!("copying L{l}H{h}"), ours, copying, 1e-6);
            let head = &j["heads"][l * N_HEADS + h];
            let trace: f64 = (0..D_VOCAB)
                .map(|i| left.row(i).dot(&right.column(i).transpose()))
                .sum();
            close(
                "OV trace",
                head["ov"]["eigen"]["trace"].as_f64().unwrap(),
                trace,
                1e-8,
            );
            // Frobenius norm of the full OV circuit from the factors' Gram matrices.
            let norm2 =
                ((left.transpose() * &left).component_mul(&(&right * right.transpose()))).sum();
            close(
                "OV norm",
                head["ov"]["frobenius_norm"].as_f64().unwrap(),
                norm2.sqrt(),
                1e-8,
            );
        }
    }
    // Two heads in full: every entry of the vocab x vocab OV and QK circuits.
    for (l, h) in [(0usize, 0usize), (1, 7)] {
        let lw = &w.layers[l];
        let head = &j["heads"][l * N_HEADS + h];
        for (kind, dense) in [
            ("ov", &w_e * f64m(&lw.w_v[h]) * (f64m(&lw.w_o[h]) * &w_u)),
            (
                "qk",
                &w_e * f64m(&lw.w_q[h]) * (&w_e * f64m(&lw.w_k[h])).transpose(),
            ),
        ] {
            let mut hits = 0;
            let mut all: Vec<(f64, usize, usize)> = Vec::new();
            for i in 0..D_VOCAB {
                let row = dense.row(i);
                let best = (0..D_VOCAB).fold(0, |b, c| if row[c] > row[b] { c } else { b });
                hits += usize::from(best == i);
                all.extend(top5((0..D_VOCAB).map(|c| (row[c], i, c))));
            }
            all.sort_by(|a, b| b.0.total_cmp(&a.0));
            let frac = head[kind]["diagonal_argmax_fraction"].as_f64().unwrap();
            // Rows whose two largest entries are within f32 rounding may rank differently.
            assert!(
                (frac - hits as f64 / D_VOCAB as f64).abs() <= 2.0 / D_VOCAB as f64,
                "L{l}H{h} {kind}: diagonal {frac} vs {hits}"
            );
            let pairs = head[kind]["top_pairs"].as_array().unwrap();
            assert_eq!(pairs.len(), 5);
            for (p, want) in pairs.iter().zip(&all) {
                assert_eq!(
                    (
                        p["row"].as_u64().unwrap() as usize,
                        p["col"].as_u64().unwrap() as usize
                    ),
                    (want.1, want.2),
                    "L{l}H{h} {kind} top pair"
                );
                close("top pair value", p["value"].as_f64().unwrap(), want.0, 1e-9);
            }
            close(
                &format!("L{l}H{h} {kind} norm"),
                head[kind]["frobenius_norm"].as_f64().unwrap(),
                dense.norm(),
                1e-8,
            );
        }
    }
    // Composition scores against dense d_model products.
    for (h1, h2) in [(0, 0), (3, 5), (7, 1)] {
        let (a, b) = (&w.layers[0], &w.layers[1]);
        let ov1 = f64m(&a.w_v[h1]) * f64m(&a.w_o[h1]);
        let qk2 = f64m(&b.w_q[h2]) * f64m(&b.w_k[h2]).transpose();
        let ov2 = f64m(&b.w_v[h2]) * f64m(&b.w_o[h2]);
        let sc = |r: &DMatrix<f64>| (&ov1 * r).norm() / (ov1.norm() * r.norm());
        for (m, want) in [
            ("Q", sc(&qk2)),
            ("K", sc(&qk2.transpose())),
            ("V", sc(&ov2)),
        ] {
            let ours = j["composition"][m][0][h1][1][h2].as_f64().unwrap();
            close(
                &format!("{m}-composition L0H{h1}->L1H{h2}"),
                ours,
                want,
                1e-9,
            );
        }
        // The virtual head's size.
        let dense = &w_e * &ov1 * &ov2 * &w_u;
        let vh = j["virtual_heads"]["virtual_heads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["head1"] == h1 && v["head2"] == h2)
            .unwrap();
        close(
            "virtual head norm",
            vh["norm"].as_f64().unwrap(),
            dense.norm(),
            1e-8,
        );
    }
    // Bigrams of a few tokens along the dense direct path.
    let direct = &w_e * &w_u;
    let rows = j["bigram_top"].as_array().unwrap();
    assert_eq!(rows.len(), D_VOCAB);
    for t in [0usize, 777, D_VOCAB - 1] {
        let want = top5((0..D_VOCAB).map(|c| (direct[(t, c)], t, c)));
        for (got, w) in rows[t]["next"].as_array().unwrap().iter().zip(&want) {
            assert_eq!(got["token"].as_u64().unwrap() as usize, w.2);
            close("bigram logit", got["logit"].as_f64().unwrap(), w.0, 1e-9);
        }
    }

    // Bounded scans: a token subset reads only its rows; --no-scans reads none, and the
    // spectra and norms do not change.
    let bounded = |tokens_subset, no_scans| {
        circuits::json(&circuits::CircuitsArgs {
            model: dir.join("generated.tlm"),
            compare: None,
            json: true,
            top: 4,
            baseline_samples: 8,
            top_pairs: 5,
            tokens_subset,
            full_scans: false,
            no_scans,
        })
        .unwrap()
    };
    let sub = bounded(Some(300), false);
    assert_eq!(sub["scan"]["tokens"], "subset");
    assert_eq!(sub["bigram_top"].as_array().unwrap().len(), 300);
    assert_eq!(sub["bigram_top"][1]["token"], 5);
    let off = bounded(None, true);
    assert_eq!(off["scan"]["tokens"], "off");
    assert!(off["bigram_top"].as_array().unwrap().is_empty());
    assert!(off["heads"][0]["ov"]["top_pairs"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(off["copying"], j["copying"]);
    assert_eq!(off["virtual_heads"], j["virtual_heads"]);
}

#[test]
fn activation_analyses_on_a_generated_model_match_the_model() {
    let dir = temp_dir("scale-activations");
    let (path, _) = model_file(&dir);
    let bytes = std::fs::read(&path).unwrap();
    let m = Model::from_bytes(&bytes).unwrap();
    let p = prompt(40).prompts(&m, &bytes, 1).unwrap().remove(0);
    let n = p.tokens.len();
    assert_eq!(n, 80);
    let out = run(
        &m,
        &RunOptions {
            tokens: p.tokens.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let model_loss = (0..n - 1)
        .map(|i| -log_softmax(&out.logits[i])[p.tokens[i + 1] as usize])
        .sum::<f64>()
        / (n - 1) as f64;

    // paths: the streamed terms add up to the model's logits everywhere; the loss of all
    // terms is the model's; dropping a term, checked densely for a few terms.
    let rec = tinylens_host::analysis::recorded::record(
        &m,
        &p.tokens,
        &tinylens_host::analysis::recorded::analysis_probes(m.config()),
    )
    .unwrap();
    let (e, report) = paths::paths_of(&m, &rec).unwrap();
    assert_eq!(e.terms.len(), 1 + 16 + 64 + 1);
    assert!(
        report.sum_check.max_abs_error_vs_model < 1e-3,
        "{:?}",
        report.sum_check
    );
    assert!(report.sum_check.max_abs_error_vs_exact < 1e-9);
    close(
        "loss of all terms",
        report.importance.loss_all_terms,
        model_loss,
        1e-4,
    );
    let total = e.total();
    let loss_all = next_token_loss(&total, &p.tokens);
    for i in [1usize, 9, 40] {
        let name = e.terms[i].kind.name();
        let want = next_token_loss(&(&total - e.term_logits(i)), &p.tokens) - loss_all;
        let got = report
            .importance
            .terms
            .iter()
            .find(|t| t.name == name)
            .unwrap();
        close(&name, got.loss_increase_when_dropped, want, 1e-5);
    }
    let jp = paths::json(&paths::PathsArgs {
        model: path.clone(),
        prompt: prompt(40),
        top: 5,
        json: true,
    })
    .unwrap();
    assert_eq!(jp["tokens"].as_array().unwrap().len(), n);
    close(
        "paths --json loss",
        jp["importance"]["loss_all_terms"].as_f64().unwrap(),
        model_loss,
        1e-4,
    );

    // attribute: direct path + heads + biases = the model's logit of each target.
    let ja = attribute::json(&attribute::AttributeArgs {
        model: path.clone(),
        prompt: prompt(40),
        trace: None,
        target: None,
        json: true,
    })
    .unwrap();
    for pos in [0usize, 39, 78] {
        let target = p.tokens[pos + 1] as usize;
        close(
            "attributed logit",
            ja["sum"][pos].as_f64().unwrap(),
            f64::from(out.logits[pos][target]),
            1e-4,
        );
    }
    assert!(ja["max_abs_residual_error"].as_f64().unwrap() < 1e-3);

    // heads: TL's 'mul' scores from the patterns `run` records, averaged over sequences.
    let jh = heads::json(&heads::HeadsArgs {
        model: path.clone(),
        prompt: prompt(24),
        trace: None,
        run: 0,
        batch: 3,
        exclude_bos: false,
        exclude_current_token: false,
        json: true,
    })
    .unwrap();
    let seqs = prompt(24).prompts(&m, &bytes, 3).unwrap();
    let mut want = [[[0.0f64; N_HEADS]; N_LAYERS]; 2];
    for s in &seqs {
        let r = run(
            &m,
            &RunOptions {
                tokens: s.tokens.clone(),
                probes: vec!["blocks.*.attn.hook_pattern".into()],
                ..Default::default()
            },
        )
        .unwrap();
        let (runs, _) = tinylens_host::trace::decode_stream(&r.trace);
        let cache = runs[0].cache();
        let t = &s.tokens;
        let n = t.len();
        for l in 0..N_LAYERS {
            let (_, a) = &cache[&format!("blocks.{l}.attn.hook_pattern")];
            for h in 0..N_HEADS {
                let at = |q: usize, k: usize| f64::from(a[(h * n + q) * n + k]);
                let prev: f64 = (1..n).map(|q| at(q, q - 1)).sum();
                let ind: f64 = (1..n)
                    .flat_map(|q| (1..q).map(move |k| (q, k)))
                    .filter(|&(q, k)| t[k - 1] == t[q])
                    .map(|(q, k)| at(q, k))
                    .sum();
                let total: f64 = (0..n)
                    .flat_map(|q| (0..=q).map(move |k| (q, k)))
                    .map(|(q, k)| at(q, k))
                    .sum();
                want[0][l][h] += prev / total / seqs.len() as f64;
                want[1][l][h] += ind / total / seqs.len() as f64;
            }
        }
    }
    for l in 0..N_LAYERS {
        for h in 0..N_HEADS {
            close(
                "previous-token",
                jh["previous_token"][l][h].as_f64().unwrap(),
                want[0][l][h],
                1e-5,
            );
            close(
                "induction",
                jh["induction"][l][h].as_f64().unwrap(),
                want[1][l][h],
                1e-5,
            );
        }
    }
}

#[test]
fn ablate_on_a_generated_model_matches_ablated_runs() {
    let dir = temp_dir("scale-ablate");
    let (path, _) = model_file(&dir);
    let bytes = std::fs::read(&path).unwrap();
    let m = Model::from_bytes(&bytes).unwrap();
    let r: Value = serde_json::to_value(
        ablate::report(&ablate::AblateArgs {
            model: path.clone(),
            data: None,
            text_data: None,
            prepend_bos: false,
            tokenizer: None,
            repeated: Some(12),
            batch: 4,
            seed: 11,
            bos: "none".into(),
            mode: "zero".into(),
            together: vec!["0.2,1.5".into()],
            save_means: None,
            json: true,
        })
        .unwrap(),
    )
    .unwrap();
    let data = tinylens_host::analysis::ablation::repeated_dataset(
        12,
        4,
        11,
        None,
        D_VOCAB as u32,
        N_CTX as u32,
    )
    .unwrap();
    // Loss over the data set of runs made by `run` with its own ablation intervention.
    let loss = |heads: &[HeadRef]| -> f64 {
        let (mut sum, mut count) = (0.0, 0);
        for p in &data {
            let out = run(
                &m,
                &RunOptions {
                    tokens: p.tokens.clone(),
                    ablate: heads.iter().map(|h| (*h, AblateMode::Zero)).collect(),
                    ..Default::default()
                },
            )
            .unwrap();
            for i in 0..p.tokens.len() - 1 {
                sum -= log_softmax(&out.logits[i])[p.tokens[i + 1] as usize];
                count += 1;
            }
        }
        sum / count as f64
    };
    let base = loss(&[]);
    close(
        "baseline",
        r["baseline"]["all"].as_f64().unwrap(),
        base,
        1e-6,
    );
    for (l, h) in [(0u16, 3u16), (1, 6)] {
        let want = loss(&[(l, h)]) - base;
        let ours = r["loss_increase"][l as usize][h as usize].as_f64().unwrap();
        close(&format!("zero-ablating L{l}H{h}"), ours, want, 1e-6);
    }
    let want = loss(&[(0, 2), (1, 5)]) - base;
    close(
        "together",
        r["groups"][0]["increase"].as_f64().unwrap(),
        want,
        1e-6,
    );
    assert_eq!(r["n_prompts"], 4);
}
