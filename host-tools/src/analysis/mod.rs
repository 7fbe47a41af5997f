//! Circuit analysis of attention-only transformers ("A Mathematical Framework for
//! Transformer Circuits", Elhage et al. 2021), in TransformerLens's conventions.
//!
//! - [`circuits`]: weight-only quantities — full OV/QK circuits, eigenvalues and copying
//!   scores, composition scores (TL's `all_composition_scores`, plus the paper's
//!   random-baseline subtraction), the direct path ("bigram") and the path expansion into
//!   heads and virtual heads.
//! - [`heads`]: TL's `head_detector` on recorded attention patterns.
//! - [`factored`]: low-rank matrices kept as two f64 factors (TL's `FactoredMatrix`);
//!   [`vocab`]: vocabulary-sized full circuits through `d_model x d_model` Gram matrices;
//!   [`scan`]: the blocked, parallel scans that need every entry of one;
//!   [`progress`]: progress bars and `--threads`.
//! - [`recorded`]: activations recorded through the probe/trace path for the dynamic
//!   analyses; [`attribution`]: direct logit attribution and the frozen-attention path
//!   expansion; [`ablation`]: zero/mean ablation of heads over a data set;
//!   [`html`]: the self-contained HTML report.
//!
//! [`analyze`] runs all weight-only analyses and returns an [`AnalysisReport`], which
//! serializes to the JSON the CLI writes. Layer norm is ignored, as TL does for these
//! quantities (see [`circuits`]): [`AnalysisReport::ln_treatment`] says so in the output.

pub mod ablation;
pub mod attribution;
pub mod circuits;
pub mod dynamic;
pub mod factored;
pub mod heads;
pub mod html;
pub mod progress;
pub mod recorded;
pub mod repeats;
pub mod report;
pub mod scan;
#[cfg(test)]
mod tl_fixtures;
pub mod vocab;

use indicatif::ProgressBar;
use serde::Serialize;

pub use circuits::{
    bigram_top, composition_baseline, composition_score, composition_scores,
    composition_scores_mode, copying_score, copying_scores, direct_path, full_ov, full_qk,
    head_reports, ov, ov_eigenvalues, path_expansion, qk, subtract_baseline, subtract_baseline_all,
    virtual_ov, CompositionMode, ScanTokens, AUTO_FULL_SCAN_VOCAB, AUTO_SUBSET, BASELINE_SAMPLES,
    BASELINE_SEED,
};
pub use factored::{Entry, LowRank};
pub use heads::{
    detect, detect_all, detect_batch, detection_pattern, head_score, repeated_random_tokens,
    DetectOptions, HeadKind, LayerPatterns,
};

use crate::weights::{Normalization, Weights};
use crate::Result;

/// Scores indexed `[layer1][head1][layer2][head2]`.
pub type Scores4 = Vec<Vec<Vec<Vec<f64>>>>;

/// Q-, K- and V-composition scores (JSON keys `Q`, `K`, `V`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompositionScores {
    #[serde(rename = "Q")]
    pub q: Scores4,
    #[serde(rename = "K")]
    pub k: Scores4,
    #[serde(rename = "V")]
    pub v: Scores4,
}

/// The expected composition score of random matrices (see [`composition_baseline`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompositionBaseline {
    /// The estimate subtracted from every score with layer1 < layer2.
    pub mean: f64,
    /// Standard deviation of one sample's score.
    pub std: f64,
    /// Standard error of `mean`.
    pub std_error: f64,
    pub samples: usize,
    pub seed: u64,
    pub d_model: usize,
    pub d_head: usize,
}

/// One output token and its score.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenScore {
    pub token: usize,
    pub logit: f64,
}

/// The top next tokens of one input token along the direct path `W_E W_U`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BigramRow {
    pub token: usize,
    pub next: Vec<TokenScore>,
}

/// Spectrum summary of a square full circuit (eigenvalues of the small product).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EigenStats {
    /// Largest-modulus eigenvalues first, as `[re, im]`.
    pub top_eigenvalues: Vec<[f64; 2]>,
    /// Counts over all `d_head` eigenvalues; "real" means `|im| <= 1e-9 max|λ|`, "zero"
    /// means `|λ| <= 1e-9 max|λ|`.
    pub n_positive_real: usize,
    pub n_negative_real: usize,
    pub n_complex: usize,
    pub n_zero: usize,
    /// `Re(sum λ)` (the trace of the circuit).
    pub trace: f64,
    /// `sum |λ|`.
    pub abs_sum: f64,
    /// `trace / abs_sum`: the copying score for an OV circuit; for a QK circuit, how much
    /// the head prefers keys equal to the query token.
    pub trace_over_abs_sum: f64,
}

/// One full circuit (vocab-sized, never formed).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CircuitReport {
    pub frobenius_norm: f64,
    /// None when the circuit is not square (`d_vocab != d_vocab_out` for OV).
    pub eigen: Option<EigenStats>,
    /// Largest entries (OV: row = attended token, col = output token; QK: row = query
    /// token, col = key token).
    pub top_pairs: Vec<Entry>,
    /// Fraction of the scanned rows whose largest entry is the diagonal one (square
    /// circuits only; None without scans).
    pub diagonal_argmax_fraction: Option<f64>,
}

/// Weight-only details of one head.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeadReport {
    pub layer: usize,
    pub head: usize,
    /// Copying score of the full OV circuit (None if it is not square).
    pub copying: Option<f64>,
    pub ov: CircuitReport,
    pub qk: CircuitReport,
}

/// A path of the OV path expansion through one head.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PathTerm {
    pub layer: usize,
    pub head: usize,
    /// `||W_E W_V W_O W_U||_F`.
    pub norm: f64,
    pub relative_to_direct: f64,
}

/// A virtual head `h1 -> h2` (layer1 < layer2).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VirtualHead {
    pub layer1: usize,
    pub head1: usize,
    pub layer2: usize,
    pub head2: usize,
    /// `||W_E W_OV^{h1} W_OV^{h2} W_U||_F`.
    pub norm: f64,
    pub relative_to_direct: f64,
}

/// Sizes of the terms of the OV path expansion (paths through at most two heads).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PathExpansion {
    /// `||W_E W_U||_F`.
    pub direct_norm: f64,
    pub heads: Vec<PathTerm>,
    pub virtual_heads: Vec<VirtualHead>,
}

/// Head-detector scores on one sequence, `[layer][head]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeadDetection {
    pub previous_token: Vec<Vec<f64>>,
    pub duplicate_token: Vec<Vec<f64>>,
    pub induction: Vec<Vec<f64>>,
    pub tokens: Vec<u32>,
    pub options: DetectOptions,
}

/// Model shape, repeated in the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelShape {
    pub n_layers: usize,
    pub n_heads: usize,
    pub d_model: usize,
    pub d_head: usize,
    pub d_vocab: usize,
    pub d_vocab_out: usize,
}

/// Everything [`analyze`] computes; the JSON output.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnalysisReport {
    pub model: ModelShape,
    /// How layer norm was treated (it is ignored; see [`circuits`]).
    pub ln_treatment: String,
    /// Copying score `[layer][head]`; None if `d_vocab != d_vocab_out`.
    pub copying: Option<Vec<Vec<f64>>>,
    /// TL's `all_composition_scores` for Q, K, V.
    pub composition: CompositionScores,
    pub composition_baseline: CompositionBaseline,
    /// `composition - composition_baseline.mean` where layer1 < layer2, else 0.
    pub composition_baseline_subtracted: CompositionScores,
    /// Which tokens the vocabulary-sized scans read (top pairs, diagonal-argmax
    /// fractions, `bigram_top`).
    pub scan: ScanInfo,
    /// Top next tokens per scanned token along the direct path.
    pub bigram_top: Vec<BigramRow>,
    /// Per-head details, layer-major.
    pub heads: Vec<HeadReport>,
    /// The OV path expansion.
    pub virtual_heads: PathExpansion,
    /// Head-detector scores, when the caller ran the model and added them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection: Option<HeadDetection>,
}

/// The rows of the vocabulary-sized scans.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScanInfo {
    /// `all`, `subset` (evenly spaced tokens `i * d_vocab / rows`) or `off`.
    pub tokens: String,
    pub rows: usize,
    pub d_vocab: usize,
}

/// Options of [`analyze`].
#[derive(Clone, Debug, PartialEq)]
pub struct AnalysisOptions {
    /// Next tokens kept per token in `bigram_top`.
    pub bigram_top_k: usize,
    /// Largest entries kept per full circuit.
    pub top_pairs: usize,
    /// Eigenvalues kept per circuit in `top_eigenvalues`.
    pub top_eigenvalues: usize,
    /// Random samples of the composition baseline.
    pub baseline_samples: usize,
    pub baseline_seed: u64,
    /// Rows of the vocabulary-sized scans.
    pub scan: ScanTokens,
}

impl Default for AnalysisOptions {
    fn default() -> Self {
        AnalysisOptions {
            bigram_top_k: 5,
            top_pairs: 10,
            top_eigenvalues: 8,
            baseline_samples: BASELINE_SAMPLES,
            baseline_seed: BASELINE_SEED,
            scan: ScanTokens::Auto,
        }
    }
}

/// How the analysis treats layer norm, for the report.
pub fn ln_treatment(w: &Weights) -> String {
    let base = "layer norm ignored (as TransformerLens's OV/QK/composition quantities): \
                circuits are products of the stored weights, LN scale and centring are not \
                applied";
    match w.cfg.normalization {
        Normalization::None => "no layer norm in this model".to_string(),
        Normalization::LNPre => format!(
            "{base}; the model's LN is parameter-free (LNPre, folded), so only the \
             per-position scale is left out"
        ),
        Normalization::LN => format!(
            "{base}; WARNING: the model has an unfolded LN with weights and biases, which \
             are not in these circuits (fold LN for exact circuits)"
        ),
    }
}

/// Steps of [`analyze_with_progress`]'s bar: one for the Gram products, one per scanned
/// block of rows (two circuits per head and the direct path).
pub fn analysis_steps(w: &Weights, opts: &AnalysisOptions) -> u64 {
    let rows = opts.scan.tokens(w.cfg.d_vocab).len();
    let circuits = 2 * w.cfg.n_layers * w.cfg.n_heads + usize::from(opts.bigram_top_k > 0);
    1 + circuits as u64 * scan::blocks(rows)
}

/// Runs every weight-only analysis.
pub fn analyze(w: &Weights, opts: &AnalysisOptions) -> Result<AnalysisReport> {
    analyze_with_progress(w, opts, &ProgressBar::hidden())
}

/// [`analyze`], advancing `pb` by [`analysis_steps`] in all. Parallel loops and products
/// use the current rayon pool (`--threads`).
pub fn analyze_with_progress(
    w: &Weights,
    opts: &AnalysisOptions,
    pb: &ProgressBar,
) -> Result<AnalysisReport> {
    let cfg = &w.cfg;
    // Composition scores and virtual heads are one value per pair of heads: refuse a
    // head count whose pairs would not fit before any work starts.
    circuits::check_composition_size(cfg.n_layers, cfg.n_heads)?;
    let v = vocab::Vocab::new(w);
    pb.inc(1);
    let tokens = opts.scan.tokens(cfg.d_vocab);
    let heads = head_reports(&v, opts.top_eigenvalues, opts.top_pairs, &tokens, pb)?;
    let copying = if cfg.d_vocab == cfg.d_vocab_out {
        let mut c = vec![vec![0.0; cfg.n_heads]; cfg.n_layers];
        for h in &heads {
            c[h.layer][h.head] = h.copying.unwrap_or(f64::NAN);
        }
        Some(c)
    } else {
        None
    };
    let composition = composition_scores(w)?;
    let baseline = composition_baseline(
        cfg.d_model,
        cfg.d_head,
        opts.baseline_samples,
        opts.baseline_seed,
    );
    let composition_baseline_subtracted = subtract_baseline_all(&composition, baseline.mean);
    Ok(AnalysisReport {
        model: ModelShape {
            n_layers: cfg.n_layers,
            n_heads: cfg.n_heads,
            d_model: cfg.d_model,
            d_head: cfg.d_head,
            d_vocab: cfg.d_vocab,
            d_vocab_out: cfg.d_vocab_out,
        },
        ln_treatment: ln_treatment(w),
        copying,
        composition,
        composition_baseline: baseline,
        composition_baseline_subtracted,
        scan: ScanInfo {
            tokens: match (tokens.len(), opts.scan == ScanTokens::Off) {
                (_, true) | (0, _) => "off",
                (n, _) if n == cfg.d_vocab => "all",
                _ => "subset",
            }
            .to_string(),
            rows: tokens.len(),
            d_vocab: cfg.d_vocab,
        },
        bigram_top: bigram_top(&v, opts.bigram_top_k, &tokens, pb),
        heads,
        virtual_heads: path_expansion(&v),
        detection: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyze_serializes_with_the_agreed_keys() {
        let d = 4;
        let w_e = nalgebra::DMatrix::from_fn(6, d, |i, j| if i % d == j { 1.0 } else { 0.0 });
        let p = circuits::tests::basis(d, &[0, 1]);
        let head = || circuits::tests::HeadMats {
            q: p.clone(),
            k: p.clone(),
            v: p.clone(),
            o: p.transpose(),
        };
        let w = circuits::tests::model(
            w_e.clone(),
            w_e.transpose(),
            vec![vec![head(), head()], vec![head(), head()]],
        );
        let opts = AnalysisOptions {
            baseline_samples: 16,
            ..Default::default()
        };
        let r = analyze(&w, &opts).unwrap();
        let j = serde_json::to_value(&r).unwrap();
        for key in [
            "copying",
            "composition",
            "composition_baseline_subtracted",
            "bigram_top",
            "heads",
            "virtual_heads",
        ] {
            assert!(j.get(key).is_some(), "missing {key}");
        }
        assert!(j.get("detection").is_none());
        for m in ["Q", "K", "V"] {
            assert_eq!(j["composition"][m].as_array().unwrap().len(), 2);
        }
        assert_eq!(j["copying"][1][1].as_f64().unwrap(), 1.0);
        assert_eq!(j["heads"].as_array().unwrap().len(), 4);
        assert_eq!(j["heads"][0]["ov"]["eigen"]["n_positive_real"], 2);
        assert_eq!(
            j["virtual_heads"]["virtual_heads"]
                .as_array()
                .unwrap()
                .len(),
            4
        );
        let sub = r.composition_baseline_subtracted.v[0][0][1][0];
        assert!((sub - (0.5f64.sqrt() - r.composition_baseline.mean)).abs() < 1e-12);
    }
}
