//! The analysis subcommands (`circuits`, `heads`, `attribute`, `paths`, `ablate`) through
//! their CLI code paths — the JSON the binary prints — on f32 blobs of the reference
//! fixtures, against TransformerLens 3.9 (`tests/fixtures/<name>/reference.safetensors`).

use std::path::{Path, PathBuf};

use serde_json::Value;
use tinylens_core::{Model, StorageKind};
use tinylens_host::commands::{ablate, attribute, circuits, heads, paths};
use tinylens_host::prompts::PromptArgs;
use tinylens_tests::*;

const TOL: f64 = 1e-3;

fn blob_file(name: &str, dir: &Path) -> PathBuf {
    let p = dir.join(format!("{name}.tlm"));
    std::fs::write(&p, blob(name, StorageKind::F32)).unwrap();
    p
}

fn prompt_args(tokens: &[u32]) -> PromptArgs {
    PromptArgs::from_tokens(
        &tokens
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Compares a JSON array nested `shape.len()` deep with a row-major reference tensor.
fn compare_nested(what: &str, json: &Value, r: &RefTensor, tol: f64) -> f64 {
    fn flatten(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
            Value::Number(n) => out.push(n.as_f64().unwrap()),
            Value::Null => out.push(f64::NAN),
            other => panic!("unexpected JSON value {other}"),
        }
    }
    let mut ours = Vec::new();
    flatten(json, &mut ours);
    assert_eq!(ours.len(), r.data.len(), "{what}: size");
    let mut worst = 0.0f64;
    for (i, (a, b)) in ours.iter().zip(&r.data).enumerate() {
        let d = (a - f64::from(*b)).abs();
        assert!(d <= tol, "{what}[{i}]: ours {a} vs TL {b}");
        worst = worst.max(d);
    }
    worst
}

#[test]
fn circuits_json_matches_transformerlens() {
    let dir = temp_dir("circuits-json");
    for name in FIXTURES {
        let reference = load_reference(name, "reference.safetensors");
        let args = circuits::CircuitsArgs {
            model: blob_file(name, &dir),
            compare: None,
            json: true,
            top: 5,
            baseline_samples: 64,
            top_pairs: 10,
            tokens_subset: None,
            full_scans: false,
            no_scans: false,
        };
        let j = circuits::json(&args).unwrap();
        for key in [
            "copying",
            "composition",
            "composition_baseline_subtracted",
            "bigram_top",
            "heads",
        ] {
            assert!(j.get(key).is_some(), "{name}: JSON lacks `{key}`");
        }
        let mut worst = compare_nested(
            &format!("{name} copying"),
            &j["copying"],
            &reference["copying"],
            TOL,
        );
        for m in ["Q", "K", "V"] {
            worst = worst.max(compare_nested(
                &format!("{name} composition.{m}"),
                &j["composition"][m],
                &reference[&format!("composition.{m}")],
                TOL,
            ));
            // Baseline-subtracted = raw - baseline where layer1 < layer2, 0 elsewhere.
            let base = j["composition_baseline"]["mean"].as_f64().unwrap();
            let raw = &reference[&format!("composition.{m}")];
            let (nl, nh) = (raw.shape[0], raw.shape[1]);
            let sub = RefTensor {
                shape: raw.shape.clone(),
                data: raw
                    .data
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let (l1, l2) = (i / (nh * nl * nh), (i / nh) % nl);
                        if l1 < l2 {
                            v - base as f32
                        } else {
                            0.0
                        }
                    })
                    .collect(),
            };
            compare_nested(
                &format!("{name} composition_baseline_subtracted.{m}"),
                &j["composition_baseline_subtracted"][m],
                &sub,
                TOL,
            );
        }
        eprintln!("{name}: circuits JSON vs TL, max |diff| {worst:.2e}");

        // --compare of a blob with itself: all differences exactly zero.
        let args = circuits::CircuitsArgs {
            compare: Some(args.model.clone()),
            ..args
        };
        let c = circuits::json(&args).unwrap();
        assert_eq!(c["difference"]["max_abs"]["composition_K"], 0.0);
        assert_eq!(c["difference"]["bigram_top1_agreement"], 1.0);
    }
}

#[test]
fn heads_json_matches_transformerlens() {
    let dir = temp_dir("heads-json");
    for name in FIXTURES {
        let reference = load_reference(name, "reference.safetensors");
        let tokens: Vec<u32> = reference["heads.tokens"]
            .data
            .iter()
            .map(|t| *t as u32)
            .collect();
        let args = heads::HeadsArgs {
            model: blob_file(name, &dir),
            prompt: prompt_args(&tokens),
            trace: None,
            run: 0,
            batch: 1,
            exclude_bos: false,
            exclude_current_token: false,
            json: true,
        };
        let j = heads::json(&args).unwrap();
        let mut worst = 0.0f64;
        for key in ["previous_token", "duplicate_token", "induction"] {
            worst = worst.max(compare_nested(
                &format!("{name} heads.{key}"),
                &j[key],
                &reference[&format!("heads.{key}")],
                TOL,
            ));
        }
        eprintln!("{name}: heads JSON vs TL, max |diff| {worst:.2e}");
    }
}

/// The same scores from a trace file recorded by `tinylens run --probe ... --trace`.
#[test]
fn heads_from_a_recorded_trace() {
    let dir = temp_dir("heads-trace");
    let name = "attn2_standard_noln";
    let reference = load_reference(name, "reference.safetensors");
    let tokens: Vec<u32> = reference["heads.tokens"]
        .data
        .iter()
        .map(|t| *t as u32)
        .collect();
    let model_path = blob_file(name, &dir);
    let bytes = std::fs::read(&model_path).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let out = tinylens_host::run::run(
        &model,
        &tinylens_host::run::RunOptions {
            tokens: tokens.clone(),
            probes: vec!["blocks.*.attn.hook_pattern:f16".into()],
            trace: true,
            ..Default::default()
        },
    )
    .unwrap();
    let trace = dir.join("t.tlt");
    std::fs::write(&trace, &out.trace).unwrap();
    let args = heads::HeadsArgs {
        model: model_path,
        prompt: PromptArgs::default(),
        trace: Some(trace.clone()),
        run: 0,
        batch: 1,
        exclude_bos: false,
        exclude_current_token: false,
        json: true,
    };
    let j = heads::json(&args).unwrap();
    assert_eq!(j["source"], "trace");
    // f16 patterns: 2^-11 relative per weight, far inside the tolerance.
    for key in ["previous_token", "duplicate_token", "induction"] {
        compare_nested(key, &j[key], &reference[&format!("heads.{key}")], TOL);
    }
    // A trace without patterns is a clear error, not a panic.
    let empty = tinylens_host::run::run(
        &model,
        &tinylens_host::run::RunOptions {
            tokens,
            probes: vec!["hook_embed".into()],
            trace: true,
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::write(&trace, &empty.trace).unwrap();
    let err = heads::json(&args).unwrap_err().to_string();
    assert!(err.contains("hook_pattern"), "{err}");
}

/// Direct logit attribution and the path expansion add up to the logits: to the
/// model's own (tight: both f32 here) and to TransformerLens's.
#[test]
fn attribution_and_path_terms_sum_to_the_logits() {
    let dir = temp_dir("attribution");
    for name in FIXTURES {
        let reference = load_reference(name, "reference.safetensors");
        let prompt = prompts(&reference)[8].clone();
        let tl_logits = reference["logits"].row(8);
        let vocab = tl_logits.len() / prompt.len();
        let model = blob_file(name, &dir);

        let j = attribute::json(&attribute::AttributeArgs {
            model: model.clone(),
            prompt: prompt_args(&prompt),
            trace: None,
            target: None,
            json: true,
        })
        .unwrap();
        let n = prompt.len();
        let nh = reference["copying"].shape[1];
        let nl = reference["copying"].shape[0];
        let mut worst_tl = 0.0f64;
        for p in 0..n {
            let target = j["targets"][p].as_u64().unwrap() as usize;
            if p + 1 < n {
                assert_eq!(target as u32, prompt[p + 1]);
            }
            // Recompute the sum from the parts in the JSON.
            let mut sum = j["direct"][p].as_f64().unwrap() + j["biases"][p].as_f64().unwrap();
            for l in 0..nl {
                for h in 0..nh {
                    sum += j["heads"][l][h][p].as_f64().unwrap();
                }
            }
            let model_logit = j["model_logit"][p].as_f64().unwrap();
            assert!((sum - j["sum"][p].as_f64().unwrap()).abs() < 1e-9);
            assert!(
                (sum - model_logit).abs() < 1e-4,
                "{name} pos {p}: parts sum to {sum}, model logit {model_logit}"
            );
            let tl = f64::from(tl_logits[p * vocab + target]);
            worst_tl = worst_tl.max((sum - tl).abs());
        }
        assert!(worst_tl < 1e-3, "{name}: DLA sum vs TL {worst_tl}");
        assert!(j["max_abs_residual_error"].as_f64().unwrap() < 1e-4);

        // --target: every position attributed to the same token.
        let jt = attribute::json(&attribute::AttributeArgs {
            model: model.clone(),
            prompt: prompt_args(&prompt),
            trace: None,
            target: Some(3),
            json: true,
        })
        .unwrap();
        assert!(jt["targets"].as_array().unwrap().iter().all(|t| t == 3));
        assert!(jt["max_abs_residual_error"].as_f64().unwrap() < 1e-4);

        // Path expansion: every term's logits, summed, against TL's logits everywhere.
        let bytes = std::fs::read(&model).unwrap();
        let m = Model::from_bytes(&bytes).unwrap();
        let rec = tinylens_host::analysis::recorded::record(
            &m,
            &prompt,
            &tinylens_host::analysis::recorded::analysis_probes(m.config()),
        )
        .unwrap();
        let (e, report) = paths::paths_of(&m, &rec).unwrap();
        let total = e.total();
        let mut worst = 0.0f64;
        for p in 0..n {
            for t in 0..vocab {
                worst = worst.max((total[(p, t)] - f64::from(tl_logits[p * vocab + t])).abs());
            }
        }
        assert!(worst < 1e-3, "{name}: path terms vs TL logits {worst}");
        assert!(
            report.sum_check.max_abs_error_vs_model < 1e-4,
            "{name}: {:?}",
            report.sum_check
        );
        assert!(report.sum_check.max_abs_error_vs_exact < 1e-9);
        // One term per head and per virtual head, plus direct and biases.
        let k = nl * nh;
        let expected = 1 + k + if nl == 2 { nh * nh } else { 0 } + 1;
        assert_eq!(e.terms.len(), expected, "{name}");
        // The loss of all terms is the model's loss.
        assert!((report.importance.loss_all_terms - report.model_loss).abs() < 1e-4);
        eprintln!(
            "{name}: DLA vs TL {worst_tl:.2e}; path terms vs TL {worst:.2e}, vs model {:.2e}",
            report.sum_check.max_abs_error_vs_model
        );

        // The JSON of `tinylens paths` carries the same check.
        let jp = paths::json(&paths::PathsArgs {
            model: model.clone(),
            prompt: prompt_args(&prompt),
            top: 5,
            json: true,
        })
        .unwrap();
        assert!(jp["sum_check"]["max_abs_error_vs_model"].as_f64().unwrap() < 1e-4);
    }
}

/// `ablate --data --save-means` writes TL's mean head results (mean over every position
/// of every prompt), and `tinylens run --means` reading that file reproduces TL's
/// mean-ablated logits.
#[test]
fn ablate_means_match_transformerlens_and_feed_run() {
    let dir = temp_dir("ablate");
    for name in ["attn2_standard_noln", "attn1_ln"] {
        let reference = load_reference(name, "reference.safetensors");
        let data = dir.join(format!("{name}.txt"));
        let text: Vec<String> = prompts(&reference)
            .iter()
            .map(|p| {
                p.iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        std::fs::write(
            &data,
            format!("# TL fixture prompts\n{}\n", text.join("\n")),
        )
        .unwrap();
        let means_path = dir.join(format!("{name}.means.safetensors"));
        let model_path = blob_file(name, &dir);
        let r = ablate::report(&ablate::AblateArgs {
            model: model_path.clone(),
            data: Some(data),
            text_data: None,
            prepend_bos: false,
            tokenizer: None,
            repeated: None,
            batch: 1,
            seed: 0,
            bos: "auto".into(),
            mode: "mean".into(),
            together: vec!["0.0,0.1".into()],
            save_means: Some(means_path.clone()),
            json: true,
        })
        .unwrap();
        assert_eq!(r.n_prompts, 16);
        assert_eq!(r.groups.len(), 1);
        assert!(r.baseline.repeat.is_none());
        let bytes = std::fs::read(&model_path).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        let means = tinylens_host::commands::run::read_means(&means_path, model.config()).unwrap();
        let tl = &reference["means.hook_result"];
        let worst = max_abs_diff(&means, &tl.data);
        assert!(worst < 1e-5, "{name}: means vs TL {worst}");

        let heads: Vec<((u16, u16), tinylens_host::run::AblateMode)> = reference
            ["ablation.mean.heads"]
            .data
            .chunks(2)
            .map(|c| {
                (
                    (c[0] as u16, c[1] as u16),
                    tinylens_host::run::AblateMode::Mean,
                )
            })
            .collect();
        let out = tinylens_host::run::run(
            &model,
            &tinylens_host::run::RunOptions {
                tokens: prompts(&reference)[0].clone(),
                ablate: heads,
                means: Some(means),
                ..Default::default()
            },
        )
        .unwrap();
        let ours: Vec<f32> = out.logits.concat();
        let d = max_abs_diff(&ours, &reference["ablation.mean.logits"].data);
        assert!(d < 1e-4, "{name}: mean-ablated logits vs TL {d}");
        eprintln!("{name}: means vs TL {worst:.1e}, mean-ablated logits vs TL {d:.1e}");
    }
}

/// Bad input is a one-line error, never a panic.
#[test]
fn bad_input_is_an_error() {
    let dir = temp_dir("bad-input");
    let model = blob_file("attn1_ln", &dir);
    let heads_args = |tokens: Option<&str>, repeated: Option<usize>| heads::HeadsArgs {
        model: model.clone(),
        prompt: PromptArgs {
            tokens: tokens.map(String::from),
            repeated,
            ..Default::default()
        },
        trace: None,
        run: 0,
        batch: 1,
        exclude_bos: false,
        exclude_current_token: false,
        json: true,
    };
    for (args, needle) in [
        (heads_args(Some("1,999"), None), "out of range"),
        (heads_args(Some("1,x"), None), "not a token id"),
        (heads_args(Some("3"), None), "at least 2"),
        (heads_args(None, Some(40)), "context"),
        (heads_args(None, None), "--tokens or --repeated"),
    ] {
        let e = heads::json(&args).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
    let missing = circuits::json(&circuits::CircuitsArgs {
        model: dir.join("nope.tlm"),
        compare: None,
        json: true,
        top: 1,
        baseline_samples: 4,
        top_pairs: 10,
        tokens_subset: None,
        full_scans: false,
        no_scans: false,
    })
    .unwrap_err();
    assert!(missing.to_string().contains("nope.tlm"));
    std::fs::write(dir.join("junk.tlm"), b"not a blob").unwrap();
    assert!(circuits::json(&circuits::CircuitsArgs {
        model: dir.join("junk.tlm"),
        compare: None,
        json: true,
        top: 1,
        baseline_samples: 4,
        top_pairs: 10,
        tokens_subset: None,
        full_scans: false,
        no_scans: false,
    })
    .is_err());
    let other = blob_file("attn2_standard_noln", &dir);
    let e = circuits::json(&circuits::CircuitsArgs {
        model: model.clone(),
        compare: Some(other),
        json: true,
        top: 1,
        baseline_samples: 4,
        top_pairs: 10,
        tokens_subset: None,
        full_scans: false,
        no_scans: false,
    })
    .unwrap_err();
    assert!(e.to_string().contains("different shapes"), "{e}");
    let e = ablate::report(&ablate::AblateArgs {
        model,
        data: None,
        text_data: None,
        prepend_bos: false,
        tokenizer: None,
        repeated: Some(4),
        batch: 2,
        seed: 0,
        bos: "none".into(),
        mode: "half".into(),
        together: vec![],
        save_means: None,
        json: true,
    })
    .unwrap_err();
    assert!(e.to_string().contains("zero or mean"), "{e}");
}
