//! What an f16 or int8 KV cache costs against TransformerLens (whose cache is f32):
//! logit error, KL, top-1 where TransformerLens predicts, on every fixture model; and
//! whether the demo's previous-token and induction heads keep their scores.
//!
//! The figures are printed (`cargo test --test kv_cache -- --nocapture`); the bounds are
//! loose ceilings on what was measured, so that a regression, not noise, fails them.

use tinylens_core::kernels::Portable;
use tinylens_core::{KvStorage, Model, Session, SessionOptions, StorageKind};
use tinylens_host::analysis::ablation::repeated_dataset;
use tinylens_host::analysis::heads::{detect_batch, DetectOptions, HeadKind, LayerPatterns};
use tinylens_host::analysis::recorded::from_run;
use tinylens_host::run::{run, RunOptions};
use tinylens_host::trace::decode_stream;
use tinylens_tests::*;

fn logits(model: &Model<'_>, tokens: &[u32], kv: KvStorage) -> Vec<Vec<f32>> {
    let cfg = *model.config();
    let mut ws = vec![0.0; cfg.session_workspace_len(1, kv)];
    let options = SessionOptions { block: 1, kv };
    let mut s = Session::with_options(model, &mut ws, options, Portable).unwrap();
    tokens
        .iter()
        .map(|t| s.step(*t).unwrap().to_vec())
        .collect()
}

struct Cost {
    max_abs: f32,
    scale: f32,
    mean_kl: f64,
    top1_predicted: f64,
    predicted: usize,
}

fn cost(name: &str, kv: KvStorage) -> Cost {
    let reference = load_reference(name, "reference.safetensors");
    let blob = blob(name, StorageKind::F32);
    let model = Model::from_bytes(&blob).unwrap();
    let mut c = Cost {
        max_abs: 0.0,
        scale: 0.0,
        mean_kl: 0.0,
        top1_predicted: 0.0,
        predicted: 0,
    };
    let (mut total, mut same) = (0usize, 0usize);
    for (i, prompt) in prompts(&reference).iter().enumerate() {
        let theirs = reference["logits"].row(i);
        for (p, row) in logits(&model, prompt, kv).iter().enumerate() {
            let t = &theirs[p * row.len()..(p + 1) * row.len()];
            c.max_abs = c.max_abs.max(max_abs_diff(row, t));
            c.scale = c.scale.max(t.iter().fold(0.0f32, |m, v| m.max(v.abs())));
            c.mean_kl += kl(t, row);
            total += 1;
            if log_softmax(t)[argmax(t)].exp() >= 0.5 {
                c.predicted += 1;
                same += (argmax(row) == argmax(t)) as usize;
            }
        }
    }
    c.mean_kl /= total as f64;
    c.top1_predicted = same as f64 / c.predicted as f64;
    c
}

#[test]
fn kv_cache_cost_against_transformerlens() {
    for name in FIXTURES {
        for (kv, max_rel, max_kl, min_top1) in [
            (KvStorage::F32, 1e-5, 1e-8, 1.0),
            (KvStorage::F16, 5e-3, 1e-5, 1.0),
            (KvStorage::Int8, 5e-2, 2e-3, 0.99),
        ] {
            let c = cost(name, kv);
            eprintln!(
                "{name}: f32 weights, {} KV cache: max |logit - TL| {:.2e} (logits up to {:.1}), \
                 mean KL {:.2e}, top-1 {:.2}% of {} predicted positions",
                kv.name(),
                c.max_abs,
                c.scale,
                c.mean_kl,
                c.top1_predicted * 100.0,
                c.predicted
            );
            assert!(c.predicted >= 60, "{name}: too few predicted positions");
            assert!(
                c.max_abs <= max_rel * c.scale.max(1.0),
                "{name} {kv:?}: max logit error {}",
                c.max_abs
            );
            assert!(c.mean_kl <= max_kl, "{name} {kv:?}: KL {}", c.mean_kl);
            assert!(
                c.top1_predicted >= min_top1,
                "{name} {kv:?}: top-1 {}",
                c.top1_predicted
            );
        }
    }
}

/// Head-detector scores (TL's, with exclude_bos as the demo names heads) of the demo
/// blob over repeated random sequences, with the KV cache stored as `kv`.
fn demo_scores(kv: KvStorage) -> [Vec<Vec<f64>>; 2] {
    let blob = std::fs::read(demo_dir().join("demo-int8.tlm")).unwrap();
    let model = Model::from_bytes(&blob).unwrap();
    let cfg = *model.config();
    let set = repeated_dataset(15, 16, 7, Some(0), cfg.d_vocab, cfg.n_ctx).unwrap();
    let mut recordings = Vec::new();
    for p in &set {
        let out = run(
            &model,
            &RunOptions {
                tokens: p.tokens.clone(),
                probes: vec!["blocks.*.attn.hook_pattern".into()],
                kv,
                ..Default::default()
            },
        )
        .unwrap();
        let (runs, _) = decode_stream(&out.trace);
        recordings.push(from_run(&runs[0]).unwrap());
    }
    let patterns: Vec<_> = recordings.iter().map(|r| r.patterns().unwrap()).collect();
    let batch: Vec<(&[u32], &LayerPatterns)> = recordings
        .iter()
        .zip(&patterns)
        .map(|(r, p)| (r.tokens.as_slice(), p.as_slice()))
        .collect();
    let opts = DetectOptions {
        exclude_bos: true,
        ..Default::default()
    };
    [
        detect_batch(&batch, HeadKind::PreviousToken, opts).unwrap(),
        detect_batch(&batch, HeadKind::Induction, opts).unwrap(),
    ]
}

#[test]
fn the_demo_circuit_survives_a_quantized_kv_cache() {
    let [prev, induction] = demo_scores(KvStorage::F32);
    for kv in [KvStorage::F16, KvStorage::Int8] {
        let [p, i] = demo_scores(kv);
        let mut worst = 0.0f64;
        for (a, b) in prev
            .iter()
            .flatten()
            .chain(induction.iter().flatten())
            .zip(p.iter().flatten().chain(i.iter().flatten()))
        {
            worst = worst.max((a - b).abs());
        }
        eprintln!(
            "demo, {} KV cache: previous-token L0H0 {:.3} (f32 {:.3}); induction L1H0..3 {:?} \
             (f32 {:?}); largest change of any head's score {worst:.4}",
            kv.name(),
            p[0][0],
            prev[0][0],
            i[1].iter()
                .map(|v| (v * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
            induction[1]
                .iter()
                .map(|v| (v * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
        );
        // The heads the demo names keep their roles (scores >= 0.4), and no head's
        // score moves by more than 0.02.
        assert!(p[0][0] >= 0.4, "{kv:?}: previous-token head lost");
        assert!(
            i[1].iter().all(|v| *v >= 0.4),
            "{kv:?}: an induction head lost"
        );
        assert!(worst <= 0.02, "{kv:?}: a score moved by {worst}");
    }
}
