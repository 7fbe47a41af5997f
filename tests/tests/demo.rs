//! The bundled demo model: the committed int8 blob is exactly what the converter makes
//! of `models/demo/` (so it cannot drift from it), and the demo's analysis of it agrees
//! with TransformerLens (`models/demo/reference.safetensors`, written by
//! `scripts/train_demo.py`): it names the heads TL's head detector names, links them by
//! the K-composition TL computes, and ablating the induction heads raises the loss on
//! repeated tokens.

use std::collections::BTreeSet;

use tinylens_core::Model;
use tinylens_host::commands::{convert, demo, heads};
use tinylens_host::prompts::PromptArgs;
use tinylens_tests::*;

#[test]
fn committed_demo_blob_is_what_convert_makes() {
    let dir = temp_dir("demo-blob");
    let out = dir.join("demo-int8.tlm");
    let d = demo_dir();
    convert::run(convert::ConvertArgs {
        weights: d.join("model.safetensors"),
        config: d.join("config.json"),
        quant: "int8".into(),
        embed_quant: None,
        int4_group: None,
        vocab: Some(d.join("vocab.txt")),
        tokenizer: None,
        fold_ln: false,
        center_writing_weights: false,
        center_unembed: false,
        fold_value_biases: false,
        output: out.clone(),
        json: true,
        calibration: Default::default(),
    })
    .unwrap();
    let fresh = std::fs::read(&out).unwrap();
    let committed = std::fs::read(d.join("demo-int8.tlm")).unwrap();
    assert!(
        fresh == committed,
        "models/demo/demo-int8.tlm differs from a fresh conversion of models/demo/ \
         ({} vs {} bytes): regenerate it with the command in host-tools/src/commands/demo.rs",
        committed.len(),
        fresh.len()
    );
    assert!(
        fresh == demo::DEMO_BLOB,
        "the binary embeds a stale demo blob"
    );
}

type HeadSet = BTreeSet<(usize, usize)>;

fn at_least(r: &RefTensor, threshold: f64) -> HeadSet {
    let nh = r.shape[1];
    r.data
        .iter()
        .enumerate()
        .filter(|(_, v)| f64::from(**v) >= threshold)
        .map(|(i, _)| (i / nh, i % nh))
        .collect()
}

#[test]
fn demo_finds_the_induction_circuit_transformerlens_finds() {
    let reference = {
        let path = demo_dir().join("reference.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut m = std::collections::BTreeMap::new();
        for (k, v) in st.tensors() {
            let data: Vec<f32> = match v.dtype() {
                safetensors::Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::I32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f32)
                    .collect(),
                d => panic!("{k}: dtype {d:?}"),
            };
            m.insert(
                k.to_string(),
                RefTensor {
                    shape: v.shape().to_vec(),
                    data,
                },
            );
        }
        m
    };
    let model = Model::from_bytes(demo::DEMO_BLOB).unwrap();
    // Fewer sequences than the demo's default and no one-head-at-a-time ablations: the
    // same measurements, sized for a debug build.
    let (f, html) = demo::analyse(
        &model,
        &demo::DemoOptions {
            seed: 1,
            detect_sequences: 8,
            loss_sequences: 8,
            ablate_each_head: false,
        },
    )
    .unwrap();

    // The int8 blob's head scores on TL's own test prompt, through `tinylens heads`.
    let dir = temp_dir("demo-heads");
    let path = dir.join("demo.tlm");
    std::fs::write(&path, demo::DEMO_BLOB).unwrap();
    let tokens: Vec<String> = reference["heads.tokens"]
        .data
        .iter()
        .map(|t| (*t as u32).to_string())
        .collect();
    let j = heads::json(&heads::HeadsArgs {
        model: path,
        prompt: PromptArgs::from_tokens(&tokens.join(",")),
        trace: None,
        run: 0,
        batch: 1,
        exclude_bos: false,
        exclude_current_token: false,
        json: true,
    })
    .unwrap();
    for key in ["previous_token", "induction"] {
        let tl = &reference[&format!("heads.{key}")];
        let nh = tl.shape[1];
        for (i, v) in tl.data.iter().enumerate() {
            let ours = j[key][i / nh][i % nh].as_f64().unwrap();
            // int8 weights move patterns a little; the heads are far apart.
            assert!(
                (ours - f64::from(*v)).abs() < 0.03,
                "{key} L{}H{}: int8 blob {ours} vs TL {v}",
                i / nh,
                i % nh
            );
        }
    }

    // The heads the demo names are the heads TL's scores name.
    let named =
        |v: &[demo::ScoredHead]| -> HeadSet { v.iter().map(|h| (h.layer, h.head)).collect() };
    let tl_prev = at_least(
        &reference["heads_exclude_bos.previous_token"],
        demo::THRESHOLD,
    );
    let tl_ind = at_least(&reference["heads_exclude_bos.induction"], demo::THRESHOLD);
    assert!(
        !tl_ind.is_empty(),
        "TL finds no induction head in the demo model"
    );
    assert!(
        !tl_prev.is_empty(),
        "TL finds no previous-token head in the demo model"
    );
    assert_eq!(named(&f.induction_heads), tl_ind, "induction heads");
    assert_eq!(
        named(&f.previous_token_heads),
        tl_prev,
        "previous-token heads"
    );

    // Each induction head's strongest K-composition partner (by TL's scores) is a
    // previous-token head, and the demo reports that link.
    let k = &reference["composition.K"];
    let (nl, nh) = (k.shape[0], k.shape[1]);
    for &(l2, h2) in &tl_ind {
        let best = (0..l2)
            .flat_map(|l1| (0..nh).map(move |h1| (l1, h1)))
            .max_by(|a, b| {
                let s = |(l1, h1): (usize, usize)| k.data[((l1 * nh + h1) * nl + l2) * nh + h2];
                s(*a).total_cmp(&s(*b))
            })
            .unwrap();
        assert!(
            tl_prev.contains(&best),
            "TL: L{l2}H{h2}'s strongest K-composition is from L{}H{}, not a previous-token head",
            best.0,
            best.1
        );
        let link = f
            .k_composition
            .iter()
            .find(|c| c.to == [l2, h2] && c.from == [best.0, best.1])
            .unwrap_or_else(|| panic!("demo reports no K-composition into L{l2}H{h2}"));
        assert!(link.strongest_into_to);
        assert!(link.baseline_subtracted > 0.0, "{link:?}");
        let tl = f64::from(k.data[((best.0 * nh + best.1) * nl + l2) * nh + h2]);
        // Same scores as TL's, up to int8 rounding of the weights.
        assert!((link.score - tl).abs() < 0.02, "{} vs TL {tl}", link.score);
    }

    // The induction heads copy, and without them the repeated half is unpredictable.
    for h in &f.induction_heads {
        assert!(f.copying[h.layer][h.head] > 0.5, "copying {:?}", f.copying);
    }
    let l = &f.losses;
    let ablated = l.repeat_induction_mean_ablated.unwrap();
    let zeroed = l.repeat_induction_zero_ablated.unwrap();
    eprintln!(
        "demo: repeated-half loss {:.3}; induction heads mean-ablated {ablated:.3}, zero-ablated \
         {zeroed:.3}; first copy {:.3}",
        l.repeat, l.first_copy
    );
    assert!(
        l.repeat < 0.5,
        "the model does not predict the repeat: {}",
        l.repeat
    );
    assert!(
        ablated > l.repeat + 1.0,
        "mean ablation: {ablated} vs {}",
        l.repeat
    );
    assert!(
        zeroed > l.repeat + 1.0,
        "zero ablation: {zeroed} vs {}",
        l.repeat
    );
    assert!(html.contains("Induction heads"));
}

#[test]
fn english_blob_is_the_conversion_of_models_english() {
    let d = repo_root().join("models/english");
    let dir = temp_dir("english-convert");
    let out = dir.join("english.tlm");
    convert::run(convert::ConvertArgs {
        weights: d.join("model.safetensors"),
        config: d.join("config.json"),
        quant: "int8".into(),
        embed_quant: None,
        int4_group: None,
        vocab: None,
        tokenizer: Some(d.join("tokenizer.json")),
        fold_ln: false,
        center_writing_weights: false,
        center_unembed: false,
        fold_value_biases: false,
        output: out.clone(),
        json: true,
        calibration: Default::default(),
    })
    .unwrap();
    assert!(
        std::fs::read(&out).unwrap() == demo::ENGLISH_BLOB,
        "the binary embeds a stale English blob: regenerate it with the command in \
         host-tools/src/commands/demo.rs"
    );
}

#[test]
fn english_model_fits_a_microcontroller_and_writes_text() {
    let model = Model::from_bytes(demo::ENGLISH_BLOB).unwrap();
    let cfg = *model.config();
    let (flash, ram) = (model.as_bytes().len(), cfg.workspace_len() * 4);
    eprintln!("english model: flash {flash} B, RAM {ram} B");
    // nRF52840-class: 1 MiB flash, 256 KiB RAM (200 KiB for the workspace).
    assert!(flash <= 1 << 20, "{flash} bytes of flash");
    assert!(ram <= 200 << 10, "{ram} bytes of RAM");
    // The tokenizer rides along in the host-only trailer, and the prompt is text.
    assert!(demo::ENGLISH_BLOB.len() > flash);
    let tok = tinylens_host::tokenizer::for_blob(demo::ENGLISH_BLOB, None)
        .unwrap()
        .expect("the English blob carries its tokenizer");
    let tokens =
        tinylens_host::prompts::text_tokens(&tok, demo::SAMPLE_PROMPT, true, &model).unwrap();
    assert_eq!(tokens[0], tok.bos().unwrap());
    let out = tinylens_host::run::run(
        &model,
        &tinylens_host::run::RunOptions {
            tokens,
            generate: 24,
            top_k: 20,
            temperature: 0.7,
            seed: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let text = tok.decode_text(&out.tokens).unwrap();
    eprintln!("sample: {text:?}");
    assert!(text.starts_with(demo::SAMPLE_PROMPT), "{text:?}");
    // Mostly letters and spaces: text, not byte soup.
    let letters = text
        .chars()
        .filter(|c| c.is_ascii_alphabetic() || *c == ' ')
        .count();
    assert!(letters * 10 >= text.chars().count() * 7, "{text:?}");
    // The name prompt has repeats for the demo to show.
    let name = tinylens_host::prompts::text_tokens(&tok, demo::NAME_PROMPT, true, &model).unwrap();
    assert!(tinylens_host::analysis::repeats::repeats(&name).len() >= 2);
}

/// The English demo's figures, measured by the demo's own analysis (fewer paragraphs than
/// `tinylens demo`, sized for a debug build) and checked loosely, never against copied
/// numbers: the circuit (a previous-token head named in layer 0, induction heads named in
/// layer 1 and only there), the loss drop on the repeated half of held-out paragraphs and
/// what mean-ablating the induction heads does to it, the repeated name completed from its
/// first occurrence (and not without those heads), shown with the heads' labelled
/// patterns, and the device budget.
#[test]
fn english_demo_measures_the_copying_heads_on_real_text() {
    let (f, t, html) = demo::analyse_english(
        demo::ENGLISH_BLOB,
        &demo::DemoOptions {
            seed: 1,
            detect_sequences: 4,
            loss_sequences: 6,
            ablate_each_head: false,
        },
    )
    .unwrap();
    eprintln!("{}", demo::summary_lines(&f).join("\n"));
    eprintln!("{}", demo::name_lines(&t).join("\n"));
    eprintln!("timings (ms): {:?}", f.timings_ms);
    assert!(
        f.previous_token_heads.iter().any(|h| h.layer == 0),
        "no previous-token head in layer 0: {:?}",
        f.head_scores.previous_token
    );
    assert!(
        !f.induction_heads.is_empty() && f.induction_heads.iter().all(|h| h.layer == 1),
        "induction heads {:?}: {:?}",
        f.induction_heads,
        f.head_scores.induction
    );
    let l = &f.losses;
    let drop = l.first_copy - l.repeat;
    assert!(drop > 1.0, "loss drop on the repeated half: {drop:.3}");
    let ablated = l.repeat_induction_mean_ablated.unwrap();
    assert!(
        ablated > l.repeat + 0.5 * drop,
        "induction heads mean-ablated: {ablated:.3} vs {:.3} (first copy {:.3})",
        l.repeat,
        l.first_copy
    );
    // The repeated name: its second occurrence is predicted from the first (the model's
    // top token at most of its positions), and much less so with the induction heads off.
    let name_start = t
        .name_tokens
        .iter()
        .rposition(|s| s == " R")
        .expect("the name's second occurrence");
    let name: Vec<_> = t
        .name
        .positions
        .iter()
        .filter(|p| p.pos >= name_start)
        .collect();
    assert!(name.len() >= 2, "{:#?}", t.name.positions);
    let right = name.iter().filter(|p| p.top == p.next).count();
    assert!(2 * right > name.len(), "{:#?}", name);
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    let (p, p_off) = (
        mean(name.iter().map(|p| p.p).collect()),
        mean(name.iter().map(|p| p.p_ablated).collect()),
    );
    assert!(
        p > 0.3 && p > 2.0 * p_off,
        "P(name) {p:.3}, ablated {p_off:.3}"
    );
    assert_eq!(t.name.ablated.len(), f.induction_heads.len());
    // The heads' attention on it, labelled with the name's tokens.
    assert_eq!(t.name_patterns[0].kind, "induction");
    assert!(t.name_patterns.iter().any(|p| p.kind == "previous-token"));
    let lines = demo::pattern_lines(&t, &t.name_patterns[0]);
    assert!(lines.iter().any(|l| l.contains("\"ss\"@5")), "{lines:#?}");
    assert!(t.flash_bytes <= 1 << 20 && t.ram_bytes <= 200 << 10);
    assert!(html.contains("Induction heads"));
}
