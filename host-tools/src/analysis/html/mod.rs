//! The HTML report: one self-contained file (inline CSS, JavaScript, canvas and SVG;
//! nothing is fetched), the figures of "A Mathematical Framework for Transformer
//! Circuits" for the prompts a model (or a device) ran — what a researcher would
//! otherwise draw with CircuitsVis in a notebook.
//!
//! - [`mod@self`]: the data the page embeds ([`ReportData`], JSON) and the page shell;
//! - [`style`]: CSS, colour scales and number formatting shared by the static tables;
//! - [`tables`]: the static HTML tables (head scores, ablation, the comparison);
//! - [`encode`]: byte encodings that keep the embedded data small;
//! - `js/*.js`: the figures, drawn by the embedded script — `common.js` (data, colours,
//!   legends, canvas heatmaps, tooltips), `attention.js` (pattern thumbnails and the
//!   large view), `tokens.js` (the CircuitsVis-like token view), `circuits.js` (full
//!   OV/QK circuits, eigenvalues, composition), `logits.js` (stacked DLA, term
//!   importance) and `main.js` (prompt selector, head selection, self-checks).
//!
//! When the script has run, `<body>` carries `data-rendered="1"`, every figure's canvas
//! `data-colours` (distinct colours drawn) and `<body data-overflow>` lists the sections
//! whose content is wider than the section (empty when none is). A URL fragment such as
//! `#prompt=2&head=1.3&hover=7` selects a prompt and head and hovers a token (the token
//! view receives a real `mouseover` event), for screenshots and tests.

mod encode;
mod style;
mod tables;

use std::fmt::Write;

use serde::Serialize;

use super::ablation::AblationReport;
use super::HeadDetection;
pub use encode::{encode_patterns, CircuitMap};
use style::esc;

/// The eigenvalues of one head's full OV and QK circuits, `[re, im]`.
#[derive(Clone, Debug, Serialize)]
pub struct EigenData {
    pub ov: Vec<[f64; 2]>,
    pub qk: Vec<[f64; 2]>,
    /// `Re(Σλ)/Σ|λ|` of the OV circuit.
    pub copying: f64,
    /// The same ratio for the QK circuit (positive: the head prefers keys equal to the
    /// query token).
    pub qk_score: f64,
}

/// Composition scores `[l1][h1][l2][h2]` (TL's `all_composition_scores`) and the
/// random-matrix baseline.
#[derive(Clone, Debug, Serialize)]
pub struct CompositionData {
    pub k: Vec<Vec<Vec<Vec<f64>>>>,
    pub q: Vec<Vec<Vec<Vec<f64>>>>,
    pub v: Vec<Vec<Vec<Vec<f64>>>>,
    pub baseline: f64,
    pub baseline_std: f64,
}

impl CompositionData {
    pub fn new(c: &super::CompositionScores, baseline: f64, baseline_std: f64) -> Self {
        let r = |m: &Vec<Vec<Vec<Vec<f64>>>>| {
            m.iter()
                .map(|a| {
                    a.iter()
                        .map(|b| {
                            b.iter()
                                .map(|c| c.iter().map(|v| (v * 1e4).round() / 1e4).collect())
                                .collect()
                        })
                        .collect()
                })
                .collect()
        };
        CompositionData {
            k: r(&c.k),
            q: r(&c.q),
            v: r(&c.v),
            baseline,
            baseline_std,
        }
    }
}

/// The K-composition term of the strongest pair (see `report::induction_term`).
#[derive(Clone, Debug, Serialize)]
pub struct InductionTerm {
    pub from: [usize; 2],
    pub to: [usize; 2],
    /// The K-composition score of the pair.
    pub score: f64,
    /// `Re(Σλ)/Σ|λ|` of the term.
    pub eigen_score: f64,
    pub map: CircuitMap,
}

/// Every weight-only figure.
#[derive(Clone, Debug, Serialize)]
pub struct WeightData {
    /// The circuit maps show the whole vocabulary (else the top tokens by row norm).
    pub full_vocab: bool,
    pub map_tokens: usize,
    /// `[layer][head]` full OV circuit `W_E W_V W_O W_U` (row = attended token, column =
    /// output logit).
    pub ov: Vec<Vec<CircuitMap>>,
    /// `[layer][head]` full QK circuit `W_E W_Q W_K^T W_E^T` (row = query token, column =
    /// key token).
    pub qk: Vec<Vec<CircuitMap>>,
    pub eigen: Vec<Vec<EigenData>>,
    pub composition: CompositionData,
    pub induction: Option<InductionTerm>,
}

/// Direct logit attribution of one prompt: `rows[row][pos]` for the rows `names`
/// (direct, every head, biases).
#[derive(Clone, Debug, Serialize)]
pub struct DlaData {
    pub what: String,
    pub names: Vec<String>,
    pub rows: Vec<Vec<f64>>,
    /// The attributed token (or difference) per position, as text.
    pub targets: Vec<String>,
    pub model_logit: Vec<f64>,
    pub max_abs_error: f64,
}

/// Term importance by path order on one prompt.
#[derive(Clone, Debug, Serialize)]
pub struct ImportanceData {
    pub loss_all_terms: f64,
    pub loss_biases_only: f64,
    /// `(order, terms, loss increase when this order is dropped, loss with orders ≤ it)`.
    pub orders: Vec<(usize, usize, f64, f64)>,
    /// The largest terms: `(name, order, loss increase when dropped)`.
    pub terms: Vec<(String, Option<usize>, f64)>,
}

/// One prompt's dynamic figures.
#[derive(Clone, Debug, Serialize)]
pub struct PromptData {
    pub name: String,
    pub tokens: Vec<u32>,
    pub labels: Vec<String>,
    /// See [`encode_patterns`].
    pub patterns: String,
    /// Block size of the patterns (1 = exact).
    pub pool: usize,
    pub prev: Vec<Vec<f64>>,
    pub dup: Vec<Vec<f64>>,
    pub ind: Vec<Vec<f64>>,
    /// None when the report's DLA budget was spent on earlier prompts.
    pub dla: Option<DlaData>,
    pub importance: Option<ImportanceData>,
    /// Why `importance` is missing.
    pub importance_note: String,
    pub source_patterns: String,
    pub source_dla: String,
    pub source_paths: String,
}

/// One head of the comparison: `(this model, other model)` per metric.
#[derive(Clone, Debug, Serialize)]
pub struct CompareRow {
    pub head: [usize; 2],
    pub values: Vec<(f64, f64)>,
}

/// The model against another of the same shape (`report --compare`).
#[derive(Clone, Debug, Serialize)]
pub struct CompareData {
    pub name: String,
    pub crc: u32,
    pub metrics: Vec<String>,
    /// A difference above this is highlighted, per metric.
    pub thresholds: Vec<f64>,
    pub rows: Vec<CompareRow>,
    /// The other model's spectra (drawn over this model's).
    pub eigen: Vec<Vec<EigenData>>,
    pub n_prompts: usize,
}

/// Everything a report shows.
#[derive(Debug, Serialize)]
pub struct ReportData {
    pub title: String,
    pub model_line: String,
    pub findings: Vec<String>,
    pub provenance: Vec<String>,
    pub n_layers: usize,
    pub n_heads: usize,
    pub d_vocab: usize,
    /// A display string per token id (empty for large vocabularies: the maps carry
    /// their own labels).
    pub vocab: Vec<String>,
    pub prompts: Vec<PromptData>,
    pub weights: WeightData,
    /// Head scores measured elsewhere and what on (a static table).
    #[serde(skip)]
    pub detection: Option<(HeadDetection, String)>,
    #[serde(skip)]
    pub ablation: Option<AblationReport>,
    pub compare: Option<CompareData>,
}

const JS: [&str; 6] = [
    include_str!("js/common.js"),
    include_str!("js/attention.js"),
    include_str!("js/tokens.js"),
    include_str!("js/circuits.js"),
    include_str!("js/logits.js"),
    include_str!("js/main.js"),
];

/// A section with a heading and a one-line caption that says what the figure shows and
/// how to read it.
fn section(s: &mut String, id: &str, title: &str, caption: &str, body: &str) {
    let _ = write!(
        s,
        "<section id=\"{id}\"><h2>{title}</h2><p class=\"cap\">{caption}</p>{body}</section>"
    );
}

/// Renders the report.
pub fn render(r: &ReportData) -> String {
    let data = serde_json::to_string(r)
        .unwrap_or_else(|_| "{}".into())
        .replace("</", "<\\/");
    let mut s = String::with_capacity(data.len() + 64 * 1024);
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{}</style></head><body>\
         <header><h1>{}</h1><div class=\"model\">{}</div>",
        esc(&r.title),
        style::CSS,
        esc(&r.title),
        esc(&r.model_line)
    );
    for p in &r.provenance {
        let _ = write!(s, "<div class=\"prov\">{}</div>", esc(p));
    }
    s.push_str("</header>");
    s.push_str(
        "<nav id=\"bar\"><label>Prompt <select id=\"prompt-select\"></select></label>\
         <span id=\"prompt-info\"></span><label>Head <select id=\"head-select\"></select></label>\
         <span class=\"hint\">click any head thumbnail, eigenvalue plot or grid cell to select it</span></nav><main>",
    );
    if !r.findings.is_empty() {
        s.push_str("<section id=\"findings\"><h2>Findings</h2><ul class=\"findings\">");
        for f in &r.findings {
            let _ = write!(s, "<li>{}</li>", esc(f));
        }
        s.push_str("</ul></section>");
    }
    section(
        &mut s,
        "tokens",
        "Token view",
        "The prompt as text. <b>Attention</b>: hover a token to colour every earlier token by how much the \
         selected head attends to it from there (darker = more). <b>DLA</b>: each token coloured by the \
         selected head's direct contribution to the logit predicted at that position (red +, blue −).",
        "<div class=\"tv-controls\"><label><input type=\"radio\" name=\"tv-mode\" value=\"attn\" checked> attention \
         from the hovered token</label><label><input type=\"radio\" name=\"tv-mode\" value=\"dla\"> DLA of the head</label>\
         <span id=\"tv-status\" class=\"hint\"></span></div><div id=\"tv\" class=\"tv\"></div>\
         <div id=\"tv-legend\" class=\"legend\"></div><p class=\"src\" id=\"tv-src\"></p>",
    );
    section(
        &mut s,
        "attention",
        "Attention patterns",
        "One square per head (row = query position, column = key position; darker = more attention; only \
         keys at or before the query exist). Click a head to enlarge it; hover for the exact weight.",
        "<div id=\"thumbs\" class=\"thumbs\"></div><div class=\"row\"><div><h3 id=\"main-title\"></h3>\
         <div id=\"main-view\"></div></div><div id=\"attn-legend\" class=\"legend\"></div></div>\
         <p class=\"src\" id=\"attn-src\"></p>\
         <noscript>The figures need JavaScript; the tables do not.</noscript>",
    );
    let mut scores = String::from(
        "<h3>On the selected prompt</h3><div class=\"row\" id=\"prompt-scores\"></div>",
    );
    if let Some((d, note)) = &r.detection {
        let _ = write!(
            scores,
            "<h3>Averaged</h3><p class=\"note\">{}</p>{}",
            esc(note),
            tables::detection_tables(d)
        );
    }
    section(
        &mut s,
        "head-scores",
        "Head detector scores",
        "TransformerLens <code>head_detector</code> ('mul'): the share of a head's attention on the positions \
         a previous-token, duplicate-token or induction head would attend to (1 = all of it).",
        &scores,
    );
    let w = &r.weights;
    let vocab_note = if w.full_vocab {
        format!("all {} tokens", r.d_vocab)
    } else {
        format!(
            "the {} tokens with the largest row norm of each head's circuit (of {}), in id order",
            w.map_tokens, r.d_vocab
        )
    };
    section(
        &mut s,
        "circuits",
        "Full OV and QK circuits of the selected head",
        &format!(
            "OV = W<sub>E</sub>W<sub>V</sub>W<sub>O</sub>W<sub>U</sub> (row: the token attended to, column: \
             the logit it raises; a red diagonal = copying); QK = W<sub>E</sub>W<sub>Q</sub>W<sub>K</sub>\
             <sup>T</sup>W<sub>E</sub><sup>T</sup> (row: query token, column: key token); TL's row-vector \
             convention, layer norm ignored; {vocab_note}."
        ),
        "<div class=\"row\"><div><h3 id=\"ov-title\">OV</h3><div id=\"ov-map\"></div></div>\
         <div><h3 id=\"qk-title\">QK</h3><div id=\"qk-map\"></div></div><div id=\"circ-legend\" class=\"legend\"></div></div>",
    );
    let compare_note = if r.compare.is_some() {
        " Hollow grey circles: the same head of the comparison model."
    } else {
        ""
    };
    section(
        &mut s,
        "eigen",
        "Eigenvalues of the OV and QK circuits",
        &format!(
            "Every head's d_head eigenvalues in the complex plane (radius compressed as |λ|<sup>½</sup>, scaled \
             to the head's largest); mostly positive real eigenvalues (right) mean the head copies (OV) or \
             attends to the same token (QK). The number is Σλ/Σ|λ| (the copying score for OV).{compare_note}"
        ),
        "<h3>OV circuits</h3><div id=\"eig-ov\" class=\"smalls\"></div><h3>QK circuits</h3>\
         <div id=\"eig-qk\" class=\"smalls\"></div>",
    );
    if r.n_layers > 1 {
        section(
            &mut s,
            "composition",
            "Composition",
            &format!(
                "‖L R‖/(‖L‖‖R‖) of an earlier head's OV (rows) into a later head's QK (Q), QK<sup>T</sup> (K) or \
                 OV (V), minus the {:.3} ± {:.3} that random matrices of these shapes score (the paper's \
                 baseline): red = more composition than chance.",
                w.composition.baseline, w.composition.baseline_std
            ),
            "<div class=\"row\"><div><h3>K-composition</h3><div id=\"comp-K\"></div></div><div><h3>Q-composition</h3>\
             <div id=\"comp-Q\"></div></div><div><h3>V-composition</h3><div id=\"comp-V\"></div></div>\
             <div id=\"comp-legend\" class=\"legend\"></div></div><div id=\"induction\"></div>",
        );
    }
    section(
        &mut s,
        "dla",
        "Direct logit attribution",
        "Each position's bar splits the attributed logit into the direct path, every head and the biases \
         (through the final LayerNorm with its recorded scale frozen); they stack to the model's logit \
         (black tick). Hover a bar for the pieces.",
        "<p class=\"note\" id=\"dla-what\"></p><div id=\"dla-chart\"></div><div id=\"dla-legend\" class=\"keys\"></div>\
         <p class=\"src\" id=\"dla-src\"></p>",
    );
    section(
        &mut s,
        "paths",
        "Term importance by path order",
        "With attention patterns and LN scales frozen, the logits split exactly into the direct path (order 0), \
         one term per head (order 1) and per virtual head h1 → h2 (order 2); bars: the loss increase on this \
         prompt when every term of an order (left) or one term (right) is dropped.",
        "<div class=\"row\"><div id=\"orders-chart\"></div><div id=\"terms-chart\"></div></div>\
         <p class=\"note\" id=\"paths-note\"></p><p class=\"src\" id=\"paths-src\"></p>",
    );
    if let Some(ab) = &r.ablation {
        let _ = write!(
            s,
            "<section id=\"ablation\"><h2>Ablation</h2>{}</section>",
            tables::ablation_section(ab)
        );
    }
    if let Some(c) = &r.compare {
        section(
            &mut s,
            "compare",
            &format!("Against {}", esc(&c.name)),
            &format!(
                "Each head of this model beside the same head of {} (crc {:08x}): weight-level scores, then \
                 behaviour on the report's {} prompts. Highlighted: differences above the threshold in the \
                 column's heading — where quantization changed the circuit.",
                esc(&c.name),
                c.crc,
                c.n_prompts
            ),
            &tables::compare_table(c),
        );
    }
    let _ = writeln!(
        s,
        "</main><footer class=\"note\">Generated by tinylens {}. One self-contained file: nothing is fetched.</footer>\
         <div id=\"tip\"></div><script type=\"application/json\" id=\"report-data\">{data}</script><script>",
        env!("CARGO_PKG_VERSION")
    );
    s.push_str("(function(){\n");
    for part in JS {
        s.push_str(part);
    }
    s.push_str("\n})();</script></body></html>\n");
    s
}
