//! Small pieces shared by the subcommands: argument parsing and the one way out.
//!
//! Everything the tools print or write goes through here:
//! - [`out!`]/[`outln!`] for standard output: a write error (a full disk, `> /dev/full`)
//!   is the command's error, an `error:` line and exit status 1, never a panic. (A
//!   reader that went away, `| head`, ends the process quietly by `SIGPIPE`, as for
//!   other command-line tools.)
//! - [`note!`] for progress and warnings on standard error: one escaped line, and a
//!   failing standard error is ignored (there is nowhere left to report it).
//! - [`write_output`]/[`write_output_with`] for files: written to a temporary file in
//!   the same directory and renamed over the target only when complete, so a command
//!   that fails (a full disk, an error half-way, an interrupt) leaves any previous file
//!   as it was.
//! - [`escape`] for any text that came from the input (tensor names, config strings,
//!   paths, patterns): control characters are written as escapes, so a message stays
//!   one line and cannot drive the terminal.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use tinylens_core::{Model, StorageKind};

use crate::{Error, Result};

/// `print!` through [`out`]: `out!("...")?`.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!($($arg)*))
    };
}

/// `println!` through [`out`]: `outln!("...")?`.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` through [`note`]: one escaped line on standard error, never a panic.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::cli::note(format_args!($($arg)*))
    };
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
    outln!("{s}")
}

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

/// Parses a storage kind name: `f32`, `f16`, `int8`, `int4` (groups of 32 columns) or
/// `int4/gN` for groups of N = 16, 32, 64, 128 columns (the names
/// [`StorageKind::name`] gives).
pub fn parse_kind(s: &str) -> Result<StorageKind> {
    let group = |n: &str| {
        n.parse::<u16>()
            .ok()
            .and_then(tinylens_core::Int4Group::new)
    };
    match s {
        "f32" => Ok(StorageKind::F32),
        "f16" => Ok(StorageKind::F16),
        "int8" => Ok(StorageKind::Int8),
        "int4" => Ok(StorageKind::INT4),
        _ => match s.strip_prefix("int4/g").map(group) {
            Some(Some(group)) => Ok(StorageKind::Int4 { group }),
            _ => Err(Error::Argument(format!(
                "unknown storage kind `{s}` (f32, f16, int8, int4, or int4/gN with groups of N = 16, 32, 64, 128 columns)"
            ))),
        },
    }
}

/// Parses an int4 group size (`--int4-group`): 16, 32, 64 or 128 columns.
pub fn parse_int4_group(s: &str) -> Result<tinylens_core::Int4Group> {
    s.parse::<u16>()
        .ok()
        .and_then(tinylens_core::Int4Group::new)
        .ok_or_else(|| {
            Error::Argument(format!(
                "int4 group `{s}`: must be 16, 32, 64 or 128 columns"
            ))
        })
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

/// Opens a file, or standard input for `-`, for reading as it comes.
pub fn open_input(path: &Path) -> Result<Box<dyn Read>> {
    if path.as_os_str() == "-" {
        Ok(Box::new(io::stdin().lock()))
    } else {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        if f.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(Error::io(
                path,
                io::Error::from(io::ErrorKind::IsADirectory),
            ));
        }
        Ok(Box::new(f))
    }
}

/// Writes a file atomically, or standard output for `-` (see [`write_output_with`]).
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    write_output_with(path, |w| w.write_all(bytes))
}

/// Writes what `write` produces to `path` (`-`: standard output), streamed through a
/// buffer. A regular file is written to a temporary file in its directory, flushed to
/// disk and renamed over `path` only when `write` succeeded: on any error the previous
/// file (if any) is untouched and the temporary file is removed. A symbolic link is
/// followed (the file it names is replaced, not the link); a target that is not a
/// regular file (`/dev/null`, a FIFO) is written in place.
pub fn write_output_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<()> {
    if path.as_os_str() == "-" {
        let mut out = io::BufWriter::new(io::stdout().lock());
        return write(&mut out)
            .and_then(|()| out.flush())
            .map_err(|e| Error::io("<stdout>", e));
    }
    write_file(path, |mut w| write(&mut w))
}

/// A writer that can also seek (what a zip archive needs).
pub trait WriteSeek: Write + io::Seek {}
impl<T: Write + io::Seek + ?Sized> WriteSeek for T {}

/// [`write_output_with`] for formats that seek back (`.npz`): standard output gets the
/// bytes through an unnamed temporary file.
pub fn write_output_seekable(
    path: &Path,
    write: impl FnOnce(&mut dyn WriteSeek) -> io::Result<()>,
) -> Result<()> {
    if path.as_os_str() != "-" {
        return write_file(path, write);
    }
    let fail = |e| Error::io("<stdout>", e);
    let mut tmp = io::BufWriter::new(tempfile::tempfile().map_err(fail)?);
    write(&mut tmp).and_then(|()| tmp.flush()).map_err(fail)?;
    let mut file = tmp.into_inner().map_err(|e| fail(e.into_error()))?;
    file.seek(io::SeekFrom::Start(0)).map_err(fail)?;
    let mut out = io::stdout().lock();
    io::copy(&mut file, &mut out)
        .and_then(|_| out.flush())
        .map_err(fail)
}

/// The atomic file write of [`write_output_with`].
fn write_file(path: &Path, write: impl FnOnce(&mut dyn WriteSeek) -> io::Result<()>) -> Result<()> {
    let fail = |e| Error::io(path, e);
    let (target, mode) = match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            let mut out = io::BufWriter::new(std::fs::File::create(path).map_err(fail)?);
            return write(&mut out).and_then(|()| out.flush()).map_err(fail);
        }
        Ok(m) => (
            std::fs::canonicalize(path).map_err(fail)?,
            Some(m.permissions()),
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (path.to_path_buf(), None),
        Err(e) => return Err(fail(e)),
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // A new file gets the mode a plain create would give it (0666 less the umask).
    #[cfg(unix)]
    if mode.is_none() {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let tmp = builder.tempfile_in(&dir).map_err(fail)?;
    let mut out = io::BufWriter::new(tmp);
    write(&mut out).and_then(|()| out.flush()).map_err(fail)?;
    let tmp = out.into_inner().map_err(|e| fail(e.into_error()))?;
    if let Some(mode) = mode {
        // A replaced file keeps its mode.
        tmp.as_file().set_permissions(mode).map_err(fail)?;
    }
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(&target).map_err(|e| fail(e.error))?;
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

/// Writes to standard output (the [`out!`] and [`outln!`] macros): an error is the
/// command's error, reported as `error: <stdout>: ...`.
pub fn out(args: fmt::Arguments<'_>) -> Result<()> {
    io::stdout()
        .lock()
        .write_fmt(args)
        .map_err(|e| Error::io("<stdout>", e))
}

/// Flushes standard output (at the end of a command: what is still buffered must
/// reach its reader, or be the command's error).
pub fn flush_out() -> Result<()> {
    io::stdout().flush().map_err(|e| Error::io("<stdout>", e))
}

/// Writes one line to standard error (the [`note!`] macro): escaped with [`escape`],
/// so it stays one line whatever it quotes; if standard error cannot be written there
/// is nowhere to say so, and the line is dropped.
pub fn note(args: fmt::Arguments<'_>) {
    let line = args.to_string();
    let _ = writeln!(io::stderr().lock(), "{}", escape(&line));
}

/// `text` with every control character (newline, carriage return, escape, ...) and the
/// Unicode line separators and bidirectional overrides written as Rust escapes
/// (`\n`, `\u{1b}`), so that text from the input prints as one line, cannot forge an
/// `error:` line and cannot drive the terminal. Other text is returned as it is.
pub fn escape(text: &str) -> Cow<'_, str> {
    fn hostile(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !text.chars().any(hostile) {
        return Cow::Borrowed(text);
    }
    let mut s = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hostile(c) {
            s.extend(c.escape_default());
        } else {
            s.push(c);
        }
    }
    Cow::Owned(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tinylens-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A disk that fills up half-way, an error of the producer, an interruption: the
    /// previous file stays as it was until the new one is complete.
    #[test]
    fn a_failing_write_leaves_the_previous_file_untouched() {
        let d = dir("atomic");
        let path = d.join("out.json");
        std::fs::write(&path, b"the user's previous file").unwrap();
        let full = |w: &mut dyn Write| -> io::Result<()> {
            w.write_all(&[b'x'; 100_000])?;
            Err(io::Error::from_raw_os_error(28)) // ENOSPC
        };
        let e = write_output_with(&path, full).unwrap_err().to_string();
        assert!(e.contains("out.json") && e.contains("No space left"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"the user's previous file");
        // While a write is under way, the target is still the old file.
        write_output_with(&path, |w| {
            w.write_all(b"new")?;
            assert_eq!(std::fs::read(&path)?, b"the user's previous file");
            Ok(())
        })
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        // Nothing but the file is left in the directory.
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        // The seekable variant likewise.
        let e = write_output_seekable(&path, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("injected"))
        });
        assert!(e.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn replaced_files_keep_their_mode_and_links_are_followed() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("mode");
        let real = d.join("real.bin");
        std::fs::write(&real, b"old").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = d.join("link.bin");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_output(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        let mode = std::fs::metadata(&real).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // Not a regular file: written in place.
        write_output(Path::new("/dev/null"), b"x").unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
    }

    #[test]
    fn escape_keeps_text_on_one_line() {
        assert_eq!(escape("blocks.0.attn.W_Q"), "blocks.0.attn.W_Q");
        assert_eq!(escape("héllo ✓"), "héllo ✓");
        assert_eq!(
            escape("evil\nname\r\nerror: fake\u{1b}[31m\t\u{7f}\u{2028}\u{202e}"),
            "evil\\nname\\r\\nerror: fake\\u{1b}[31m\\t\\u{7f}\\u{2028}\\u{202e}"
        );
    }
}
