//! `tinylens circuits`: the weight-only analysis of the paper on the weights the device
//! really uses (the blob dequantized): direct path, full OV/QK circuits and their
//! spectra, copying scores, composition scores (raw as TL, and baseline-subtracted as
//! the paper), virtual-head sizes; `--compare` puts two blobs side by side.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Value};
use tinylens_core::Model;

use crate::analysis::{analyze, AnalysisOptions, AnalysisReport, Scores4};
use crate::convert::{vocab_of, weights_from_model};
use crate::{cli, Error, Result};

#[derive(Debug, Args)]
pub struct CircuitsArgs {
    /// Model blob.
    pub model: PathBuf,
    /// A second blob of the same model (e.g. f32 vs int8): both side by side, with the
    /// differences.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Print the full report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Rows of the tables of largest entries (composition pairs, virtual heads, bigrams).
    #[arg(long, default_value_t = 8)]
    pub top: usize,
    /// Random samples of the composition baseline.
    #[arg(long, default_value_t = crate::analysis::BASELINE_SAMPLES)]
    pub baseline_samples: usize,
}

/// A blob's analysis with what identifies the blob.
pub struct Analyzed {
    pub report: AnalysisReport,
    pub blob: Value,
    pub vocab: Option<Vec<String>>,
}

pub fn analyze_blob(path: &Path, opts: &AnalysisOptions) -> Result<Analyzed> {
    let bytes = cli::read_input(path)?;
    let model = Model::from_bytes(&bytes)?;
    let w = weights_from_model(&model);
    let report = analyze(&w, opts)?;
    let p = model.processing();
    let blob = json!({
        "path": path,
        "crc32": format!("{:08x}", model.checksum()),
        "storage": cli::storage_summary(&model),
        "processing": {
            "fold_ln": p.fold_ln,
            "center_writing_weights": p.center_writing_weights,
            "center_unembed": p.center_unembed,
            "fold_value_biases": p.fold_value_biases,
        },
    });
    Ok(Analyzed {
        report,
        blob,
        vocab: vocab_of(&model),
    })
}

fn to_value(a: &Analyzed) -> Result<Value> {
    let mut v = serde_json::to_value(&a.report).map_err(|e| Error::Argument(e.to_string()))?;
    v["blob"] = a.blob.clone();
    Ok(v)
}

fn diff2(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<Vec<f64>> {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| q - p).collect())
        .collect()
}

fn diff4(a: &Scores4, b: &Scores4) -> Scores4 {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| diff2(p, q)).collect())
        .collect()
}

fn max_abs4(s: &Scores4) -> f64 {
    s.iter()
        .flatten()
        .flatten()
        .flatten()
        .filter(|v| v.is_finite())
        .fold(0.0, |m, v| m.max(v.abs()))
}

fn check_same_shape(a: &AnalysisReport, b: &AnalysisReport) -> Result<()> {
    if a.model != b.model {
        return Err(Error::Argument(
            "--compare: the two blobs are models of different shapes".into(),
        ));
    }
    Ok(())
}

/// What `tinylens circuits --json` prints.
pub fn json(a: &CircuitsArgs) -> Result<Value> {
    let opts = options(a);
    let first = analyze_blob(&a.model, &opts)?;
    let Some(other) = &a.compare else {
        return to_value(&first);
    };
    let second = analyze_blob(other, &opts)?;
    check_same_shape(&first.report, &second.report)?;
    compare_value(&first, &second)
}

fn options(a: &CircuitsArgs) -> AnalysisOptions {
    AnalysisOptions {
        bigram_top_k: a.top.max(1),
        baseline_samples: a.baseline_samples.max(1),
        ..Default::default()
    }
}

fn compare_value(x: &Analyzed, y: &Analyzed) -> Result<Value> {
    let (a, b) = (&x.report, &y.report);
    let copying = match (&a.copying, &b.copying) {
        (Some(p), Some(q)) => Some(diff2(p, q)),
        _ => None,
    };
    let comp = json!({
        "Q": diff4(&a.composition.q, &b.composition.q),
        "K": diff4(&a.composition.k, &b.composition.k),
        "V": diff4(&a.composition.v, &b.composition.v),
    });
    let bigram_top1_agreement = a
        .bigram_top
        .iter()
        .zip(&b.bigram_top)
        .filter(|(p, q)| p.next.first().map(|t| t.token) == q.next.first().map(|t| t.token))
        .count() as f64
        / a.bigram_top.len().max(1) as f64;
    let max_copying = copying
        .as_ref()
        .map(|c| c.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs())));
    Ok(json!({
        "a": to_value(x)?,
        "b": to_value(y)?,
        "difference": {
            "note": "b - a",
            "copying": copying,
            "composition": comp,
            "max_abs": {
                "copying": max_copying,
                "composition_Q": max_abs4(&diff4(&a.composition.q, &b.composition.q)),
                "composition_K": max_abs4(&diff4(&a.composition.k, &b.composition.k)),
                "composition_V": max_abs4(&diff4(&a.composition.v, &b.composition.v)),
            },
            "direct_path_norm_relative": b.virtual_heads.direct_norm / a.virtual_heads.direct_norm - 1.0,
            "bigram_top1_agreement": bigram_top1_agreement,
        },
    }))
}

fn label(vocab: Option<&[String]>, t: usize) -> String {
    cli::token_label(vocab, t as u32)
}

/// The `top` largest entries of one composition mode, as `(l1, h1, l2, h2, score)`.
fn top_pairs(s: &Scores4, top: usize) -> Vec<(usize, usize, usize, usize, f64)> {
    let mut v = Vec::new();
    for (l1, a) in s.iter().enumerate() {
        for (h1, b) in a.iter().enumerate() {
            for (l2, c) in b.iter().enumerate() {
                for (h2, x) in c.iter().enumerate() {
                    if l1 < l2 && x.is_finite() {
                        v.push((l1, h1, l2, h2, *x));
                    }
                }
            }
        }
    }
    v.sort_by(|a, b| b.4.total_cmp(&a.4));
    v.truncate(top);
    v
}

fn print_one(x: &Analyzed, top: usize) -> Result<()> {
    let r = &x.report;
    let m = &r.model;
    let vocab = x.vocab.as_deref();
    outln!(
        "{}: {} layers x {} heads, d_model {}, d_head {}, vocab {}; storage {}; crc {}",
        x.blob["path"].as_str().unwrap_or("?"),
        m.n_layers,
        m.n_heads,
        m.d_model,
        m.d_head,
        m.d_vocab,
        x.blob["storage"].as_str().unwrap_or("?"),
        x.blob["crc32"].as_str().unwrap_or("?")
    )?;
    outln!("note: {}\n", r.ln_treatment)?;
    if let Some(c) = &r.copying {
        outln!(
            "{}",
            crate::cli::grid_text(
                "copying score  sum(λ)/sum(|λ|) of the full OV circuit W_E W_V W_O W_U",
                c,
                |v| format!("{v:+.3}")
            )
        )?;
    }
    outln!("OV / QK spectra (eigenvalues of the d_head x d_head products):")?;
    outln!(
        "  head    OV: +real -real complex   top |λ|      QK: +real -real complex  trace/sum|λ|"
    )?;
    for h in &r.heads {
        let ov = h.ov.eigen.as_ref();
        let qk = h.qk.eigen.as_ref();
        let top_abs = ov
            .and_then(|e| e.top_eigenvalues.first())
            .map_or(0.0, |z| (z[0] * z[0] + z[1] * z[1]).sqrt());
        outln!(
            "  L{}H{}  {:>9} {:>5} {:>7}  {:>9.3}  {:>12} {:>5} {:>7}  {:>+8.3}",
            h.layer,
            h.head,
            ov.map_or(0, |e| e.n_positive_real),
            ov.map_or(0, |e| e.n_negative_real),
            ov.map_or(0, |e| e.n_complex),
            top_abs,
            qk.map_or(0, |e| e.n_positive_real),
            qk.map_or(0, |e| e.n_negative_real),
            qk.map_or(0, |e| e.n_complex),
            qk.map_or(f64::NAN, |e| e.trace_over_abs_sum),
        )?;
    }
    outln!("\nlargest full-OV entries per head (attended token -> raised logit):")?;
    for h in &r.heads {
        let pairs: Vec<String> =
            h.ov.top_pairs
                .iter()
                .take(4)
                .map(|e| {
                    format!(
                        "{}->{} {:.2}",
                        label(vocab, e.row),
                        label(vocab, e.col),
                        e.value
                    )
                })
                .collect();
        outln!("  L{}H{}  {}", h.layer, h.head, pairs.join(", "))?;
    }
    if m.n_layers > 1 {
        let b = &r.composition_baseline;
        outln!(
            "\ncomposition scores (TL all_composition_scores; random baseline {:.3} ± {:.3}, {} samples)",
            b.mean, b.std, b.samples
        )?;
        for (name, s) in [
            ("K", &r.composition.k),
            ("Q", &r.composition.q),
            ("V", &r.composition.v),
        ] {
            let pairs: Vec<String> = top_pairs(s, top.min(6))
                .iter()
                .map(|(l1, h1, l2, h2, v)| {
                    format!("L{l1}H{h1}->L{l2}H{h2} {v:.3} ({:+.3})", v - b.mean)
                })
                .collect();
            outln!("  {name}: {}", pairs.join(", "))?;
        }
        let mut vh = r.virtual_heads.virtual_heads.clone();
        vh.sort_by(|a, b| b.norm.total_cmp(&a.norm));
        let sizes: Vec<String> = vh
            .iter()
            .take(top)
            .map(|v| {
                format!(
                    "L{}H{}>L{}H{} {:.2}",
                    v.layer1, v.head1, v.layer2, v.head2, v.relative_to_direct
                )
            })
            .collect();
        outln!(
            "\nvirtual heads, ||W_E OV1 OV2 W_U|| relative to the direct path: {}",
            sizes.join(", ")
        )?;
    }
    let singles: Vec<String> = r
        .virtual_heads
        .heads
        .iter()
        .map(|t| format!("L{}H{} {:.2}", t.layer, t.head, t.relative_to_direct))
        .collect();
    outln!(
        "heads, ||W_E OV W_U|| relative to the direct path: {}",
        singles.join(", ")
    )?;
    outln!("\ndirect path W_E W_U (bigrams), top next tokens:")?;
    for row in r.bigram_top.iter().take(top) {
        let next: Vec<String> = row
            .next
            .iter()
            .take(4)
            .map(|t| format!("{} {:.2}", label(vocab, t.token), t.logit))
            .collect();
        outln!("  {:>8} -> {}", label(vocab, row.token), next.join(", "))?;
    }
    if r.bigram_top.len() > top {
        outln!(
            "  ... ({} more tokens; --json for all)",
            r.bigram_top.len() - top
        )?;
    }
    Ok(())
}

fn print_compare(x: &Analyzed, y: &Analyzed, top: usize) -> Result<()> {
    let (a, b) = (&x.report, &y.report);
    let v = compare_value(x, y)?;
    let d = &v["difference"];
    outln!(
        "a: {} ({}, crc {})\nb: {} ({}, crc {})\n",
        x.blob["path"].as_str().unwrap_or("?"),
        x.blob["storage"].as_str().unwrap_or("?"),
        x.blob["crc32"].as_str().unwrap_or("?"),
        y.blob["path"].as_str().unwrap_or("?"),
        y.blob["storage"].as_str().unwrap_or("?"),
        y.blob["crc32"].as_str().unwrap_or("?"),
    )?;
    if let (Some(ca), Some(cb)) = (&a.copying, &b.copying) {
        outln!("copying score          a         b       b-a")?;
        for l in 0..ca.len() {
            for h in 0..ca[l].len() {
                outln!(
                    "  L{l}H{h}          {:>+8.4}  {:>+8.4}  {:>+9.2e}",
                    ca[l][h],
                    cb[l][h],
                    cb[l][h] - ca[l][h]
                )?;
            }
        }
    }
    if a.model.n_layers > 1 {
        outln!("\ncomposition, largest in a (a / b / b-a):")?;
        for (name, sa, sb) in [
            ("K", &a.composition.k, &b.composition.k),
            ("Q", &a.composition.q, &b.composition.q),
            ("V", &a.composition.v, &b.composition.v),
        ] {
            for (l1, h1, l2, h2, va) in top_pairs(sa, top.min(4)) {
                let vb = sb[l1][h1][l2][h2];
                outln!(
                    "  {name} L{l1}H{h1}->L{l2}H{h2}  {va:.4} / {vb:.4} / {:+.2e}",
                    vb - va
                )?;
            }
        }
        let m = &d["max_abs"];
        outln!(
            "max |b-a|: copying {:.2e}, composition Q {:.2e}, K {:.2e}, V {:.2e}",
            m["copying"].as_f64().unwrap_or(f64::NAN),
            m["composition_Q"].as_f64().unwrap_or(0.0),
            m["composition_K"].as_f64().unwrap_or(0.0),
            m["composition_V"].as_f64().unwrap_or(0.0)
        )?;
    }
    outln!(
        "direct path size changed by {:+.3}%; top bigram agrees on {:.1}% of tokens",
        100.0 * d["direct_path_norm_relative"].as_f64().unwrap_or(0.0),
        100.0 * d["bigram_top1_agreement"].as_f64().unwrap_or(0.0)
    )?;
    Ok(())
}

pub fn run(a: CircuitsArgs) -> Result<()> {
    if a.json {
        let v = json(&a)?;
        cli::print_json(&v)?;
        return Ok(());
    }
    let opts = options(&a);
    let first = analyze_blob(&a.model, &opts)?;
    match &a.compare {
        None => print_one(&first, a.top)?,
        Some(other) => {
            let second = analyze_blob(other, &opts)?;
            check_same_shape(&first.report, &second.report)?;
            print_compare(&first, &second, a.top)?;
        }
    }
    Ok(())
}
