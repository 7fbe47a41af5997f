//! Every hook point recorded through a real trace (core recorder → COBS/CRC frames →
//! host decoder → TransformerLens-shaped cache) against TransformerLens's
//! `run_with_cache`, and the interventions against TransformerLens's hooks.

use tinylens_core::intervene::{Ablation, AblationMode, FreezePatterns};
use tinylens_core::probe::{Precision, ProbeSet};
use tinylens_core::trace::{frame_buffer_len, Recorder};
use tinylens_core::{Error, HookPoint, Model, NoHooks, Session, StorageKind};
use tinylens_host::tl;
use tinylens_host::trace::decode_stream;
use tinylens_tests::*;

/// Records every hook point of `tokens` and decodes the trace into a cache.
fn traced_cache(
    model: &Model<'_>,
    tokens: &[u32],
) -> (tinylens_host::export::Cache, Vec<Vec<f32>>) {
    let cfg = *model.config();
    let probes: ProbeSet<64> = ProbeSet::everything(Precision::F32);
    let mut probes_ok: ProbeSet<64> = ProbeSet::new();
    for p in probes.probes() {
        if !(p.point.needs_ln() && cfg.normalization == tinylens_core::Normalization::None) {
            probes_ok.push(*p).unwrap();
        }
    }
    let mut bytes = Vec::new();
    let mut frame = vec![0u8; frame_buffer_len(&cfg)];
    let mut ws = vec![0.0; cfg.workspace_len()];
    let mut s = Session::new(model, &mut ws).unwrap();
    let mut rec = Recorder::begin(
        model,
        &probes_ok,
        |b: &[u8]| -> Result<(), Error> {
            bytes.extend_from_slice(b);
            Ok(())
        },
        &mut frame,
    )
    .unwrap();
    let mut logits = Vec::new();
    for t in tokens {
        logits.push(s.step_with(*t, &mut rec).unwrap().to_vec());
    }
    let (summary, _) = rec.finish();
    assert_eq!(summary.dropped, 0);
    assert!(summary.error.is_none());
    let (runs, report) = decode_stream(&bytes);
    assert_eq!((runs.len(), report.bad_frames), (1, 0));
    assert!(runs[0].loss.missing_records.is_empty());
    assert_eq!(
        runs[0].token_list(),
        tokens.iter().map(|t| Some(*t)).collect::<Vec<_>>()
    );
    (runs[0].cache(), logits)
}

fn compare_cache(name: &str, reference_file: &str, kind_blob: &[u8]) {
    let reference = load_reference(name, reference_file);
    let model = Model::from_bytes(kind_blob).unwrap();
    let cached: std::collections::BTreeSet<usize> = reference
        .keys()
        .filter_map(|k| k.strip_prefix("cache.")?.split('.').next()?.parse().ok())
        .collect();
    assert!(!cached.is_empty(), "{name}: {reference_file} has no cache");
    for prompt_index in cached {
        let tokens: Vec<u32> = prompts(&reference)[prompt_index].clone();
        let (cache, _) = traced_cache(&model, &tokens);
        let prefix = format!("cache.{prompt_index}.");
        let mut compared = 0;
        // `unembed.hook_in` is the LayerNorm output after its weight and bias, which has no
        // hook point of its own in TransformerLens (nor here) when the model has LN.
        let skip = |k: &str| {
            k.ends_with("unembed.hook_in")
                && model.config().normalization == tinylens_core::Normalization::LN
        };
        for (key, theirs) in reference
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && !skip(k))
        {
            let tl_name = &key[prefix.len()..];
            let ours_name = match tl_name {
                "unembed.hook_out" => "logits".to_string(),
                "unembed.hook_in"
                    if model.config().normalization == tinylens_core::Normalization::None =>
                {
                    format!("blocks.{}.hook_resid_post", model.config().n_layers - 1)
                }
                "unembed.hook_in" => "ln_final.hook_normalized".to_string(),
                n => n.to_string(),
            };
            let (shape, ours) = cache.get(&ours_name).unwrap_or_else(|| {
                panic!("{name}: hook {ours_name} missing from the decoded cache")
            });
            assert_eq!(shape, &theirs.shape, "{name}: shape of {tl_name}");
            let mut worst = 0.0f32;
            for (a, b) in ours.iter().zip(&theirs.data) {
                assert!(!a.is_nan(), "{name}: NaN in {tl_name}");
                if a != b {
                    worst = worst.max((a - b).abs());
                }
            }
            assert!(
                worst <= 1e-4,
                "{name} prompt {prompt_index}: {tl_name} differs by {worst}"
            );
            compared += 1;
        }
        // Every hook TransformerLens cached was compared (the fixture caches all of them).
        let expected = reference
            .keys()
            .filter(|k| k.starts_with(&prefix) && !skip(k))
            .count();
        assert!(
            compared == expected && compared >= 15,
            "{name}: {compared} hooks compared"
        );
        eprintln!("{name} ({reference_file}) prompt {prompt_index}: {compared} hooks within 1e-4");
    }
}

#[test]
fn every_hook_matches_run_with_cache() {
    for name in FIXTURES {
        compare_cache(name, "reference.safetensors", &blob(name, StorageKind::F32));
    }
}

#[test]
fn processed_model_hooks_match_transformerlens_processing() {
    // fold_ln, centring and value-bias folding change intermediate values: the converter
    // must do exactly what TransformerLens does for them to match.
    compare_cache(
        "attn1_ln",
        "reference_processed_all.safetensors",
        &blob_with("attn1_ln", StorageKind::F32, tl::Processing::ALL),
    );
    compare_cache(
        "attn2_standard_noln",
        "reference_processed_cu_fvb.safetensors",
        &blob_with("attn2_standard_noln", StorageKind::F32, tl::Processing::ALL),
    );
}

#[test]
fn freezing_a_runs_own_patterns_reproduces_its_logits_exactly() {
    for name in FIXTURES {
        for kind in [StorageKind::F32, StorageKind::Int8] {
            let b = blob(name, kind);
            let model = Model::from_bytes(&b).unwrap();
            let cfg = *model.config();
            let reference = load_reference(name, "reference.safetensors");
            let tokens = &prompts(&reference)[8];
            let (cache, logits) = traced_cache(&model, tokens);
            let len = tokens.len();
            let mut patterns = Vec::new();
            for l in 0..cfg.n_layers {
                patterns.extend_from_slice(&cache[&format!("blocks.{l}.attn.hook_pattern")].1);
            }
            let mut frozen = FreezePatterns::new(&cfg, &patterns, len).unwrap();
            let mut ws = vec![0.0; cfg.workspace_len()];
            let mut s = Session::new(&model, &mut ws).unwrap();
            for (p, t) in tokens.iter().enumerate() {
                assert_eq!(
                    s.step_with(*t, &mut frozen).unwrap(),
                    &logits[p][..],
                    "{name} {kind:?} pos {p}"
                );
            }
        }
    }
}

fn run_with<H: tinylens_core::Hooks>(model: &Model<'_>, tokens: &[u32], hooks: &mut H) -> Vec<f32> {
    let mut ws = vec![0.0; model.config().workspace_len()];
    let mut s = Session::new(model, &mut ws).unwrap();
    let mut out = Vec::new();
    for t in tokens {
        out.extend_from_slice(s.step_with(*t, hooks).unwrap());
    }
    out
}

#[test]
fn zero_ablation_of_every_head_leaves_the_direct_path() {
    for name in FIXTURES {
        let b = blob(name, StorageKind::F32);
        let model = Model::from_bytes(&b).unwrap();
        let cfg = *model.config();
        let reference = load_reference(name, "reference.safetensors");
        let tokens = &prompts(&reference)[0];
        let heads: Vec<(u16, u16)> = (0..cfg.n_layers as u16)
            .flat_map(|l| (0..cfg.n_heads as u16).map(move |h| (l, h)))
            .collect();
        let mut ablate = Ablation::new(&cfg, &heads, AblationMode::Zero).unwrap();
        let ours = run_with(&model, tokens, &mut ablate);
        let worst = max_abs_diff(&ours, &reference["ablation.zero_all.logits"].data);
        assert!(worst <= 1e-4, "{name}: {worst}");

        // Independently: with every head's result zero, the residual stream is the
        // embeddings plus the b_O of every layer, whatever the tokens before.
        let w = tinylens_host::convert::weights_from_model(&model);
        let mut direct = Vec::new();
        for (p, &t) in tokens.iter().enumerate() {
            let mut x: Vec<f32> = (0..cfg.d_model as usize)
                .map(|c| w.w_e[(t as usize, c)])
                .collect();
            if cfg.positional == tinylens_core::Positional::Standard {
                for (c, v) in x.iter_mut().enumerate() {
                    *v += w.w_pos[(p, c)];
                }
            }
            for l in &w.layers {
                for (c, v) in x.iter_mut().enumerate() {
                    *v += l.b_o[c];
                }
            }
            if cfg.normalization != tinylens_core::Normalization::None {
                let n = x.len() as f32;
                let mean = x.iter().sum::<f32>() / n;
                x.iter_mut().for_each(|v| *v -= mean);
                let scale = (x.iter().map(|v| v * v).sum::<f32>() / n + cfg.eps).sqrt();
                x.iter_mut().for_each(|v| *v /= scale);
                if let (Some(g), Some(b)) = (&w.ln_final_w, &w.ln_final_b) {
                    x.iter_mut()
                        .enumerate()
                        .for_each(|(c, v)| *v = *v * g[c] + b[c]);
                }
            }
            for v in 0..cfg.d_vocab_out as usize {
                direct.push((0..x.len()).map(|c| x[c] * w.w_u[(c, v)]).sum::<f32>() + w.b_u[v]);
            }
        }
        let worst = max_abs_diff(&ours, &direct);
        assert!(worst <= 1e-4, "{name}: direct path differs by {worst}");
    }
}

#[test]
fn mean_ablation_matches_transformerlens() {
    for name in FIXTURES {
        let b = blob(name, StorageKind::F32);
        let model = Model::from_bytes(&b).unwrap();
        let cfg = *model.config();
        let reference = load_reference(name, "reference.safetensors");
        let heads: Vec<(u16, u16)> = reference["ablation.mean.heads"]
            .data
            .chunks(2)
            .map(|c| (c[0] as u16, c[1] as u16))
            .collect();
        // Means over the data set computed by tinylens itself, from recorded hook_result...
        let mut sum = vec![0.0f64; (cfg.n_layers * cfg.n_heads * cfg.d_model) as usize];
        let mut count = 0usize;
        for tokens in prompts(&reference) {
            let (cache, _) = traced_cache(&model, &tokens);
            for l in 0..cfg.n_layers as usize {
                let (shape, data) = &cache[&format!("blocks.{l}.attn.hook_result")];
                let (p, nh, dm) = (shape[0], shape[1], shape[2]);
                for pos in 0..p {
                    for h in 0..nh {
                        for c in 0..dm {
                            sum[(l * nh + h) * dm + c] += data[(pos * nh + h) * dm + c] as f64;
                        }
                    }
                }
            }
            count += tokens.len();
        }
        let means: Vec<f32> = sum.iter().map(|v| (*v / count as f64) as f32).collect();
        // ... agree with TransformerLens's means,
        let worst = max_abs_diff(&means, &reference["means.hook_result"].data);
        assert!(worst <= 1e-4, "{name}: means differ by {worst}");
        // ... and ablating with them gives TransformerLens's logits.
        let mut ablate = Ablation::new(&cfg, &heads, AblationMode::Mean(&means)).unwrap();
        let ours = run_with(&model, &prompts(&reference)[0], &mut ablate);
        let worst = max_abs_diff(&ours, &reference["ablation.mean.logits"].data);
        assert!(
            worst <= 1e-4,
            "{name}: mean-ablated logits differ by {worst}"
        );
        // A plain run differs: the ablation did something.
        let plain = run_with(&model, &prompts(&reference)[0], &mut NoHooks);
        assert!(max_abs_diff(&plain, &ours) > 1e-3);
    }
}

#[test]
fn hooks_see_values_in_forward_order_and_changes_take_effect() {
    let b = blob("attn2_standard_noln", StorageKind::F32);
    let model = Model::from_bytes(&b).unwrap();
    let mut order = Vec::new();
    let mut hook = tinylens_core::hooks::FnHook(|site: tinylens_core::Site, v: &mut [f32]| {
        if site.pos == 0 {
            order.push(site.point);
        }
        if site.point == HookPoint::Logits {
            v[7] = 1e6;
        }
    });
    let logits = run_with(&model, &[3, 4], &mut hook);
    assert_eq!(tinylens_core::sample::greedy(&logits[..50]), 7);
    // Points first appear in TransformerLens's order (within a layer, attention runs
    // head by head, so scores/pattern/z/result interleave across heads).
    let mut first: Vec<HookPoint> = Vec::new();
    for p in &order {
        if first.last() != Some(p) && !first.contains(p) {
            first.push(*p);
        }
    }
    assert_eq!(first.first(), Some(&HookPoint::Embed));
    assert_eq!(first.last(), Some(&HookPoint::Logits));
    assert!(first.windows(2).all(|w| w[0] < w[1]), "{first:?}");
}
