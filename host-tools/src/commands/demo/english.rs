//! The English demo (`demo`, the default): the model of `models/english/` with its
//! tokenizer, on held-out paragraphs repeated and on a sentence with a repeated name.

use std::time::Instant;

use serde::Serialize;
use tinylens_core::Model;

use super::{
    analyse_sets, print_grids, refs, DataSets, DemoArgs, DemoFindings, DemoOptions, ScoredHead,
    THRESHOLD,
};
use crate::analysis::ablation::{mean_results, Prompt};
use crate::analysis::recorded::record;
use crate::analysis::repeats::{complete_repeats, RepeatCompletion};
use crate::convert::vocab_of;
use crate::prompts;
use crate::tokenizer::{escape, TextTokenizer};
use crate::{cli, Error, Result};

/// The English model (`models/english/`, `scripts/train_english.py`): int8, with its
/// byte-level BPE tokenizer in the host-only trailer. Made by `tinylens convert --weights
/// models/english/model.safetensors --config models/english/config.json --tokenizer
/// models/english/tokenizer.json --quant int8 -o models/english/english-int8.tlm`.
pub const ENGLISH_BLOB: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/english/english-int8.tlm"
));

/// Held-out paragraphs of the English corpus (one per line), never trained on.
pub const HELDOUT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/english/heldout.txt"
));

/// The English demo's sentence with a repeated name. The name's tokens (" R" "o" "ss" "um")
/// each occur once before, so a two-layer induction head, which matches one token, has one
/// place to copy from; a name such as "Hendricks" (" H" "end" "r" "ic" "k" "s") is harder:
/// after "r" it also finds the "r" of "Mr" (models/english/TRAINING.md).
pub const NAME_PROMPT: &str = "Mr Rossum wrote the parser and the tokenizer for the module. \
                               The tests of the module were written by Mr Rossum";

/// The English demo's prompt for sampling.
pub const SAMPLE_PROMPT: &str = "The function returns";

/// Tokens of each copy in the English demo's repeated paragraphs: `<bos>` + 31 + the same
/// 31 fills 63 of the 64 positions.
pub const TEXT_REPEAT_LEN: usize = 31;

/// Held-out paragraphs repeated: `<bos>` + the first `n` tokens of a paragraph + the
/// same `n` again, for every paragraph of at least `n` tokens.
pub fn repeated_text(tok: &TextTokenizer, text: &str, n: usize, bos: u32) -> Result<Vec<Prompt>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let ids = tok.to_tokens(line, true)?;
        if ids.len() > n {
            let span = &ids[1..=n];
            let mut tokens = vec![bos];
            tokens.extend_from_slice(span);
            tokens.extend_from_slice(span);
            out.push(Prompt {
                tokens,
                repeat_from: Some(n + 1),
            });
        }
    }
    Ok(out)
}

/// What the English demo measured beyond [`DemoFindings`].
#[derive(Debug, Clone, Serialize)]
pub struct TextFindings {
    /// Flash a device needs: the blob without its host-only trailer.
    pub flash_bytes: usize,
    /// Working memory of a session (`Config::workspace_len` f32 words).
    pub ram_bytes: usize,
    pub tokenizer_bytes: usize,
    pub sample_prompt: String,
    pub sample_text: String,
    pub name_prompt: String,
    pub name_tokens: Vec<String>,
    pub name: RepeatCompletion,
    /// The named heads' attention on the repeated name (the last run of repeats).
    pub name_patterns: Vec<NamePattern>,
}

/// One head's attention on the name sentence: from each token of the name's second
/// occurrence (and the token before it) to the keys around both occurrences.
#[derive(Debug, Clone, Serialize)]
pub struct NamePattern {
    pub layer: usize,
    pub head: usize,
    /// `induction` or `previous-token`.
    pub kind: String,
    /// Its head-detector score (exclude_bos) of that kind.
    pub score: f64,
    pub queries: Vec<usize>,
    pub keys: Vec<usize>,
    /// `weights[i][j]`: attention from `queries[i]` to `keys[j]` (`hook_pattern`).
    pub weights: Vec<Vec<f32>>,
}

/// The last contiguous run of repeat positions of `tokens` (the repeated name at the end
/// of [`NAME_PROMPT`]) as query positions, and the keys a reader needs to see what the
/// heads do there: `<bos>`, the first occurrence and the token after it, and the second
/// occurrence up to the query.
fn name_window(tokens: &[u32]) -> Option<(Vec<usize>, Vec<usize>)> {
    let reps = crate::analysis::repeats::repeats(tokens);
    let &(q_last, k_last) = reps.last()?;
    let mut run = vec![(q_last, k_last)];
    for &(q, k) in reps.iter().rev().skip(1) {
        let &(q1, k1) = run.last()?;
        if q + 1 != q1 || k + 1 != k1 {
            break;
        }
        run.push((q, k));
    }
    run.reverse();
    let (q0, k0) = run[0];
    // The name's last token predicts what follows it; the first repeated token's
    // predecessor shows the previous-token head at work just before.
    let queries: Vec<usize> = (q0..=(q_last + 1).min(tokens.len() - 1)).collect();
    let mut keys = vec![0];
    keys.extend(k0.max(1)..=(k_last + 2).min(q0 - 1));
    keys.extend(q0 - 1..=*queries.last()?);
    keys.dedup();
    Some((queries, keys))
}

/// `named` if any, else the head of `scores` (`[layer][head]`) with the highest score
/// at or above layer `min_layer`.
fn named_or_best(named: &[ScoredHead], scores: &[Vec<f64>], min_layer: usize) -> Vec<ScoredHead> {
    if !named.is_empty() {
        return named.to_vec();
    }
    let mut best: Option<ScoredHead> = None;
    for (layer, row) in scores.iter().enumerate().skip(min_layer) {
        for (head, &score) in row.iter().enumerate() {
            if best.as_ref().is_none_or(|b| score > b.score) {
                best = Some(ScoredHead { layer, head, score });
            }
        }
    }
    best.into_iter().collect()
}

/// [`NamePattern`]s of `heads` on `tokens`.
fn name_patterns(
    model: &Model<'_>,
    tokens: &[u32],
    heads: &[(&str, &[ScoredHead])],
) -> Result<Vec<NamePattern>> {
    let Some((queries, keys)) = name_window(tokens) else {
        return Ok(Vec::new());
    };
    let rec = record(model, tokens, &["blocks.*.attn.hook_pattern".to_string()])?;
    let p = rec.patterns()?;
    let mut out = Vec::new();
    for (kind, list) in heads {
        for h in list.iter() {
            let m = &p[h.layer][h.head];
            out.push(NamePattern {
                layer: h.layer,
                head: h.head,
                kind: kind.to_string(),
                score: h.score,
                queries: queries.clone(),
                keys: keys.clone(),
                weights: queries
                    .iter()
                    .map(|&q| {
                        keys.iter()
                            .map(|&k| if k <= q { m[(q, k)] } else { 0.0 })
                            .collect()
                    })
                    .collect(),
            });
        }
    }
    Ok(out)
}

/// A [`NamePattern`] as a table: rows are queries, columns keys, both labelled with
/// their tokens (escaped) and positions.
pub fn pattern_lines(t: &TextFindings, p: &NamePattern) -> Vec<String> {
    let label = |pos: usize| {
        let s = escape(t.name_tokens.get(pos).map_or("?", |s| s.as_str()));
        let s: String = s.chars().take(7).collect();
        format!("{s}@{pos}")
    };
    let w = p
        .keys
        .iter()
        .map(|&k| label(k).len())
        .max()
        .unwrap_or(4)
        .max(5)
        + 1;
    let qw = p.queries.iter().map(|&q| label(q).len()).max().unwrap_or(4) + 1;
    let mut out = vec![format!(
        "L{}H{} ({} score {:.2}{}): attention from each query (rows) to the keys (columns)",
        p.layer,
        p.head,
        p.kind,
        p.score,
        if p.score < THRESHOLD {
            format!(", the strongest, below the {THRESHOLD} that names a head")
        } else {
            String::new()
        }
    )];
    let mut head = format!("{:>qw$}", "");
    for &k in &p.keys {
        head.push_str(&format!("{:>w$}", label(k)));
    }
    out.push(head);
    for (i, &q) in p.queries.iter().enumerate() {
        let mut row = format!("{:>qw$}", label(q));
        for (j, &k) in p.keys.iter().enumerate() {
            let cell = if k > q {
                String::new()
            } else {
                format!("{:.2}", p.weights[i][j])
            };
            row.push_str(&format!("{cell:>w$}"));
        }
        out.push(row);
    }
    out
}

/// The English model's demo: the circuit on held-out paragraphs repeated, a sampled
/// text, and the repeated name of [`NAME_PROMPT`] completed with and without the
/// induction heads.
pub fn analyse_english(
    blob: &[u8],
    opts: &DemoOptions,
) -> Result<(DemoFindings, TextFindings, String)> {
    let model = Model::from_bytes(blob)?;
    let cfg = *model.config();
    let tok = crate::tokenizer::for_blob(blob, None)?
        .ok_or_else(|| Error::Argument("the English blob has no tokenizer".into()))?;
    let bos = tok
        .bos()
        .ok_or_else(|| Error::Argument("the English tokenizer has no BOS".into()))?;
    let n = TEXT_REPEAT_LEN.min((cfg.n_ctx as usize - 1) / 2);
    let all = repeated_text(&tok, HELDOUT, n, bos)?;
    let d = opts.detect_sequences.min(all.len() / 3).max(1);
    let (detect, rest) = all.split_at(d);
    let loss: Vec<Prompt> = rest.iter().take(opts.loss_sequences).cloned().collect();
    let name_ids = prompts::text_tokens(&tok, NAME_PROMPT, true, &model)?;
    let sets = DataSets {
        detect: detect.to_vec(),
        loss: loss.clone(),
        repeat_len: n,
        what: format!("<bos> + {n} tokens of a held-out paragraph + the same {n}"),
        report_tokens: Some(name_ids.clone()),
        title: "tinylens demo: induction heads on real English (Python's documentation)".into(),
    };
    let (findings, html) = analyse_sets(&model, &sets, opts)?;
    let means = mean_results(&model, &loss, &|| {})?;
    // The heads the name sentence is shown with: the named ones, or, when no head reaches
    // THRESHOLD, the single strongest of each kind (layer >= 1 for induction), so that the
    // demo still shows what the best candidate does (and says it is below the threshold).
    let induction_heads = named_or_best(
        &findings.induction_heads,
        &findings.head_scores.induction,
        1,
    );
    let previous_heads = named_or_best(
        &findings.previous_token_heads,
        &findings.head_scores.previous_token,
        0,
    );
    let ind = refs(&induction_heads);
    let name = complete_repeats(
        &model,
        &name_ids,
        &ind,
        Some(&means),
        ind.first().copied(),
        3,
    )?;
    let sample = crate::run::run(
        &model,
        &crate::run::RunOptions {
            tokens: prompts::text_tokens(&tok, SAMPLE_PROMPT, true, &model)?,
            generate: 32,
            top_k: 20,
            temperature: 0.7,
            seed: opts.seed,
            ..Default::default()
        },
    )?;
    let vocab = vocab_of(&model).unwrap_or_default();
    let name_patterns = name_patterns(
        &model,
        &name_ids,
        &[
            ("induction", &induction_heads),
            ("previous-token", &previous_heads),
        ],
    )?;
    let text = TextFindings {
        flash_bytes: model.as_bytes().len(),
        ram_bytes: cfg.workspace_len() * 4,
        tokenizer_bytes: tok.json().len(),
        sample_prompt: SAMPLE_PROMPT.into(),
        sample_text: tok.decode_text(&sample.tokens)?,
        name_prompt: NAME_PROMPT.into(),
        name_tokens: name_ids
            .iter()
            .map(|t| vocab.get(*t as usize).cloned().unwrap_or_default())
            .collect(),
        name,
        name_patterns,
    };
    Ok((findings, text, html))
}

/// The English demo's printed lines about the repeated name.
pub fn name_lines(t: &TextFindings) -> Vec<String> {
    let label = |id: u32| {
        t.name
            .tokens
            .iter()
            .position(|x| *x == id)
            .map_or(format!("#{id}"), |p| escape(&t.name_tokens[p]))
    };
    let at = |p: usize| escape(&t.name_tokens[p]);
    let heads: Vec<String> = t
        .name
        .ablated
        .iter()
        .map(|[l, h]| format!("L{l}H{h}"))
        .collect();
    let mut out = vec![format!(
        "{:>4} {:>14} -> {:<14} {:>8} {:>10}  {}",
        "pos",
        "token",
        "next",
        "P(next)",
        format!(
            "{} off",
            if heads.is_empty() {
                "none".into()
            } else {
                heads.join("+")
            }
        ),
        t.name
            .head
            .map_or(String::new(), |[l, h]| format!("L{l}H{h} attends to"))
    )];
    for p in &t.name.positions {
        let att: Vec<String> = p
            .attends
            .iter()
            .map(|(k, a)| format!("{}@{k} {a:.2}", at(*k)))
            .collect();
        out.push(format!(
            "{:>4} {:>14} -> {:<14} {:>8.3} {:>10.3}  {}",
            p.pos,
            at(p.pos),
            label(p.next),
            p.p,
            p.p_ablated,
            att.join(", ")
        ));
    }
    out
}

pub(super) fn run_english(a: &DemoArgs, start: Instant) -> Result<()> {
    if let Some(p) = &a.save_model {
        cli::write_output(p, ENGLISH_BLOB)?;
    }
    let (f, t, html) = analyse_english(
        ENGLISH_BLOB,
        &DemoOptions {
            seed: a.seed,
            ..Default::default()
        },
    )?;
    cli::write_output(&a.output, html.as_bytes())?;
    if a.json {
        return cli::print_json(&serde_json::json!({ "findings": f, "text": t }));
    }
    let model = Model::from_bytes(ENGLISH_BLOB)?;
    let c = model.config();
    outln!(
        "tinylens demo: a {}-layer, {}-head attention-only transformer trained in TransformerLens \
         on Python's documentation\n(d_model {}, n_ctx {}, byte-level BPE of {} tokens; int8 blob \
         embedded in this binary: {} bytes of flash, {} bytes of working memory — an \
         nRF52840 has 1 MiB / 256 KiB; the tokenizer, {} bytes, stays on the host)\n",
        c.n_layers,
        c.n_heads,
        c.d_model,
        c.n_ctx,
        c.d_vocab,
        t.flash_bytes,
        t.ram_bytes,
        t.tokenizer_bytes
    )?;
    outln!(
        "sampled (top-k 20, temperature 0.7, seed {}):\n  {}\n",
        a.seed,
        escape(&t.sample_text)
    )?;
    outln!(
        "a sentence with a repeated name:\n  {}",
        escape(&t.name_prompt)
    )?;
    outln!(
        "  tokens: {}",
        t.name_tokens
            .iter()
            .map(|s| escape(s))
            .collect::<Vec<_>>()
            .join(" ")
    )?;
    outln!("where the second copy repeats the first, the model completes it from there:")?;
    for line in name_lines(&t) {
        outln!("  {line}")?;
    }
    for p in &t.name_patterns {
        outln!()?;
        for line in pattern_lines(&t, p) {
            outln!("  {line}")?;
        }
    }
    outln!(
        "\nran {} held-out paragraphs as <bos> + {n} tokens + the same {n} with probes on every \
         attention pattern; {} bytes of trace decoded\n",
        f.detect_sequences,
        f.trace_bytes,
        n = TEXT_REPEAT_LEN
    )?;
    print_grids(&f)?;
    outln!(
        "\nreport: {} (open it in a browser)   total {:.2} s",
        a.output.display(),
        start.elapsed().as_secs_f64()
    )
}
