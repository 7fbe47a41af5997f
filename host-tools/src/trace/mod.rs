//! Decoding trace streams into TransformerLens-shaped caches.
//!
//! A stream may hold several runs (each starts with a header frame), and may have been
//! damaged on the way (a serial line, a capture cut short). The [`Decoder`] takes the
//! bytes as they come ([`Decoder::push`], any split), splits them at every `0x00`, drops
//! frames whose COBS, CRC or content is bad, drops duplicates (same sequence number),
//! puts records in place by their site whatever order they came in, and reports what was
//! lost: bad frames, sequence gaps, and exactly which expected records are missing. A
//! missing value is NaN in the cache, never a guess.
//!
//! Content is believed only if a recorder could have written it for the run's header:
//! a record must be one the header's probes select, at their precision, with the width
//! of its hook (a `hook_embed` record with a layer or a head, a row of the wrong length,
//! an int8 record with a NaN scale are bad frames, and the value is listed as missing).
//!
//! Memory: the decoder holds what it kept of the input (runs and records: under 32 bytes
//! per input byte for the smallest frames, see `tests/tests/decoder_memory.rs`), one
//! frame being assembled (at most
//! [`MAX_FRAME_BYTES`]) and at most [`MAX_PENDING_BYTES`] of frames waiting for their
//! header; missing records are counted and listed as ranges ([`MAX_MISSING_LISTED`]), the
//! cache is produced a row at a time for export ([`CacheView`]). Nothing is sized by what
//! a header claims.
//!
//! Live use (a serial port, `--follow`, a monitor): push bytes as they are read and act
//! on the [`Event`]s; [`Decoder::run`] and [`Run::loss_now`] give the state of a run at
//! any time. A new kind of frame is a `Body` variant in the core, one arm in
//! `add_frame` (what it changes in the run, and its believability check) and, if callers
//! need to see it, an [`Event`] variant (the enum is `non_exhaustive`).

use std::io;
use std::path::Path;

use tinylens_core::config::limits;
use tinylens_core::trace::frame_buffer_len;
use tinylens_core::{Config, HookPoint, Normalization, Site};

use crate::{cli, Error, Result};

/// Identity of a recorded value: (point, layer, head, position).
pub type Key = (HookPoint, u16, Option<u16>, u16);

fn key(site: &Site) -> Key {
    (site.point, site.layer, site.head, site.pos)
}

/// Longest chunk between two delimiters that can be a frame: the largest frame a
/// recorder writes for any valid config (4 MiB of f32 logits for the largest vocabulary,
/// plus framing). A longer chunk is one bad frame, skipped without being kept.
pub const MAX_FRAME_BYTES: usize = frame_buffer_len(&Config {
    n_layers: 1,
    n_heads: 1,
    d_model: limits::MAX_DIM,
    d_head: 1,
    d_vocab: limits::MAX_VOCAB,
    d_vocab_out: limits::MAX_VOCAB,
    n_ctx: limits::MAX_CTX,
    normalization: Normalization::None,
    positional: tinylens_core::Positional::Standard,
    eps: 0.0,
    attn_scale: 1.0,
});

/// Most bytes of frames held while their header has not arrived; beyond, the oldest
/// are dropped (and counted as orphans), so an endless stream of headerless frames
/// cannot fill memory.
pub const MAX_PENDING_BYTES: usize = 64 << 20;

/// Most missing ranges listed per run (all are counted in [`Loss::missing_count`]).
pub const MAX_MISSING_LISTED: usize = 100;

mod cache;
mod decoder;
mod run;

pub use cache::*;
pub use decoder::*;
pub use run::*;

/// Decodes a whole stream (any number of runs, any damage): [`Decoder`] over `bytes`.
///
/// Frames go to their run by the run id every frame carries, so a lost header costs that
/// run's frames (reported as orphans), never a mix-up with another run; frames that
/// arrive before their header are kept until it comes. A second header with the id of a
/// run that has not ended is a duplicate if it is the same header, and another run (both
/// marked [`Loss::shared_id`]) if not; after the run's end frame it starts a new run (a
/// device that restarted its numbering).
pub fn decode_stream(bytes: &[u8]) -> (Vec<Run>, StreamReport) {
    let mut d = Decoder::new(Keep::All);
    d.push(bytes, &mut |_, _| {});
    d.push(&[0], &mut |_, _| {});
    let (runs, mut report) = d.finish();
    report.bytes -= 1;
    (runs, report)
}

/// Reads `path` (`-`: standard input) through the streaming decoder, keeping run
/// `index` only, until that run's end frame or the end of the input.
pub fn read_run(path: &Path, index: usize) -> Result<(Run, StreamReport)> {
    let mut input = cli::open_input(path)?;
    read_run_from(&mut input, path, index)
}

/// [`read_run`] from any reader (the Python binding's bytes); `path` names it in errors.
pub fn read_run_from(
    input: &mut dyn io::Read,
    path: &Path,
    index: usize,
) -> Result<(Run, StreamReport)> {
    let name = cli::escape(&path.display().to_string()).into_owned();
    let mut decoder = Decoder::new(Keep::Only(index));
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, e)),
        };
        decoder.push(&buf[..n], &mut |_, _| {});
        if decoder.run_ended(index) {
            break;
        }
    }
    if decoder.report().bytes == 0 {
        return Err(Error::Trace(format!("{name}: empty trace")));
    }
    let (mut runs, report) = decoder.finish();
    let run = runs.pop().ok_or_else(|| {
        Error::Trace(format!(
            "{name}: no run {index} ({} runs, {} good frames, {} bad frames)",
            report.runs, report.frames_ok, report.bad_frames
        ))
    })?;
    Ok((run, report))
}
