//! `tinylens demo`: the whole tool on a bundled model, shipped as an int8 blob inside the
//! binary. By default the English model (`models/english/`, `scripts/train_english.py`:
//! two layers trained in TransformerLens on Python's documentation, with its byte-level
//! BPE tokenizer): a sampled text, a sentence with a repeated name and how its second copy
//! is completed, the attention of the copying heads labelled with the words, and the same
//! with them ablated. `--model syllables` is the syllable model (`models/demo/`,
//! `scripts/train_demo.py`: repeated random syllables, small enough for a Cortex-M0).
//! Either way it runs the model with probes, writes and decodes the traces, and finds the
//! induction circuit the way the paper does: head-detector scores name the previous-token
//! and induction heads, K-composition links them, copying scores show the induction heads
//! copy, and ablating the induction heads destroys the loss drop on the repeated half.
//! Then it writes the HTML report.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use tinylens_core::intervene::{Ablation, AblationMode, HeadRef};
use tinylens_core::Model;

use crate::analysis::ablation::{
    ablate_heads, dataset_losses, mean_results, repeated_dataset, Mode, Prompt,
};
use crate::analysis::dynamic::{score, top_heads};
use crate::analysis::heads::DetectOptions;
use crate::analysis::recorded::record;
use crate::analysis::report::{build, Extras};
use crate::analysis::{analyze, AnalysisOptions, HeadDetection};
use crate::convert::weights_from_model;
use crate::{cli, Error, Result};

mod english;
pub use english::*;

/// The demo model as an int8 blob, made from `models/demo/` by
/// `tinylens convert --weights models/demo/model.safetensors --config models/demo/config.json
/// --vocab models/demo/vocab.txt --quant int8 -o models/demo/demo-int8.tlm`, without weight
/// processing: TransformerLens 3.9 mis-folds `ln_final` when `d_vocab_out == d_model` (64
/// here), so `--fold-ln` is refused for this shape, and the unprocessed weights are what
/// `models/demo/TRAINING.md` reports TL numbers for. `tests/tests/demo.rs` checks that
/// converting again reproduces this file byte for byte.
pub const DEMO_BLOB: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/demo/demo-int8.tlm"
));

/// Length of each copy in the demo's repeated sequences: `<bos>` + 15 + the same 15
/// fills 31 of the model's 32 positions, the format of the held-out test in TRAINING.md.
pub const REPEAT_LEN: usize = 15;
/// Sequences whose patterns are scored by the head detector.
pub const DETECT_SEQUENCES: usize = 16;
/// Sequences of the loss and ablation measurements.
pub const LOSS_SEQUENCES: usize = 32;
/// A head-detector score at or above this names a head.
pub const THRESHOLD: f64 = 0.4;
/// The detector options heads are named with: TL's `exclude_bos`. Heads with nothing to
/// do park their attention on `<bos>` (the induction heads do so on the unpredictable
/// first copy), which says nothing about what they do when they act; leaving position 0
/// out of both sums measures the attention they do spend. The TL defaults (BOS included)
/// are reported as well.
pub const NAMING: DetectOptions = DetectOptions {
    exclude_bos: true,
    exclude_current_token: false,
};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Which bundled model: `english` (trained on Python's documentation, with its
    /// tokenizer: models/english/TRAINING.md) or `syllables` (trained on repeated random
    /// syllables; fits a Cortex-M0: models/demo/TRAINING.md).
    #[arg(long, default_value = "english")]
    pub model: String,
    /// Where to write the HTML report.
    #[arg(short, long, default_value = "report.html")]
    pub output: PathBuf,
    /// Also write the demo blob here, to try the other subcommands on it.
    #[arg(long)]
    pub save_model: Option<PathBuf>,
    /// Seed of the random sequences.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the findings as JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// A head and a score.
#[derive(Debug, Clone, Serialize)]
pub struct ScoredHead {
    pub layer: usize,
    pub head: usize,
    pub score: f64,
}

/// K-composition of an earlier head into an induction head.
#[derive(Debug, Clone, Serialize)]
pub struct KComposition {
    pub from: [usize; 2],
    pub to: [usize; 2],
    pub score: f64,
    pub baseline_subtracted: f64,
    /// Whether `from` is the earlier head with the highest K-composition into `to`.
    pub strongest_into_to: bool,
}

/// Losses on the second copies of the repeated sequences.
#[derive(Debug, Clone, Serialize)]
pub struct DemoLosses {
    pub sequences: usize,
    /// First copy (after its first token): for random tokens unpredictable, about
    /// ln(d_vocab - 1); for text the model's loss on text it has not seen repeated.
    pub first_copy: f64,
    /// Second copy, predicted by induction.
    pub repeat: f64,
    pub repeat_induction_mean_ablated: Option<f64>,
    pub repeat_induction_zero_ablated: Option<f64>,
    pub repeat_previous_token_mean_ablated: Option<f64>,
    /// Per head, mean ablation alone: `[layer][head]` increase on the second copies.
    pub repeat_increase_per_head: Vec<Vec<f64>>,
}

/// What the demo found.
#[derive(Debug, Clone, Serialize)]
pub struct DemoFindings {
    pub previous_token_heads: Vec<ScoredHead>,
    pub induction_heads: Vec<ScoredHead>,
    pub k_composition: Vec<KComposition>,
    pub composition_baseline: f64,
    pub copying: Vec<Vec<f64>>,
    /// Head-detector scores with [`NAMING`] (exclude_bos), which name the heads.
    pub head_scores: HeadDetection,
    /// The same with TL's default options (attention to `<bos>` counted).
    pub head_scores_tl_default: HeadDetection,
    pub losses: DemoLosses,
    pub trace_bytes: usize,
    /// Sequences the head scores are averaged over.
    pub detect_sequences: usize,
    pub timings_ms: Vec<(String, f64)>,
}

fn heads_of(v: &[(usize, usize, f64)]) -> Vec<ScoredHead> {
    v.iter()
        .map(|&(layer, head, score)| ScoredHead { layer, head, score })
        .collect()
}

pub(super) fn refs(v: &[ScoredHead]) -> Vec<HeadRef> {
    v.iter().map(|h| (h.layer as u16, h.head as u16)).collect()
}

/// The demo's analysis of `model` (the embedded blob, or any model whose token 0 is BOS).
/// Returns the findings and the HTML report.
/// How much the demo measures.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub seed: u64,
    pub detect_sequences: usize,
    pub loss_sequences: usize,
    /// Ablate every head alone too (the report's ablation table), not only the groups.
    pub ablate_each_head: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            seed: 1,
            detect_sequences: DETECT_SEQUENCES,
            loss_sequences: LOSS_SEQUENCES,
            ablate_each_head: true,
        }
    }
}

/// The sequences the demo measures on: `<bos>` + `repeat_len` tokens + the same again.
pub struct DataSets {
    /// Scored by the head detector.
    pub detect: Vec<Prompt>,
    /// Losses and ablations.
    pub loss: Vec<Prompt>,
    pub repeat_len: usize,
    /// What the sequences are, for the report.
    pub what: String,
    /// The prompt the report shows (default: the first detection sequence).
    pub report_tokens: Option<Vec<u32>>,
    pub title: String,
}

/// TL's induction test: random tokens (token 0 is BOS) repeated twice.
pub fn random_sets(model: &Model<'_>, opts: &DemoOptions) -> Result<DataSets> {
    let cfg = model.config();
    let repeat_len = REPEAT_LEN.min((cfg.n_ctx as usize - 1) / 2);
    let bos = Some(0);
    Ok(DataSets {
        detect: repeated_dataset(
            repeat_len,
            opts.detect_sequences,
            opts.seed,
            bos,
            cfg.d_vocab,
            cfg.n_ctx,
        )?,
        loss: repeated_dataset(
            repeat_len,
            opts.loss_sequences,
            opts.seed.wrapping_add(1000),
            bos,
            cfg.d_vocab,
            cfg.n_ctx,
        )?,
        repeat_len,
        what: format!("<bos> + {repeat_len} random tokens + the same {repeat_len}"),
        report_tokens: None,
        title: "tinylens demo: induction heads in a two-layer attention-only transformer".into(),
    })
}

/// The demo's analysis on TL's induction test (random tokens repeated twice).
pub fn analyse(model: &Model<'_>, opts: &DemoOptions) -> Result<(DemoFindings, String)> {
    analyse_sets(model, &random_sets(model, opts)?, opts)
}

/// The demo's analysis of `model` on `sets`: head scores, composition, copying, losses
/// and ablations; returns the findings and the HTML report.
pub fn analyse_sets(
    model: &Model<'_>,
    sets: &DataSets,
    opts: &DemoOptions,
) -> Result<(DemoFindings, String)> {
    let cfg = *model.config();
    let mut timings = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |what: &str, timings: &mut Vec<(String, f64)>| {
        timings.push((what.to_string(), clock.elapsed().as_secs_f64() * 1e3));
        clock = Instant::now();
    };
    let repeat_len = sets.repeat_len;
    let (detect_set, loss_set) = (&sets.detect, &sets.loss);

    // Run with probes -> trace -> decode, for every detection sequence.
    let probes = vec!["blocks.*.attn.hook_pattern".to_string()];
    let recordings = detect_set
        .iter()
        .map(|p| record(model, &p.tokens, &probes))
        .collect::<Result<Vec<_>>>()?;
    let trace_bytes = recordings.iter().map(|r| r.trace_len).sum();
    let [previous_token, duplicate_token, induction] = score(&recordings, NAMING)?;
    let [tl_previous_token, tl_duplicate_token, tl_induction] =
        score(&recordings, DetectOptions::default())?;
    lap("record, decode and score patterns", &mut timings);

    let w = weights_from_model(model);
    let analysis = analyze(&w, &AnalysisOptions::default())?;
    lap("static circuits", &mut timings);

    let prev = heads_of(&top_heads(&previous_token, THRESHOLD));
    let ind = heads_of(&top_heads(&induction, THRESHOLD));
    let baseline = analysis.composition_baseline.mean;
    let k = &analysis.composition.k;
    let mut k_composition = Vec::new();
    for i in &ind {
        // The earlier head that K-composes most into this induction head.
        let mut best: Option<(usize, usize, f64)> = None;
        for (l1, by_h1) in k.iter().enumerate().take(i.layer) {
            for (h1, by_l2) in by_h1.iter().enumerate() {
                let s = by_l2[i.layer][i.head];
                if best.is_none_or(|b| s > b.2) {
                    best = Some((l1, h1, s));
                }
            }
        }
        for p in prev.iter().filter(|p| p.layer < i.layer) {
            let s = k[p.layer][p.head][i.layer][i.head];
            k_composition.push(KComposition {
                from: [p.layer, p.head],
                to: [i.layer, i.head],
                score: s,
                baseline_subtracted: s - baseline,
                strongest_into_to: best.is_some_and(|b| (b.0, b.1) == (p.layer, p.head)),
            });
        }
        if let Some((l1, h1, s)) = best {
            if !prev.iter().any(|p| (p.layer, p.head) == (l1, h1)) {
                k_composition.push(KComposition {
                    from: [l1, h1],
                    to: [i.layer, i.head],
                    score: s,
                    baseline_subtracted: s - baseline,
                    strongest_into_to: true,
                });
            }
        }
    }

    let means = mean_results(model, loss_set, &|| {})?;
    let mut groups = Vec::new();
    if !ind.is_empty() {
        groups.push(refs(&ind));
    }
    if !prev.is_empty() {
        groups.push(refs(&prev));
    }
    let abl = ablate_heads(
        model,
        loss_set,
        Mode::Mean,
        Some(&means),
        &groups,
        opts.ablate_each_head,
        &|| {},
    )?;
    let zero_ind = if ind.is_empty() {
        None
    } else {
        let heads = refs(&ind);
        let hook = Ablation::new(&cfg, &heads, AblationMode::Zero)?;
        dataset_losses(model, loss_set, &hook, &|| {})?.repeat
    };
    // First copy: the predictions inside the first copy (positions 1..=n-1 predict its
    // tokens 2..=n), which nothing can predict.
    let first_copy = {
        let engine = crate::engine::Engine::new(model);
        let v = cfg.d_vocab_out as usize;
        let (mut sum, mut count) = (0.0, 0);
        for p in loss_set {
            let prompt = &p.tokens[..repeat_len.min(p.tokens.len())];
            let out = engine.run(prompt, 0, &Default::default(), &mut tinylens_core::NoHooks)?;
            for (i, logits) in out.logits.chunks_exact(v).enumerate() {
                if i >= 1 {
                    sum += crate::numerics::loss(logits, p.tokens[i + 1]);
                    count += 1;
                }
            }
        }
        sum / count.max(1) as f64
    };
    let group_loss = |heads: &[ScoredHead]| -> Option<f64> {
        let want = refs(heads);
        abl.groups
            .iter()
            .find(|g| {
                g.heads.len() == want.len()
                    && g.heads
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| (a[0], a[1]) == (b.0 as usize, b.1 as usize))
            })
            .and_then(|g| g.loss.repeat)
    };
    let losses = DemoLosses {
        sequences: loss_set.len(),
        first_copy,
        repeat: abl.baseline.repeat.unwrap_or(f64::NAN),
        repeat_induction_mean_ablated: (!ind.is_empty()).then(|| group_loss(&ind)).flatten(),
        repeat_induction_zero_ablated: zero_ind,
        repeat_previous_token_mean_ablated: (!prev.is_empty()).then(|| group_loss(&prev)).flatten(),
        repeat_increase_per_head: abl.repeat_loss_increase.clone().unwrap_or_default(),
    };
    lap("ablations", &mut timings);

    let head_scores = HeadDetection {
        previous_token,
        duplicate_token,
        induction,
        tokens: detect_set[0].tokens.clone(),
        options: NAMING,
    };
    let head_scores_tl_default = HeadDetection {
        previous_token: tl_previous_token,
        duplicate_token: tl_duplicate_token,
        induction: tl_induction,
        tokens: detect_set[0].tokens.clone(),
        options: DetectOptions::default(),
    };
    let findings = DemoFindings {
        previous_token_heads: prev,
        induction_heads: ind,
        k_composition,
        composition_baseline: baseline,
        copying: analysis.copying.clone().unwrap_or_default(),
        head_scores: head_scores.clone(),
        head_scores_tl_default,
        losses,
        trace_bytes,
        detect_sequences: detect_set.len(),
        timings_ms: Vec::new(),
    };
    let mut prompts: Vec<(String, Vec<u32>)> = detect_set
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                format!("sequence {} of {}", i + 1, detect_set.len()),
                p.tokens.clone(),
            )
        })
        .collect();
    if let Some(t) = &sets.report_tokens {
        prompts.insert(0, ("the demo's prompt".into(), t.clone()));
    }
    let html = build(
        model,
        &prompts,
        Extras {
            title: sets.title.clone(),
            findings: summary_lines(&findings),
            detection: Some((
                head_scores,
                format!(
                    "Averaged over {} sequences of {} (the prompt selector shows each), with \
                     TL's exclude_bos (attention parked on <bos> left out of both sums).",
                    detect_set.len(),
                    sets.what
                ),
            )),
            ablation: Some(abl),
            ..Default::default()
        },
    )?;
    lap("attribution, path expansion and report", &mut timings);
    Ok((
        DemoFindings {
            timings_ms: timings,
            ..findings
        },
        html,
    ))
}

fn names(v: &[ScoredHead]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter()
        .map(|h| format!("L{}H{} ({:.2})", h.layer, h.head, h.score))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The findings as sentences (the summary printed and shown at the top of the report).
pub fn summary_lines(f: &DemoFindings) -> Vec<String> {
    let mut out = vec![
        format!(
            "Previous-token heads (TL head_detector score with exclude_bos ≥ {THRESHOLD}): {}.",
            names(&f.previous_token_heads)
        ),
        format!(
            "Induction heads (score ≥ {THRESHOLD}): {}.",
            names(&f.induction_heads)
        ),
    ];
    // One sentence per earlier head: its K-composition into each induction head.
    let mut froms: Vec<[usize; 2]> = f.k_composition.iter().map(|k| k.from).collect();
    froms.sort();
    froms.dedup();
    for from in froms {
        let links: Vec<&KComposition> = f.k_composition.iter().filter(|k| k.from == from).collect();
        let parts: Vec<String> = links
            .iter()
            .map(|k| format!("L{}H{} {:.3}", k.to[0], k.to[1], k.score))
            .collect();
        let strongest = links.iter().filter(|k| k.strongest_into_to).count();
        out.push(format!(
            "K-composition of L{}H{} into the induction heads: {} (random matrices: {:.3}); \
             it is the strongest earlier head into {} of {}.",
            from[0],
            from[1],
            parts.join(", "),
            f.composition_baseline,
            strongest,
            links.len()
        ));
    }
    let cop: Vec<String> = f
        .induction_heads
        .iter()
        .map(|h| format!("L{}H{} {:+.2}", h.layer, h.head, f.copying[h.layer][h.head]))
        .collect();
    if !cop.is_empty() {
        out.push(format!(
            "Copying scores of the induction heads: {} (1 = copies the attended token to the output).",
            cop.join(", ")
        ));
    }
    let l = &f.losses;
    let mut loss = format!(
        "Loss on the repeated half: {:.3}, {:.3} below the first copy's {:.3}",
        l.repeat,
        l.first_copy - l.repeat,
        l.first_copy
    );
    if let Some(m) = l.repeat_induction_mean_ablated {
        loss.push_str(&format!("; induction heads mean-ablated: {m:.3}"));
    }
    if let Some(z) = l.repeat_induction_zero_ablated {
        loss.push_str(&format!(", zero-ablated: {z:.3}"));
    }
    if let Some(p) = l.repeat_previous_token_mean_ablated {
        loss.push_str(&format!("; previous-token heads mean-ablated: {p:.3}"));
    }
    loss.push('.');
    out.push(loss);
    out
}

pub(super) fn print_grids(f: &DemoFindings) -> Result<()> {
    for (title, g) in [
        (
            "previous-token score (exclude_bos)",
            &f.head_scores.previous_token,
        ),
        ("induction score (exclude_bos)", &f.head_scores.induction),
    ] {
        out!("{}", cli::grid_text(title, g, |v| format!("{v:.2}")))?;
    }
    out!(
        "{}",
        cli::grid_text("copying score", &f.copying, |v| format!("{v:+.2}"))
    )?;
    outln!()?;
    for line in summary_lines(f) {
        outln!("* {line}")?;
    }
    Ok(())
}

pub fn run(a: DemoArgs) -> Result<()> {
    let start = Instant::now();
    match a.model.as_str() {
        "english" => return run_english(&a, start),
        "syllables" => {}
        m => {
            return Err(Error::Argument(format!(
                "--model `{m}`: english or syllables"
            )))
        }
    }
    let model = Model::from_bytes(DEMO_BLOB)?;
    if let Some(p) = &a.save_model {
        cli::write_output(p, DEMO_BLOB)?;
    }
    let (f, html) = analyse(
        &model,
        &DemoOptions {
            seed: a.seed,
            ..Default::default()
        },
    )?;
    cli::write_output(&a.output, html.as_bytes())?;
    if a.json {
        cli::print_json(&f)?;
        return Ok(());
    }
    let c = model.config();
    outln!(
        "tinylens demo: a {}-layer, {}-head attention-only transformer trained in TransformerLens \
         on repeated random syllables\n(int8 blob of {} bytes embedded in this binary; {} layers x {} heads, d_model {}, vocab {})",
        c.n_layers,
        c.n_heads,
        DEMO_BLOB.len(),
        c.n_layers,
        c.n_heads,
        c.d_model,
        c.d_vocab
    )?;
    outln!(
        "ran {} sequences of <bos> + {n} random tokens + the same {n} with probes on every \
         attention pattern; {} bytes of trace decoded\n",
        DETECT_SEQUENCES,
        f.trace_bytes,
        n = REPEAT_LEN.min((c.n_ctx as usize - 1) / 2)
    )?;
    out!(
        "{}",
        cli::grid_text(
            "previous-token score (exclude_bos)",
            &f.head_scores.previous_token,
            |v| { format!("{v:.2}") }
        )
    )?;
    out!(
        "{}",
        cli::grid_text(
            "induction score (exclude_bos)",
            &f.head_scores.induction,
            |v| format!("{v:.2}")
        )
    )?;
    out!(
        "{}",
        cli::grid_text("copying score", &f.copying, |v| format!("{v:+.2}"))
    )?;
    outln!()?;
    for line in summary_lines(&f) {
        outln!("* {line}")?;
    }
    outln!(
        "\nreport: {} (open it in a browser)   total {:.2} s",
        a.output.display(),
        start.elapsed().as_secs_f64()
    )?;
    Ok(())
}
