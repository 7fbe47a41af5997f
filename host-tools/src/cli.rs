//! Small pieces shared by the subcommands: argument parsing and output helpers.

use std::io::Read;
use std::path::Path;

use tinylens_core::{Model, StorageKind};

use crate::{Error, Result};

/// Parses `0,5,7` or `0 5 7` into token ids.
pub fn parse_tokens(s: &str) -> Result<Vec<u32>> {
    let tokens: Result<Vec<u32>> = s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>().map_err(|_| {
                Error::Argument(format!("`{t}` is not a token id (a non-negative integer)"))
            })
        })
        .collect();
    let tokens = tokens?;
    if tokens.is_empty() {
        return Err(Error::Argument("no tokens given".into()));
    }
    Ok(tokens)
}

/// Parses a storage kind name.
pub fn parse_kind(s: &str) -> Result<StorageKind> {
    match s {
        "f32" => Ok(StorageKind::F32),
        "f16" => Ok(StorageKind::F16),
        "int8" => Ok(StorageKind::Int8),
        "int4" => Ok(StorageKind::Int4),
        _ => Err(Error::Argument(format!(
            "unknown storage kind `{s}` (f32, f16, int8, int4)"
        ))),
    }
}

/// Reads a file, or standard input for `-`.
pub fn read_input(path: &Path) -> Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Error::io("<stdin>", e))?;
        Ok(buf)
    } else {
        std::fs::read(path).map_err(|e| Error::io(path, e))
    }
}

/// Writes a file, or standard output for `-`.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if path.as_os_str() == "-" {
        std::io::stdout()
            .write_all(bytes)
            .map_err(|e| Error::io("<stdout>", e))
    } else {
        std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
    }
}

/// Reads a vocabulary file: one token string per line (line i is token i).
pub fn read_vocab(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text.lines().map(|l| l.to_string()).collect())
}

/// A token for display: its string when known, else `#id`.
pub fn token_label(vocab: Option<&[String]>, t: u32) -> String {
    match vocab.and_then(|v| v.get(t as usize)) {
        Some(s) => format!("{s:?}"),
        None => format!("#{t}"),
    }
}

/// Prints a value as pretty JSON on standard output (the `--json` of every subcommand).
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Argument(format!("JSON output: {e}")))?;
    println!("{s}");
    Ok(())
}

/// A `[layer][head]` table as text.
pub fn grid_text(title: &str, values: &[Vec<f64>], fmt: impl Fn(f64) -> String) -> String {
    let nh = values.first().map_or(0, |r| r.len());
    let mut s = format!("{title}\n      ");
    for h in 0..nh {
        s.push_str(&format!("{:>8}", format!("H{h}")));
    }
    s.push('\n');
    for (l, row) in values.iter().enumerate() {
        s.push_str(&format!("  L{l:<3}"));
        for v in row {
            s.push_str(&format!("{:>8}", fmt(*v)));
        }
        s.push('\n');
    }
    s
}

/// Storage kinds of a blob's matrices, e.g. `int8` or `int4 (W_E, W_pos, W_U: int8)`.
pub fn storage_summary(model: &Model<'_>) -> String {
    let cfg = model.config();
    let mut kinds: Vec<(String, &'static str)> = Vec::new();
    for i in 0..model.tensor_count() {
        let Some(slot) = tinylens_core::blob::slot(cfg, i) else {
            continue;
        };
        if slot.rows > 1 {
            kinds.push((slot.name.to_string(), model.tensor_at(i).kind.name()));
        }
    }
    let attn = kinds
        .iter()
        .find(|(n, _)| n.contains("W_Q"))
        .map_or("?", |k| k.1);
    let emb = kinds
        .iter()
        .find(|(n, _)| n.contains("W_E"))
        .map_or("?", |k| k.1);
    if attn == emb {
        attn.to_string()
    } else {
        format!("{attn} (W_E, W_pos, W_U: {emb})")
    }
}
