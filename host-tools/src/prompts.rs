//! Where prompts come from — the one place every command gets its token sequences:
//! token ids (`--tokens 0,5,7`), text (`--text "..."`, tokenized by the blob's tokenizer
//! or `--tokenizer tokenizer.json`, see [`crate::tokenizer`]), TransformerLens's
//! induction test (`--repeated N`: random tokens repeated twice, after BOS), data files
//! (one prompt per line, token ids or text) and the runs of recorded traces. Commands flatten [`PromptArgs`] into their arguments (or,
//! with their own flags, call the functions below) and never build prompts themselves.

use std::path::{Path, PathBuf};

use clap::Args;
use tinylens_core::Model;

use crate::analysis::ablation::{parse_data, repeated_dataset, Prompt};
use crate::analysis::recorded::{from_run, Recording};
use crate::tokenizer::{self, TextTokenizer};
use crate::trace::read_run;
use crate::{cli, Error, Result};

/// Where the prompt comes from (`run`, `heads`, `attribute`, `paths`, `report`).
#[derive(Debug, Clone, Args)]
pub struct PromptArgs {
    /// Prompt token ids, e.g. `0,5,7` or `"0 5 7"`.
    #[arg(long, conflicts_with_all = ["repeated", "text"])]
    pub tokens: Option<String>,
    /// Prompt text, tokenized as the tokenizer's `encode(text, add_special_tokens=True)`
    /// does (a BOS only if its post-processor adds one; see --prepend-bos).
    #[arg(long, conflicts_with = "repeated")]
    pub text: Option<String>,
    /// With --text: exactly one BOS before the text, as TransformerLens's `to_tokens` does.
    #[arg(long)]
    pub prepend_bos: bool,
    /// The tokenizer for --text (a Hugging Face tokenizer.json); default: the one stored
    /// in the blob by `convert --tokenizer`.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// N random tokens repeated twice (TransformerLens's induction test), after BOS.
    #[arg(long, value_name = "N")]
    pub repeated: Option<usize>,
    /// Seed of the random tokens (with several sequences: seeds S, S+1, ...).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// BOS before --repeated sequences: a token id, `none`, or `auto` (token 0 when the
    /// blob's vocabulary spells it like `<bos>`, else none).
    #[arg(long, default_value = "auto")]
    pub bos: String,
}

impl Default for PromptArgs {
    /// No prompt yet, with the command line's defaults (seed 0, BOS `auto`).
    fn default() -> Self {
        PromptArgs {
            tokens: None,
            text: None,
            prepend_bos: false,
            tokenizer: None,
            repeated: None,
            seed: 0,
            bos: "auto".into(),
        }
    }
}

impl PromptArgs {
    /// `--tokens spec`.
    pub fn from_tokens(spec: &str) -> Self {
        PromptArgs {
            tokens: Some(spec.into()),
            ..Default::default()
        }
    }

    /// `--text text`.
    pub fn from_text(text: &str) -> Self {
        PromptArgs {
            text: Some(text.into()),
            ..Default::default()
        }
    }

    /// `--repeated n --seed seed`.
    pub fn from_repeated(n: usize, seed: u64) -> Self {
        PromptArgs {
            repeated: Some(n),
            seed,
            ..Default::default()
        }
    }

    /// `batch` prompts (only --repeated makes more than one) for `model`, read from the
    /// blob file `blob` (whose host-only trailer may hold the tokenizer).
    pub fn prompts(&self, model: &Model<'_>, blob: &[u8], batch: usize) -> Result<Vec<Prompt>> {
        let one = |tokens| {
            Ok(vec![Prompt {
                tokens,
                repeat_from: None,
            }])
        };
        match (&self.tokens, &self.text, self.repeated) {
            (Some(t), None, None) => one(tokens(t, model)?),
            (None, Some(text), None) => {
                let tok = self.tokenizer(blob)?.ok_or_else(no_tokenizer)?;
                one(text_tokens(&tok, text, self.prepend_bos, model)?)
            }
            (None, None, Some(n)) => repeated(n, batch, self.seed, &self.bos, model),
            _ => Err(Error::Argument(
                "give the prompt with --text \"...\", --tokens or --repeated N".into(),
            )),
        }
    }

    /// The one prompt of a single-sequence analysis.
    pub fn prompt(&self, model: &Model<'_>, blob: &[u8]) -> Result<Prompt> {
        Ok(self.prompts(model, blob, 1)?.remove(0))
    }

    /// The tokenizer: --tokenizer, else the blob's.
    pub fn tokenizer(&self, blob: &[u8]) -> Result<Option<TextTokenizer>> {
        tokenizer::for_blob(blob, self.tokenizer.as_deref())
    }
}

fn no_tokenizer() -> Error {
    Error::Argument(
        "--text needs a tokenizer: convert the blob with --tokenizer tokenizer.json, or give \
         --tokenizer FILE"
            .into(),
    )
}

/// `text` tokenized for `model` (see [`TextTokenizer::to_tokens`]), checked against its
/// vocabulary and context.
pub fn text_tokens(
    tok: &TextTokenizer,
    text: &str,
    prepend_bos: bool,
    model: &Model<'_>,
) -> Result<Vec<u32>> {
    let ids = tok.to_tokens(text, prepend_bos)?;
    check(&ids, model)?;
    Ok(ids)
}

/// Token ids in range and within the context.
pub fn check(tokens: &[u32], model: &Model<'_>) -> Result<()> {
    let cfg = model.config();
    if tokens.is_empty() {
        return Err(Error::Argument("the prompt has no tokens".into()));
    }
    if let Some(bad) = tokens.iter().find(|t| **t >= cfg.d_vocab) {
        return Err(Error::Argument(format!(
            "token {bad} is out of range (d_vocab = {})",
            cfg.d_vocab
        )));
    }
    if tokens.len() > cfg.n_ctx as usize {
        return Err(Error::Argument(format!(
            "{} tokens exceed the model's context of {}",
            tokens.len(),
            cfg.n_ctx
        )));
    }
    Ok(())
}

/// Token ids (`0,5,7` or `0 5 7`), checked against the model's vocabulary and context.
pub fn tokens(spec: &str, model: &Model<'_>) -> Result<Vec<u32>> {
    let tokens = cli::parse_tokens(spec)?;
    check(&tokens, model)?;
    Ok(tokens)
}

/// `batch` sequences of `n` random tokens repeated twice (seeds `seed..`), after the BOS
/// that `bos` names (see [`resolve_bos`]).
pub fn repeated(
    n: usize,
    batch: usize,
    seed: u64,
    bos: &str,
    model: &Model<'_>,
) -> Result<Vec<Prompt>> {
    let cfg = model.config();
    repeated_dataset(
        n,
        batch,
        seed,
        resolve_bos(bos, model)?,
        cfg.d_vocab,
        cfg.n_ctx,
    )
}

/// A data file: one prompt per line, token ids separated by commas and/or whitespace;
/// blank lines and lines starting with `#` are skipped; 2 to n_ctx tokens each.
pub fn data_file(path: &Path, model: &Model<'_>) -> Result<Vec<Prompt>> {
    let cfg = model.config();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_data(&text, cfg.d_vocab, cfg.n_ctx)
        .map_err(|e| Error::Argument(format!("{}: {e}", path.display())))
}

/// A text data file: one prompt per line, tokenized as --text is (with `prepend_bos` as
/// TL's `to_tokens`); blank lines are skipped; every prompt needs 2 to n_ctx tokens.
pub fn text_file(
    path: &Path,
    tok: &TextTokenizer,
    prepend_bos: bool,
    model: &Model<'_>,
) -> Result<Vec<Prompt>> {
    let cfg = model.config();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |e: Error| Error::Argument(format!("{} line {}: {e}", path.display(), i + 1));
        let tokens = text_tokens(tok, line, prepend_bos, model).map_err(at)?;
        if tokens.len() < 2 {
            return Err(at(Error::Argument(format!(
                "{} token(s); a prompt needs 2 to n_ctx = {}",
                tokens.len(),
                cfg.n_ctx
            ))));
        }
        out.push(Prompt {
            tokens,
            repeat_from: None,
        });
    }
    if out.is_empty() {
        return Err(Error::Argument(format!(
            "{}: the data file holds no prompt",
            path.display()
        )));
    }
    Ok(out)
}

/// A batch file (`run --batch-file`): one prompt per line, text when there is a
/// tokenizer (`args`' --tokenizer, else the blob's; tokenized as [`text_file`] does),
/// token ids otherwise (as [`data_file`] reads them, the format of `ablate --data`).
pub fn batch_file(
    path: &Path,
    args: &PromptArgs,
    model: &Model<'_>,
    blob: &[u8],
) -> Result<Vec<Prompt>> {
    match args.tokenizer(blob)? {
        Some(tok) => text_file(path, &tok, args.prepend_bos, model),
        None => data_file(path, model),
    }
}

/// The BOS token `spec` names for `model`: a token id, `none`, or `auto` (token 0 when
/// the blob's vocabulary spells it like `<bos>`).
pub fn resolve_bos(spec: &str, model: &Model<'_>) -> Result<Option<u32>> {
    match spec {
        "none" => Ok(None),
        "auto" => Ok(model
            .token_str(0)
            .filter(|s| s.starts_with('<') && s.ends_with('>'))
            .map(|_| 0)),
        s => {
            let t: u32 = s.parse().map_err(|_| {
                Error::Argument(format!(
                    "--bos `{s}`: expected a token id, `none` or `auto`"
                ))
            })?;
            if t >= model.config().d_vocab {
                return Err(Error::Argument(format!("--bos {t} is out of range")));
            }
            Ok(Some(t))
        }
    }
}

/// The `index`-th run (0 = first) of a trace file as a recording, checked against `model`.
pub fn trace_recording(path: &Path, index: usize, model: &Model<'_>) -> Result<Recording> {
    // Streamed: only this run is kept, and reading stops at its end frame.
    let (run, _) = read_run(path, index)?;
    if run.config != *model.config() {
        return Err(Error::Trace(format!(
            "{}: recorded with a model of another shape than {}",
            path.display(),
            "the given blob"
        )));
    }
    if run.model_crc != model.checksum() {
        note!(
            "warning: {} was recorded with model {:08x}, this blob is {:08x}",
            path.display(),
            run.model_crc,
            model.checksum()
        );
    }
    from_run(&run).map_err(|e| Error::Trace(format!("{}: {e}", path.display())))
}

/// A recording of the prompt run with `probes`, or of the first run of `trace`.
pub fn recording(
    model: &Model<'_>,
    blob: &[u8],
    prompt: &PromptArgs,
    trace: Option<&PathBuf>,
    probes: &[String],
) -> Result<Recording> {
    match trace {
        Some(path) => trace_recording(path, 0, model),
        None => {
            let p = prompt.prompt(model, blob)?;
            crate::analysis::recorded::record(model, &p.tokens, probes)
        }
    }
}
