//! `tinylens ablate`: the loss increase when each head is ablated (zero, or its mean
//! result over the data set), over a data set, with a progress bar.
//!
//! Data (`--data FILE`): one prompt per line, token ids separated by commas and/or
//! whitespace (`0, 12, 7` or `0 12 7`); blank lines and lines starting with `#` are
//! skipped; every prompt has 2 to n_ctx tokens. Or `--repeated N`: `--batch` sequences
//! of N random tokens repeated twice (TransformerLens's induction test), for which the
//! loss on the second copy is reported as well.

use std::path::PathBuf;

use clap::Args;
use tinylens_core::intervene::HeadRef;
use tinylens_core::Model;

use crate::analysis::ablation::{
    ablate_heads_from, baseline_and_means, runs_needed, AblationReport, Mode, Prompt,
};
use crate::analysis::progress::progress_bar;
use crate::cli::grid_text;
use crate::export::Cache;
use crate::{cli, prompts, Error, Result};

#[derive(Debug, Args)]
pub struct AblateArgs {
    /// Model blob.
    pub model: PathBuf,
    /// Prompts: one per line, token ids separated by commas and/or spaces (`0, 12, 7`);
    /// blank lines and lines starting with `#` are skipped; 2 to n_ctx tokens each.
    #[arg(long, conflicts_with = "repeated")]
    pub data: Option<PathBuf>,
    /// Prompts as text: one per line, each tokenized as `--text` is (blank lines skipped).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["data", "repeated"])]
    pub text_data: Option<PathBuf>,
    /// With --text-data: exactly one BOS before each line (TransformerLens's `to_tokens`).
    #[arg(long)]
    pub prepend_bos: bool,
    /// The tokenizer for --text-data (default: the blob's, from `convert --tokenizer`).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// N random tokens repeated twice, --batch times.
    #[arg(long, value_name = "N")]
    pub repeated: Option<usize>,
    /// Sequences for --repeated.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Seed of the first --repeated sequence (the others: S+1, S+2, ...).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// BOS before --repeated sequences: a token id, `none` or `auto`.
    #[arg(long, default_value = "auto")]
    pub bos: String,
    /// zero: a head's result becomes 0; mean: its mean over the data set.
    #[arg(long, default_value = "mean")]
    pub mode: String,
    /// Also ablate these heads together, e.g. `1.0,1.2` (repeatable).
    #[arg(long, value_name = "L.H,...")]
    pub together: Vec<String>,
    /// Write the mean head results (safetensors `hook_result_mean` [n_layers, n_heads,
    /// d_model]) for `tinylens run --means`.
    #[arg(long)]
    pub save_means: Option<PathBuf>,
    /// Print the report as JSON (loss_increase [layer][head], baseline, heads, groups).
    #[arg(long)]
    pub json: bool,
}

/// Parses `1.0,1.2` into heads.
pub fn parse_heads(s: &str, cfg: &tinylens_core::Config) -> Result<Vec<HeadRef>> {
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            let x = x.trim().trim_start_matches('L');
            let bad = || Error::Argument(format!("`{x}` is not a head (expected L.H, e.g. 1.0)"));
            let (l, h) = x.split_once(['.', 'H']).ok_or_else(bad)?;
            let (l, h): (u16, u16) = (l.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
            if l as u32 >= cfg.n_layers || h as u32 >= cfg.n_heads {
                return Err(Error::Argument(format!(
                    "head {l}.{h} does not exist ({} layers x {} heads)",
                    cfg.n_layers, cfg.n_heads
                )));
            }
            Ok((l, h))
        })
        .collect()
}

fn prompts(a: &AblateArgs, model: &Model<'_>, blob: &[u8]) -> Result<Vec<Prompt>> {
    match (&a.data, &a.text_data, a.repeated) {
        (Some(path), None, None) => prompts::data_file(path, model),
        (None, Some(path), None) => {
            let tok =
                crate::tokenizer::for_blob(blob, a.tokenizer.as_deref())?.ok_or_else(|| {
                    Error::Argument(
                    "--text-data needs a tokenizer: convert the blob with --tokenizer, or give \
                     --tokenizer FILE"
                        .into(),
                )
                })?;
            prompts::text_file(path, &tok, a.prepend_bos, model)
        }
        (None, None, Some(n)) => prompts::repeated(n, a.batch, a.seed, &a.bos, model),
        _ => Err(Error::Argument(
            "give the data set with --text-data FILE, --data FILE or --repeated N".into(),
        )),
    }
}

/// Writes `[n_layers, n_heads, d_model]` means as safetensors `hook_result_mean`.
pub fn save_means(
    path: &std::path::Path,
    cfg: &tinylens_core::Config,
    means: &[f32],
) -> Result<()> {
    let mut cache = Cache::new();
    cache.insert(
        "hook_result_mean".into(),
        (
            vec![
                cfg.n_layers as usize,
                cfg.n_heads as usize,
                cfg.d_model as usize,
            ],
            means.to_vec(),
        ),
    );
    cli::write_output(path, &crate::export::to_safetensors(&cache)?)
}

/// Runs the ablations `a` asks for (what `tinylens ablate --json` prints).
pub fn report(a: &AblateArgs) -> Result<AblationReport> {
    let bytes = cli::read_input(&a.model)?;
    let model = Model::from_bytes(&bytes)?;
    let cfg = *model.config();
    let mode = match a.mode.as_str() {
        "zero" => Mode::Zero,
        "mean" => Mode::Mean,
        m => return Err(Error::Argument(format!("--mode `{m}`: zero or mean"))),
    };
    let data = prompts(a, &model, &bytes)?;
    let groups = a
        .together
        .iter()
        .map(|g| parse_heads(g, &cfg))
        .collect::<Result<Vec<_>>>()?;
    // The means and the unablated losses come from one pass over the data, in memory.
    let (baseline, means) = if mode == Mode::Mean || a.save_means.is_some() {
        let pb = progress_bar(data.len() as u64, "baseline and means", "prompts");
        let (b, m) = baseline_and_means(&model, &data, &|| pb.inc(1))?;
        pb.finish_and_clear();
        (Some(b), Some(m))
    } else {
        (None, None)
    };
    if let (Some(path), Some(m)) = (&a.save_means, &means) {
        save_means(path, &cfg, m)?;
    }
    let runs = runs_needed(
        data.len(),
        cfg.n_layers as usize,
        cfg.n_heads as usize,
        groups.len(),
    ) - if baseline.is_some() {
        data.len() as u64
    } else {
        0
    };
    let pb = progress_bar(runs, "ablating", "runs");
    let r = ablate_heads_from(
        &model,
        &data,
        mode,
        means.as_deref(),
        baseline,
        &groups,
        true,
        &|| pb.inc(1),
    )?;
    pb.finish_and_clear();
    Ok(r)
}

pub fn run(a: AblateArgs) -> Result<()> {
    let r = report(&a)?;
    if let Some(p) = &a.save_means {
        note!("mean head results -> {}", p.display());
    }
    if a.json {
        cli::print_json(&r)?;
        return Ok(());
    }
    outln!(
        "{} ablation over {} prompts ({} predictions): baseline loss {:.4}{}",
        a.mode,
        r.n_prompts,
        r.n_predictions,
        r.baseline.all,
        r.baseline
            .repeat
            .map_or(String::new(), |v| format!(", on the second copies {v:.4}"))
    )?;
    outln!(
        "\n{}",
        grid_text(
            "loss increase (all positions)",
            &r.loss_increase,
            |v| format!("{v:+.4}")
        )
        .trim_end()
    )?;
    if let Some(g) = &r.repeat_loss_increase {
        outln!(
            "\n{}",
            grid_text("loss increase on the second copies", g, |v| format!(
                "{v:+.4}"
            ))
            .trim_end()
        )?;
    }
    let mut order: Vec<&crate::analysis::ablation::HeadAblation> = r.heads.iter().collect();
    order.sort_by(|x, y| {
        let k =
            |h: &crate::analysis::ablation::HeadAblation| h.repeat_increase.unwrap_or(h.increase);
        k(y).total_cmp(&k(x))
    });
    let ranked: Vec<String> = order
        .iter()
        .take(4)
        .map(|h| {
            format!(
                "L{}H{} {:+.3}",
                h.heads[0][0],
                h.heads[0][1],
                h.repeat_increase.unwrap_or(h.increase)
            )
        })
        .collect();
    outln!("\nmost important heads: {}", ranked.join(", "))?;
    for g in &r.groups {
        let names: Vec<String> = g.heads.iter().map(|[l, h]| format!("L{l}H{h}")).collect();
        outln!(
            "together {}: loss {:.4} ({:+.4}){}",
            names.join("+"),
            g.loss.all,
            g.increase,
            g.loss
                .repeat
                .zip(g.repeat_increase)
                .map_or(String::new(), |(v, d)| format!(
                    ", second copies {v:.4} ({d:+.4})"
                ))
        )?;
    }
    Ok(())
}
