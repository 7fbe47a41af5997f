//! `tinylens convert`: TransformerLens weights → model blob.

use std::path::PathBuf;

use clap::Args;

use crate::convert::{core_config, QuantPlan};
use crate::quantize::{self, budget, calibration, survival};
use crate::tokenizer::{append_trailer, TextTokenizer};
use crate::{cli, tl, Error, Result};
use tinylens_core::StorageKind;

/// Calibration and flash-budget options of `tinylens convert`.
#[derive(Debug, Args)]
pub struct CalibrationArgs {
    /// Calibrate the int8/int4 rounding (GPTQ through the device's numerics) on FILE
    /// (one prompt per line: comma-separated token ids, as `ablate --data` reads, or,
    /// with --tokenizer, text), or on `repeated`: the built-in random tokens repeated
    /// twice.
    #[arg(long, value_name = "FILE|repeated")]
    pub calibrate: Option<String>,
    /// Seed of `--calibrate repeated` (sequences use seeds S, S+1, ...).
    #[arg(long, default_value_t = 0)]
    pub calibrate_seed: u64,
    /// Sequences of `--calibrate repeated`.
    #[arg(long, default_value_t = calibration::REPEATED_SEQUENCES)]
    pub calibrate_sequences: usize,
    /// With `--quant auto`: the flash the whole blob must fit in (e.g. 96KiB, 40KiB,
    /// 1MiB, 64KB, or bytes).
    #[arg(long, value_name = "SIZE")]
    pub flash_budget: Option<String>,
}

/// The command line's defaults (no calibration, no budget).
impl Default for CalibrationArgs {
    fn default() -> Self {
        CalibrationArgs {
            calibrate: None,
            calibrate_seed: 0,
            calibrate_sequences: calibration::REPEATED_SEQUENCES,
            flash_budget: None,
        }
    }
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// TransformerLens state_dict saved with safetensors.
    #[arg(long)]
    pub weights: PathBuf,
    /// TransformerLens config (`cfg.to_dict()`) as JSON.
    #[arg(long)]
    pub config: PathBuf,
    /// Storage of the matrices: f32, f16, int8 or int4 (int4 keeps W_E, W_pos, W_U in int8
    /// unless --embed-quant says otherwise), or `auto`: a kind per matrix, chosen to
    /// minimise the KL on the calibration data within --flash-budget.
    #[arg(long, default_value = "int8")]
    pub quant: String,
    /// Storage of W_E, W_pos and W_U (default: follows --quant).
    #[arg(long)]
    pub embed_quant: Option<String>,
    /// Columns per int4 scale for --quant int4 (and --embed-quant int4): 16, 32 (the
    /// default), 64 or 128. Smaller groups cost more flash (one f16 scale per group and
    /// row) and follow the weights more closely; `int4/g16` etc. say the same per
    /// option, and --quant auto chooses the group per matrix.
    #[arg(long, value_name = "N")]
    pub int4_group: Option<String>,
    /// Token strings, one per line (line i is token i), stored in the blob.
    #[arg(long, conflicts_with = "tokenizer")]
    pub vocab: Option<PathBuf>,
    /// A Hugging Face tokenizer.json: the blob's vocabulary becomes its token strings
    /// (each token decoded alone, TL's `to_str_tokens`), and the tokenizer itself goes
    /// into the blob's host-only trailer, so `--text` works with no other file (the
    /// device flashes only the blob's `total_len` bytes).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    #[arg(long)]
    pub fold_ln: bool,
    #[arg(long)]
    pub center_writing_weights: bool,
    #[arg(long)]
    pub center_unembed: bool,
    #[arg(long)]
    pub fold_value_biases: bool,
    /// Output blob.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub calibration: CalibrationArgs,
}

/// `plan` with every int4 kind at `group` (`--int4-group`), which needs an int4 kind
/// named without a group.
fn with_int4_group(
    plan: QuantPlan,
    a: &ConvertArgs,
    group: tinylens_core::Int4Group,
) -> Result<QuantPlan> {
    let names = [Some(&a.quant), a.embed_quant.as_ref()];
    if names.iter().flatten().any(|n| n.starts_with("int4/")) {
        return Err(Error::Argument(
            "--int4-group and a kind `int4/gN` both give the group: give it once".into(),
        ));
    }
    let set = |k: StorageKind| match k {
        StorageKind::Int4 { .. } => StorageKind::Int4 { group },
        k => k,
    };
    if plan.attention.int4_group().is_none() && plan.embeddings.int4_group().is_none() {
        return Err(Error::Argument(
            "--int4-group goes with --quant int4 (or --embed-quant int4)".into(),
        ));
    }
    Ok(QuantPlan {
        attention: set(plan.attention),
        embeddings: set(plan.embeddings),
    })
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let auto = a.quant == "auto";
    let plan = if auto {
        if a.embed_quant.is_some() {
            return Err(Error::Argument(
                "--embed-quant does not go with --quant auto (auto chooses every matrix)".into(),
            ));
        }
        if a.int4_group.is_some() {
            return Err(Error::Argument(
                "--int4-group does not go with --quant auto (auto chooses the group per matrix)"
                    .into(),
            ));
        }
        None
    } else {
        let mut plan = QuantPlan::for_kind(cli::parse_kind(&a.quant)?);
        if let Some(e) = &a.embed_quant {
            plan.embeddings = cli::parse_kind(e)?;
        }
        if let Some(g) = &a.int4_group {
            let group = cli::parse_int4_group(g)?;
            plan = with_int4_group(plan, &a, group)?;
        }
        Some(plan)
    };
    let c = &a.calibration;
    let budget = match (&c.flash_budget, auto) {
        (Some(b), true) => budget::parse_size(b)?,
        (None, true) => {
            return Err(Error::Argument(
                "--quant auto needs --flash-budget SIZE (e.g. 96KiB)".into(),
            ))
        }
        (Some(_), false) => {
            return Err(Error::Argument(
                "--flash-budget goes with --quant auto".into(),
            ))
        }
        (None, false) => 0,
    };
    let mut w = tl::load_files(&a.weights, &a.config)?;
    let tokenizer = a
        .tokenizer
        .as_deref()
        .map(TextTokenizer::from_file)
        .transpose()?;
    let vocab = match &tokenizer {
        Some(t) => {
            t.check_fits(w.cfg.d_vocab as u32)?;
            Some(t.token_strings(w.cfg.d_vocab as u32))
        }
        None => a.vocab.as_deref().map(cli::read_vocab).transpose()?,
    };
    let requested = tl::Processing {
        fold_ln: a.fold_ln,
        center_writing_weights: a.center_writing_weights,
        center_unembed: a.center_unembed,
        fold_value_biases: a.fold_value_biases,
    };
    let processing = tl::process(&mut w, requested)?;
    let cfg = core_config(&w.cfg)?;
    let calibration = match c.calibrate.as_deref() {
        None => None,
        Some("repeated") => Some(calibration::repeated(
            &cfg,
            vocab.as_deref(),
            c.calibrate_seed,
            c.calibrate_sequences,
        )?),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            // Token ids; or, with --tokenizer, text (one prompt per line).
            let at = |e: Error| match e {
                Error::Argument(m) => Error::Argument(format!("--calibrate {path}: {m}")),
                e => e,
            };
            Some(match (calibration::from_text(&text, &cfg), &tokenizer) {
                (Ok(p), _) => p,
                (Err(_), Some(t)) => calibration::from_text_lines(&text, t, &cfg).map_err(at)?,
                (Err(e), None) => return Err(at(e)),
            })
        }
    };
    // Auto and the survival report need data; without --calibrate they use the
    // built-in set (the rounding stays round-to-nearest unless --calibrate is given).
    let eval_prompts = match &calibration {
        Some(p) => p.clone(),
        None => calibration::repeated(
            &cfg,
            vocab.as_deref(),
            c.calibrate_seed,
            c.calibrate_sequences,
        )?,
    };
    let (kinds, auto_plan) = match plan {
        Some(plan) => (quantize::kinds_for(&w, plan)?, None),
        None => {
            let p = budget::plan(&w, processing, vocab.as_deref(), &eval_prompts, budget)?;
            (p.kinds.clone(), Some(p))
        }
    };
    let q = quantize::quantize(
        &w,
        processing,
        vocab.as_deref(),
        &kinds,
        if auto {
            Some(&eval_prompts)
        } else {
            calibration.as_deref()
        },
    )?;
    if let Some(p) = &auto_plan {
        if q.blob.len() > p.budget_bytes {
            return Err(Error::Argument(format!(
                "internal error: the auto plan made {} bytes, over the budget of {}",
                q.blob.len(),
                p.budget_bytes
            )));
        }
    }
    let float = quantize::quantize(
        &w,
        processing,
        None,
        &vec![tinylens_core::StorageKind::F32; kinds.len()],
        None,
    )?;
    let surv = survival::survival(
        &tinylens_core::Model::from_bytes(&float.blob)?,
        &tinylens_core::Model::from_bytes(&q.blob)?,
        &eval_prompts,
    )?;
    let (mut blob, reports) = (q.blob, q.tensors);
    let device_bytes = blob.len();
    if let Some(t) = &tokenizer {
        blob = append_trailer(&blob, t.json())?;
    }
    cli::write_output(&a.output, &blob)?;
    let params: usize = reports.iter().map(|r| r.shape[0] * r.shape[1]).sum();
    let skipped: Vec<&str> = [
        ("fold_ln", requested.fold_ln && !processing.fold_ln),
        (
            "center_writing_weights",
            requested.center_writing_weights && !processing.center_writing_weights,
        ),
        (
            "center_unembed",
            requested.center_unembed && !processing.center_unembed,
        ),
        (
            "fold_value_biases",
            requested.fold_value_biases && !processing.fold_value_biases,
        ),
    ]
    .iter()
    .filter(|(_, s)| *s)
    .map(|(n, _)| *n)
    .collect();
    if a.json {
        let j = serde_json::json!({
            "output": a.output,
            "blob_bytes": blob.len(),
            "device_bytes": device_bytes,
            "parameters": params,
            "config": crate::tl::config_to_json(&w.cfg).parse::<serde_json::Value>().unwrap_or_default(),
            "processing": {
                "fold_ln": processing.fold_ln,
                "center_writing_weights": processing.center_writing_weights,
                "center_unembed": processing.center_unembed,
                "fold_value_biases": processing.fold_value_biases,
            },
            "skipped_processing": skipped,
            "tensors": reports,
            "calibration": calibration.as_ref().map(|p| serde_json::json!({
                "source": c.calibrate,
                "sequences": p.len(),
                "tokens": p.iter().map(|t| t.len()).sum::<usize>(),
                "rounding": q.rounding,
            })),
            "auto": auto_plan,
            "survival": surv,
        });
        outln!("{j:#}")?;
    } else {
        outln!(
            "{:<28} {:>9} {:>12} {:>10} {:>12} {:>10}",
            "tensor",
            "kind",
            "shape",
            "bytes",
            "max |err|",
            "rel RMS"
        )?;
        for r in &reports {
            outln!(
                "{:<28} {:>9} {:>12} {:>10} {:>12.3e} {:>10.3e}",
                r.name,
                r.kind,
                format!("{}x{}", r.shape[0], r.shape[1]),
                r.bytes,
                r.max_abs_error,
                r.relative_rms_error
            )?;
        }
        for r in &q.rounding {
            let how = match r.damping {
                Some(d) => format!(
                    "{} (damping {d}, target: {})",
                    r.method.name(),
                    if r.compensates_upstream {
                        "float outputs"
                    } else {
                        "device inputs"
                    }
                ),
                None => "nearest (GPTQ did not help)".to_string(),
            };
            outln!(
                "  {:<26} {:>9} {how}; output error {:.3} of nearest's",
                r.name,
                r.kind,
                r.relative_loss
            )?;
        }
        if let Some(p) = &auto_plan {
            outln!(
                "auto: {} of a {}-byte flash budget; predicted KL (sum of per-matrix KLs) {:.5}",
                p.blob_bytes,
                p.budget_bytes,
                p.predicted_kl
            )?;
            for m in &p.matrices {
                let opts: Vec<String> = m
                    .options
                    .iter()
                    .map(|o| format!("{} {}B KL {:.2e}", o.kind, o.bytes, o.kl))
                    .collect();
                outln!("  {:<26} {:>9}   [{}]", m.name, m.chosen, opts.join(", "))?;
            }
        }
        out!("{}", survival::text(&surv))?;
        for (l, h) in &surv.lost_induction_heads {
            note!("warning: induction head L{l}H{h} fell below 0.5 after quantization");
        }
        for s in &skipped {
            note!("note: {s} was requested but does not apply to this model (TransformerLens skips it too)");
        }
        outln!(
            "wrote {} ({} bytes, {} parameters, {:.2} bytes/parameter)",
            a.output.display(),
            device_bytes,
            params,
            device_bytes as f64 / params.max(1) as f64
        )?;
        if blob.len() > device_bytes {
            outln!(
                "  + host-only trailer of {} bytes (the tokenizer; not flashed)",
                blob.len() - device_bytes
            )?;
        }
    }
    Ok(())
}
