//! What the HTML report shows, gathered from a model and its prompts — recorded on the
//! host through the probe/trace path, or taken from a device's trace — into the
//! [`ReportData`](super::html::ReportData) that [`html::render`](super::html::render)
//! draws.
//!
//! Size is bounded by construction, whatever the model and prompt: full token × token
//! circuits only for small vocabularies (else the top-k tokens by row norm), attention
//! patterns stored as one byte per causal entry and block-averaged when all prompts
//! together would exceed [`PATTERN_BUDGET`], and every other figure is O(heads ×
//! positions) or O(heads²).

use nalgebra::DMatrix;
use tinylens_core::{Config, Model, Normalization};

use super::ablation::{ablate_heads_from, baseline_and_means, AblationReport, Mode, Prompt};
use super::attribution::{expand, term_importance, Dla};
use super::circuits::{composition_baseline, composition_scores, full_ov, full_qk, ov};
use super::dynamic::attribute_with;
use super::factored::{to_f64, LowRank};
use super::heads::{detect_all, DetectOptions};
use super::html::render;
use super::html::{
    encode_patterns, CircuitMap, CompareData, CompareRow, CompositionData, DlaData, EigenData,
    ImportanceData, InductionTerm, PromptData, ReportData, WeightData,
};
use super::recorded::{analysis_probes, from_run, record, Recording};
use super::{copying_score, HeadDetection};
use crate::cli::storage_summary;
use crate::convert::{vocab_of, weights_from_model};
use crate::trace::decode_stream;
use crate::weights::Weights;
use crate::{Error, Result};

/// Bytes of attention patterns (one byte per causal entry) over all prompts before the
/// patterns are block-averaged.
pub const PATTERN_BUDGET: usize = 1_500_000;
/// Direct-logit-attribution values (rows × positions) over all prompts; prompts beyond
/// it show their attention but not their DLA.
pub const DLA_BUDGET: usize = 120_000;
/// Bytes of token × token circuit maps (one byte per entry) over all heads.
pub const CIRCUIT_BUDGET: usize = 600_000;
/// Largest number of tokens per side of a circuit map.
pub const MAX_CIRCUIT_TOKENS: usize = 64;
/// Residual-stream values (terms × positions × d_model, f64) of the path expansion the
/// report holds per prompt at most (the logits are streamed over the vocabulary, see
/// [`term_importance`]); larger prompts are left to `tinylens paths`. 16 M values are
/// 128 MB, held twice while the terms are stacked.
pub const EXPANSION_BUDGET: usize = 16_000_000;

/// Where one prompt's activations come from.
#[derive(Clone, Debug)]
pub struct PromptRecording {
    /// Shown in the prompt selector ("device run 3", "repeated tokens, seed 1", …).
    pub name: String,
    pub rec: Recording,
    /// Hooks the device recorded (empty for a host run).
    pub from_device: Vec<String>,
    /// Hooks the host re-ran because the trace did not hold them (every hook for a host
    /// run).
    pub from_host: Vec<String>,
}

/// The token whose logit the direct logit attribution splits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DlaTarget {
    /// Each position's next token (the last position: the model's prediction).
    #[default]
    NextToken,
    Token(u32),
    /// `logit(a) - logit(b)` at every position.
    Difference(u32, u32),
}

/// What goes into a report beyond the prompts' own analysis.
#[derive(Default)]
pub struct Extras {
    pub title: String,
    /// One line describing the model (shape, storage, processing).
    pub model_line: String,
    pub findings: Vec<String>,
    /// Head scores measured elsewhere (e.g. averaged over many sequences) and what on.
    pub detection: Option<(HeadDetection, String)>,
    pub ablation: Option<AblationReport>,
    pub dla_target: DlaTarget,
    /// Lines saying where the data came from (shown under the title).
    pub provenance: Vec<String>,
}

/// The hooks [`analysis_probes`] selects, spelled out per layer.
pub fn analysis_hooks(cfg: &Config) -> Vec<String> {
    let mut out = vec!["hook_embed".to_string(), "hook_pos_embed".to_string()];
    for l in 0..cfg.n_layers {
        out.push(format!("blocks.{l}.attn.hook_pattern"));
        out.push(format!("blocks.{l}.attn.hook_result"));
        if cfg.normalization != Normalization::None {
            out.push(format!("blocks.{l}.ln1.hook_scale"));
        }
    }
    if cfg.normalization != Normalization::None {
        out.push("ln_final.hook_scale".into());
    }
    out.push("logits".into());
    out
}

/// Records every prompt on the host (probes → trace → decode).
pub fn host_recordings(
    model: &Model<'_>,
    prompts: &[(String, Vec<u32>)],
) -> Result<Vec<PromptRecording>> {
    let probes = analysis_probes(model.config());
    let hooks = analysis_hooks(model.config());
    prompts
        .iter()
        .map(|(name, tokens)| {
            if tokens.len() < 2 {
                return Err(Error::Argument(format!(
                    "a report needs prompts of at least 2 tokens ({name} has {})",
                    tokens.len()
                )));
            }
            Ok(PromptRecording {
                name: name.clone(),
                rec: record(model, tokens, &probes)?,
                from_device: Vec::new(),
                from_host: hooks.clone(),
            })
        })
        .collect()
}

/// Every run of a device trace, checked against `model` (shape and CRC), with whatever
/// the trace did not record filled in by a host re-run of the same tokens.
pub fn trace_recordings(
    model: &Model<'_>,
    bytes: &[u8],
    what: &str,
) -> Result<Vec<PromptRecording>> {
    let (runs, stream) = decode_stream(bytes);
    if runs.is_empty() {
        return Err(Error::Trace(format!(
            "{what}: no run in the trace ({} good frames, {} bad)",
            stream.frames_ok, stream.bad_frames
        )));
    }
    let cfg = model.config();
    let hooks = analysis_hooks(cfg);
    let probes = analysis_probes(cfg);
    let mut out = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        if run.config != *cfg {
            return Err(Error::Trace(format!(
                "{what}: run {i} was recorded with a model of another shape than the given blob"
            )));
        }
        if run.model_crc != model.checksum() {
            return Err(Error::Trace(format!(
                "{what}: run {i} was recorded with model crc {:08x}, the given blob is {:08x}",
                run.model_crc,
                model.checksum()
            )));
        }
        let mut rec = from_run(run).map_err(|e| Error::Trace(format!("{what}: run {i}: {e}")))?;
        if rec.len() < 2 {
            continue;
        }
        let (mut from_device, mut from_host) = (Vec::new(), Vec::new());
        for h in &hooks {
            let have = if h == "logits" {
                rec.logits.is_some()
            } else {
                rec.hook(h).is_ok()
            };
            if have {
                from_device.push(h.clone());
            } else {
                from_host.push(h.clone());
            }
        }
        if !from_host.is_empty() {
            let host = record(model, &rec.tokens, &probes)?;
            for h in &from_host {
                if h == "logits" {
                    rec.logits = host.logits.clone();
                } else if let Some(v) = host.cache.get(h) {
                    rec.cache.insert(h.clone(), v.clone());
                }
            }
        }
        out.push(PromptRecording {
            name: format!("device run {} ({} tokens)", run.run_id, rec.len()),
            rec,
            from_device,
            from_host,
        });
    }
    if out.is_empty() {
        return Err(Error::Trace(format!(
            "{what}: no run with at least 2 positions"
        )));
    }
    Ok(out)
}

/// Where a figure's inputs came from, in words.
fn source_of(p: &PromptRecording, needs: &[&str]) -> String {
    let matches = |h: &String| needs.iter().any(|n| h.contains(n));
    let dev: Vec<&String> = p.from_device.iter().filter(|h| matches(h)).collect();
    let host: Vec<&String> = p.from_host.iter().filter(|h| matches(h)).collect();
    match (dev.is_empty(), host.is_empty()) {
        (_, true) => "from the device trace".into(),
        (true, false) if p.from_device.is_empty() => "host run".into(),
        (true, false) => "host re-run (the trace did not record these hooks)".into(),
        (false, false) => format!(
            "device trace, with {} re-run on the host (not recorded)",
            host.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Rows of a DLA (direct, each head, biases) per position, and its description.
fn dla_rows(
    w: &Weights,
    rec: &Recording,
    target: DlaTarget,
    label: &dyn Fn(u32) -> String,
) -> Result<DlaData> {
    let nl = w.cfg.n_layers;
    let nh = w.cfg.n_heads;
    let rows_of = |d: &Dla| -> Vec<Vec<f64>> {
        let mut rows = vec![d.direct.clone()];
        for l in 0..nl {
            for h in 0..nh {
                rows.push(d.heads[l][h].clone());
            }
        }
        rows.push(d.biases.clone());
        rows
    };
    #[allow(clippy::type_complexity)]
    let (rows, targets, model_logit, max_err, what): (
        Vec<Vec<f64>>,
        Vec<String>,
        Vec<f64>,
        f64,
        String,
    ) = match target {
        DlaTarget::NextToken => {
            let d = attribute_with(w, rec, None)?;
            (
                rows_of(&d),
                d.targets.iter().map(|t| label(*t)).collect(),
                d.model_logit.clone(),
                d.max_abs_residual_error,
                "the logit of each position's next token (the last position: the model's prediction)".to_string(),
            )
        }
        DlaTarget::Token(t) => {
            let d = attribute_with(w, rec, Some(t))?;
            (
                rows_of(&d),
                vec![label(t); d.tokens.len()],
                d.model_logit.clone(),
                d.max_abs_residual_error,
                format!("the logit of {} at every position", label(t)),
            )
        }
        DlaTarget::Difference(a, b) => {
            let da = attribute_with(w, rec, Some(a))?;
            let db = attribute_with(w, rec, Some(b))?;
            let (ra, rb) = (rows_of(&da), rows_of(&db));
            let rows = ra
                .iter()
                .zip(&rb)
                .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p - q).collect())
                .collect();
            (
                rows,
                vec![format!("{} − {}", label(a), label(b)); da.tokens.len()],
                da.model_logit
                    .iter()
                    .zip(&db.model_logit)
                    .map(|(p, q)| p - q)
                    .collect(),
                da.max_abs_residual_error + db.max_abs_residual_error,
                format!(
                    "the logit difference {} − {} at every position",
                    label(a),
                    label(b)
                ),
            )
        }
    };
    let mut names = vec!["direct".to_string()];
    for l in 0..nl {
        for h in 0..nh {
            names.push(format!("L{l}H{h}"));
        }
    }
    names.push("biases".into());
    Ok(DlaData {
        what,
        names,
        rows: rows
            .into_iter()
            .map(|r| r.into_iter().map(round3).collect())
            .collect(),
        targets,
        model_logit: model_logit.into_iter().map(round4).collect(),
        max_abs_error: max_err,
    })
}

/// `v` to 3 significant digits (the DLA bars; short JSON).
fn round3(v: f64) -> f64 {
    if !v.is_finite() || v == 0.0 {
        return 0.0;
    }
    let m = 10f64.powi(2 - v.abs().log10().floor() as i32);
    (v * m).round() / m
}

fn round4(v: f64) -> f64 {
    if !v.is_finite() {
        return 0.0;
    }
    let m = 10f64.powi(4 - (v.abs().max(1e-12).log10().floor() as i32).clamp(-8, 8) - 1);
    (v * m).round() / m
}

fn importance_of(
    w: &Weights,
    rec: &Recording,
    patterns: &[Vec<DMatrix<f32>>],
) -> Result<Result<ImportanceData, String>> {
    let (nl, nh) = (w.cfg.n_layers, w.cfg.n_heads);
    let n_virtual: usize = (0..nl).map(|l| nh * nh * (nl - 1 - l)).sum();
    let terms = 2 + nl * nh + n_virtual;
    let values = terms
        .saturating_mul(rec.len())
        .saturating_mul(w.cfg.d_model);
    if values > EXPANSION_BUDGET {
        return Ok(Err(format!(
            "not computed for this prompt: {terms} terms × {} positions × d_model {} is more \
             than the report's budget; `tinylens paths` computes it",
            rec.len(),
            w.cfg.d_model
        )));
    }
    let e = expand(w, &rec.tokens, patterns, rec.ln_scales()?.as_deref())?;
    let t = term_importance(&e);
    Ok(Ok(ImportanceData {
        loss_all_terms: t.loss_all_terms,
        loss_biases_only: t.loss_biases_only,
        orders: t
            .orders
            .iter()
            .map(|o| {
                (
                    o.order,
                    o.n_terms,
                    o.loss_increase_when_dropped,
                    o.loss_up_to,
                )
            })
            .collect(),
        terms: t
            .terms
            .iter()
            .take(12)
            .map(|s| (s.name.clone(), s.order, s.loss_increase_when_dropped))
            .collect(),
    }))
}

/// Row norms of a factored matrix `A B` (`||row_i||² = a_i^T (B B^T) a_i`).
fn row_norms(m: &LowRank) -> Vec<f64> {
    let g = m.b() * m.b().transpose();
    let ag = m.a() * &g;
    (0..m.nrows())
        .map(|i| ag.row(i).dot(&m.a().row(i)).max(0.0).sqrt())
        .collect()
}

/// The tokens a circuit map shows: all of them for a small vocabulary, else the `k`
/// with the largest row norm, in id order (so that the diagonal stays the diagonal).
fn map_tokens(m: &LowRank, k: usize) -> Vec<usize> {
    let n = m.nrows().min(m.ncols());
    if n <= k {
        return (0..n).collect();
    }
    let norms = row_norms(m);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|a, b| norms[*b].total_cmp(&norms[*a]));
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

fn circuit_map(m: &LowRank, k: usize) -> CircuitMap {
    let toks = map_tokens(m, k);
    let a = DMatrix::from_fn(toks.len(), m.a().ncols(), |i, j| m.a()[(toks[i], j)]);
    let b = DMatrix::from_fn(m.b().nrows(), toks.len(), |i, j| m.b()[(i, toks[j])]);
    let sub = a * b;
    CircuitMap::new(toks.iter().map(|t| *t as u32).collect(), &sub)
}

fn eigen_points(m: &LowRank) -> Result<(Vec<[f64; 2]>, f64)> {
    let ev = m.eigenvalues()?;
    let score = copying_score(&ev);
    Ok((
        ev.iter().map(|z| [round4(z.re), round4(z.im)]).collect(),
        if score.is_finite() { score } else { 0.0 },
    ))
}

/// The weight-only figures: full circuits, spectra, composition and the K-composed
/// induction term of the strongest pair.
pub fn weight_data(w: &Weights) -> Result<WeightData> {
    let (nl, nh) = (w.cfg.n_layers, w.cfg.n_heads);
    let square = w.cfg.d_vocab == w.cfg.d_vocab_out;
    let k = ((CIRCUIT_BUDGET / (2 * nl * nh).max(1)) as f64).sqrt() as usize;
    let k = k.clamp(8, MAX_CIRCUIT_TOKENS);
    let mut ov_maps = Vec::new();
    let mut qk_maps = Vec::new();
    let mut eigen = Vec::new();
    for l in 0..nl {
        let (mut ovl, mut qkl, mut el) = (Vec::new(), Vec::new(), Vec::new());
        for h in 0..nh {
            let fov = full_ov(w, l, h).factors(w);
            let fqk = full_qk(w, l, h).factors(w);
            ovl.push(circuit_map(&fov, k));
            qkl.push(circuit_map(&fqk, k));
            let (ov_pts, copying) = if square {
                eigen_points(&fov)?
            } else {
                (Vec::new(), 0.0)
            };
            let (qk_pts, qk_score) = eigen_points(&fqk)?;
            el.push(EigenData {
                ov: ov_pts,
                qk: qk_pts,
                copying,
                qk_score,
            });
        }
        ov_maps.push(ovl);
        qk_maps.push(qkl);
        eigen.push(el);
    }
    let composition = composition_scores(w)?;
    let baseline = composition_baseline(
        w.cfg.d_model,
        w.cfg.d_head,
        super::BASELINE_SAMPLES,
        super::BASELINE_SEED,
    );
    let induction = induction_term(w, &composition.k, k);
    Ok(WeightData {
        full_vocab: w.cfg.d_vocab <= k,
        map_tokens: k,
        ov: ov_maps,
        qk: qk_maps,
        eigen,
        composition: CompositionData::new(&composition, baseline.mean, baseline.std),
        induction,
    })
}

/// The K-composition term of the strongest K-composing pair h1 → h2: the query side of
/// h2 against keys that carry h1's output, `W_E W_Q^{h2} (W_E W_OV^{h1} W_K^{h2})^T`
/// (row = query token, column = the token h1 moved into the key position — for an
/// induction head, the token before the key).
fn induction_term(w: &Weights, k: &[Vec<Vec<Vec<f64>>>], tokens: usize) -> Option<InductionTerm> {
    let mut best: Option<(usize, usize, usize, usize, f64)> = None;
    for (l1, a) in k.iter().enumerate() {
        for (h1, b) in a.iter().enumerate() {
            for (l2, c) in b.iter().enumerate().skip(l1 + 1) {
                for (h2, s) in c.iter().enumerate() {
                    if s.is_finite() && best.is_none_or(|x| *s > x.4) {
                        best = Some((l1, h1, l2, h2, *s));
                    }
                }
            }
        }
    }
    let (l1, h1, l2, h2, score) = best?;
    let w_e = to_f64(&w.w_e);
    let q_side = &w_e * to_f64(&w.layers[l2].w_q[h2]);
    let ov1 = ov(w, l1, h1);
    let key_side = (&w_e * ov1.a()) * (ov1.b() * to_f64(&w.layers[l2].w_k[h2]));
    let term = LowRank::new(q_side, key_side.transpose());
    let (_, diag) = eigen_points(&term).ok()?;
    Some(InductionTerm {
        from: [l1, h1],
        to: [l2, h2],
        score,
        eigen_score: diag,
        map: circuit_map(&term, tokens),
    })
}

/// One prompt's figures.
fn prompt_data(
    w: &Weights,
    p: &PromptRecording,
    target: DlaTarget,
    label: &dyn Fn(u32) -> String,
    pool: usize,
    with_dla: bool,
) -> Result<PromptData> {
    let patterns = p.rec.patterns()?;
    let detection = detect_all(&patterns, &p.rec.tokens, DetectOptions::default())?;
    let dla = if with_dla {
        Some(dla_rows(w, &p.rec, target, label)?)
    } else {
        None
    };
    let importance = importance_of(w, &p.rec, &patterns)?;
    let (importance, importance_note) = match importance {
        Ok(i) => (Some(i), String::new()),
        Err(note) => (None, note),
    };
    Ok(PromptData {
        name: p.name.clone(),
        tokens: p.rec.tokens.clone(),
        labels: p.rec.tokens.iter().map(|t| label(*t)).collect(),
        patterns: encode_patterns(&patterns, pool),
        pool,
        prev: detection.previous_token,
        dup: detection.duplicate_token,
        ind: detection.induction,
        dla,
        importance,
        importance_note,
        source_patterns: source_of(p, &["hook_pattern"]),
        source_dla: source_of(
            p,
            &[
                "hook_embed",
                "hook_pos_embed",
                "hook_result",
                "ln_final",
                "logits",
            ],
        ),
        source_paths: source_of(p, &["hook_pattern", "hook_scale", "logits"]),
    })
}

/// Block size that keeps all prompts' patterns within [`PATTERN_BUDGET`] bytes.
pub fn pattern_pool(cfg: &Config, lens: &[usize]) -> usize {
    let heads = cfg.n_layers as usize * cfg.n_heads as usize;
    let bytes = |pool: usize| -> usize {
        lens.iter()
            .map(|n| {
                let m = n.div_ceil(pool);
                heads * m * (m + 1) / 2
            })
            .sum()
    };
    let mut pool = 1;
    while bytes(pool) > PATTERN_BUDGET && pool < 64 {
        pool += 1;
    }
    pool
}

/// A display string per token id: the blob's vocabulary, else `#id`.
pub fn display_vocab(model: &Model<'_>) -> Vec<String> {
    match vocab_of(model) {
        Some(v) => v,
        None => (0..model.config().d_vocab)
            .map(|t| format!("#{t}"))
            .collect(),
    }
}

/// One line describing a blob.
pub fn model_line(model: &Model<'_>) -> String {
    let c = model.config();
    let p = model.processing();
    let mut steps = Vec::new();
    for (on, name) in [
        (p.fold_ln, "fold_ln"),
        (p.center_writing_weights, "center_writing_weights"),
        (p.center_unembed, "center_unembed"),
        (p.fold_value_biases, "fold_value_biases"),
    ] {
        if on {
            steps.push(name);
        }
    }
    format!(
        "{} layers × {} heads, d_model {}, d_head {}, vocab {}, n_ctx {}, {:?}; weights {}; processing: {}; crc {:08x}",
        c.n_layers,
        c.n_heads,
        c.d_model,
        c.d_head,
        c.d_vocab,
        c.n_ctx,
        c.normalization,
        storage_summary(model),
        if steps.is_empty() { "none".to_string() } else { steps.join(", ") },
        model.checksum()
    )
}

/// Records `prompts` on the host, analyses them and the weights, and renders the HTML
/// (the demo's report).
pub fn build(
    model: &Model<'_>,
    prompts: &[(String, Vec<u32>)],
    mut extras: Extras,
) -> Result<String> {
    let recs = host_recordings(model, prompts)?;
    if extras.model_line.is_empty() {
        extras.model_line = model_line(model);
    }
    Ok(render(&gather(model, &recs, extras, None)?))
}

/// Everything the page shows, for `prompts` of `model`.
pub fn gather(
    model: &Model<'_>,
    prompts: &[PromptRecording],
    extras: Extras,
    compare: Option<(&Model<'_>, &str)>,
) -> Result<ReportData> {
    if prompts.is_empty() {
        return Err(Error::Argument("a report needs at least one prompt".into()));
    }
    let w = weights_from_model(model);
    let vocab = display_vocab(model);
    let label = |t: u32| -> String {
        vocab
            .get(t as usize)
            .cloned()
            .unwrap_or_else(|| format!("#{t}"))
    };
    let lens: Vec<usize> = prompts.iter().map(|p| p.rec.len()).collect();
    let pool = pattern_pool(model.config(), &lens);
    // DLA values (rows × positions) of every prompt up to DLA_BUDGET; the first prompt
    // always has its own.
    let rows = w.cfg.n_layers * w.cfg.n_heads + 2;
    let mut dla_values = 0;
    let prompt_data = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            dla_values += rows * p.rec.len();
            let with_dla = i == 0 || dla_values <= DLA_BUDGET;
            prompt_data(&w, p, extras.dla_target, &label, pool, with_dla)
        })
        .collect::<Result<Vec<_>>>()?;
    let weights = weight_data(&w)?;
    let compare = match compare {
        Some((other, name)) => Some(compare_data(model, &w, &weights, other, name, prompts)?),
        None => None,
    };
    let mut provenance = extras.provenance;
    if pool > 1 {
        provenance.push(format!(
            "Attention patterns are shown averaged over blocks of {pool} × {pool} positions to keep the \
             file small ({} prompts, {} positions in all).",
            prompts.len(),
            lens.iter().sum::<usize>()
        ));
    }
    Ok(ReportData {
        title: extras.title,
        model_line: extras.model_line,
        findings: extras.findings,
        provenance,
        n_layers: w.cfg.n_layers,
        n_heads: w.cfg.n_heads,
        d_vocab: w.cfg.d_vocab,
        vocab: if w.cfg.d_vocab <= 4096 {
            vocab.clone()
        } else {
            Vec::new()
        },
        prompts: prompt_data,
        weights,
        detection: extras.detection,
        ablation: extras.ablation,
        compare,
    })
}

fn mean_over_prompts(grids: impl Iterator<Item = Vec<Vec<f64>>>) -> Vec<Vec<f64>> {
    let mut sum: Vec<Vec<f64>> = Vec::new();
    let mut n = 0.0;
    for g in grids {
        if sum.is_empty() {
            sum = g;
        } else {
            for (a, b) in sum.iter_mut().zip(&g) {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
            }
        }
        n += 1.0;
    }
    for r in &mut sum {
        for x in r {
            *x /= n;
        }
    }
    sum
}

/// Previous-token and induction scores and the mean next-token DLA of every head
/// (over the positions with a real next token) of one recording.
fn behaviour(w: &Weights, rec: &Recording) -> Result<[Vec<Vec<f64>>; 3]> {
    let d = detect_all(&rec.patterns()?, &rec.tokens, DetectOptions::default())?;
    let dla = attribute_with(w, rec, None)?;
    let m = rec.len().saturating_sub(1).max(1) as f64;
    let heads = dla
        .heads
        .iter()
        .map(|l| {
            l.iter()
                .map(|v| v[..rec.len() - 1].iter().sum::<f64>() / m)
                .collect()
        })
        .collect();
    Ok([d.previous_token, d.induction, heads])
}

fn ablation_of(model: &Model<'_>, prompts: &[Prompt]) -> Result<Vec<Vec<f64>>> {
    let (baseline, means) = baseline_and_means(model, prompts, &|| {})?;
    let r = ablate_heads_from(
        model,
        prompts,
        Mode::Mean,
        Some(&means),
        Some(baseline),
        &[],
        true,
        &|| {},
    )?;
    Ok(r.loss_increase)
}

/// The quantized model against its float original, head by head, on the same prompts.
fn compare_data(
    model: &Model<'_>,
    w: &Weights,
    weights: &WeightData,
    other: &Model<'_>,
    name: &str,
    prompts: &[PromptRecording],
) -> Result<CompareData> {
    let (a, b) = (model.config(), other.config());
    if (a.n_layers, a.n_heads, a.d_model, a.d_head, a.d_vocab)
        != (b.n_layers, b.n_heads, b.d_model, b.d_head, b.d_vocab)
    {
        return Err(Error::Argument(format!(
            "--compare {name}: another shape ({} layers × {} heads, d_model {}, vocab {}) than the model ({} × {}, {}, {})",
            b.n_layers, b.n_heads, b.d_model, b.d_vocab, a.n_layers, a.n_heads, a.d_model, a.d_vocab
        )));
    }
    let (nl, nh) = (w.cfg.n_layers, w.cfg.n_heads);
    let w2 = weights_from_model(other);
    let weights2 = weight_data(&w2)?;
    let host2 = host_recordings(
        other,
        &prompts
            .iter()
            .map(|p| (p.name.clone(), p.rec.tokens.clone()))
            .collect::<Vec<_>>(),
    )?;
    let b1 = prompts
        .iter()
        .map(|p| behaviour(w, &p.rec))
        .collect::<Result<Vec<_>>>()?;
    let b2 = host2
        .iter()
        .map(|p| behaviour(&w2, &p.rec))
        .collect::<Result<Vec<_>>>()?;
    let ds: Vec<Prompt> = prompts
        .iter()
        .map(|p| Prompt {
            tokens: p.rec.tokens.clone(),
            repeat_from: None,
        })
        .collect();
    let abl1 = ablation_of(model, &ds)?;
    let abl2 = ablation_of(other, &ds)?;
    let mean =
        |b: &[[Vec<Vec<f64>>; 3]], i: usize| mean_over_prompts(b.iter().map(|x| x[i].clone()));
    let prev = (mean(&b1, 0), mean(&b2, 0));
    let ind = (mean(&b1, 1), mean(&b2, 1));
    let dla = (mean(&b1, 2), mean(&b2, 2));
    let kin = |wd: &WeightData, l: usize, h: usize| -> f64 {
        let k = &wd.composition.k;
        let mut m = 0.0f64;
        for row in k.iter().take(l) {
            for by in row {
                m = m.max(by[l][h] - wd.composition.baseline);
            }
        }
        m
    };
    let mut rows = Vec::new();
    for l in 0..nl {
        for h in 0..nh {
            let e1 = &weights.eigen[l][h];
            let e2 = &weights2.eigen[l][h];
            rows.push(CompareRow {
                head: [l, h],
                values: vec![
                    (e1.copying, e2.copying),
                    (e1.qk_score, e2.qk_score),
                    (kin(weights, l, h), kin(&weights2, l, h)),
                    (prev.0[l][h], prev.1[l][h]),
                    (ind.0[l][h], ind.1[l][h]),
                    (dla.0[l][h], dla.1[l][h]),
                    (abl1[l][h], abl2[l][h]),
                ],
            });
        }
    }
    Ok(CompareData {
        name: name.to_string(),
        crc: other.checksum(),
        metrics: vec![
            "copying",
            "QK Σλ/Σ|λ|",
            "K-comp in",
            "previous-token",
            "induction",
            "mean DLA",
            "ablation Δloss",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        thresholds: vec![0.1, 0.1, 0.05, 0.1, 0.1, 0.25, 0.05],
        rows,
        eigen: weights2.eigen,
        n_prompts: prompts.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_of_many_long_prompts_stay_within_the_budget() {
        let mut cfg = *Model::from_bytes(crate::commands::demo::DEMO_BLOB)
            .unwrap()
            .config();
        cfg.n_layers = 8;
        cfg.n_heads = 16;
        let lens = vec![256; 16];
        let pool = pattern_pool(&cfg, &lens);
        let m = 256usize.div_ceil(pool);
        assert!(16 * 128 * m * (m + 1) / 2 <= PATTERN_BUDGET, "pool {pool}");
        assert!(pool > 1);
        // One short prompt is exact.
        assert_eq!(pattern_pool(&cfg, &[31]), 1);
    }

    #[test]
    fn large_circuits_show_the_tokens_with_the_largest_rows() {
        // Rows 3 and 7 of A B are the largest; the map keeps them, in id order.
        let a = DMatrix::from_fn(10, 2, |i, j| match (i, j) {
            (3, 0) => 5.0,
            (7, 1) => -4.0,
            _ => 0.1,
        });
        let b = DMatrix::from_fn(2, 10, |i, j| if i == j % 2 { 1.0 } else { 0.5 });
        let m = LowRank::new(a.clone(), b.clone());
        let dense = &a * &b;
        let norms = row_norms(&m);
        for (i, n) in norms.iter().enumerate() {
            assert!((n - dense.row(i).norm()).abs() < 1e-9);
        }
        assert_eq!(map_tokens(&m, 2), vec![3, 7]);
        assert_eq!(map_tokens(&m, 64).len(), 10);
        let c = circuit_map(&m, 2);
        assert_eq!(c.tokens, vec![3, 7]);
    }

    #[test]
    fn three_significant_digits() {
        assert_eq!(round3(1234.5), 1230.0);
        assert_eq!(round3(-0.012345), -0.0123);
        assert_eq!(round3(f64::NAN), 0.0);
    }
}
