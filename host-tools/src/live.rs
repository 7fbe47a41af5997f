//! Live decoding: trace bytes decoded frame by frame as they arrive — from a serial
//! port (`decode --serial`), a file that grows (`decode --follow FILE`, like `tail -f`)
//! or a pipe (`decode --follow -`) — for as long as the device runs.
//!
//! The output is one JSON object per line, in arrival order: `run_started` (the
//! header: model CRC, shape, probes), `token` (a position starts), `record` (one hook
//! value: hook name, head, position and the values), `run_ended` (the end frame, with
//! the run's loss: lost frames, dropped on the device, missing records), `run_cut` (a
//! run that stopped without its end frame: the device restarted, a header of the same
//! run id arrived, or the input ended) and `bad` (a chunk between delimiters that is
//! not a frame: garbage, a corrupted or cut frame; the next 0x00 resynchronises).
//!
//! Memory stays bounded however long it runs: the stream decoder
//! ([`crate::trace::Decoder`]) holds only the runs that are open, and is replaced by a
//! fresh one whenever none is (a run holds at most one model context of records).

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tinylens_core::trace::{decode_frame, Body};

use crate::trace::{Decoder, Event, Keep, Run};
use crate::{Error, Result};

/// Totals over everything followed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub bytes: u64,
    pub runs_ended: u64,
    pub runs_cut: u64,
    pub frames_ok: u64,
    pub bad_frames: u64,
}

/// Follows a byte stream and hands each decoded frame, as a JSON object, to `emit`
/// (`decode --follow` writes them as lines, `monitor` draws them).
pub struct Follower<E: FnMut(serde_json::Value) -> io::Result<()>> {
    decoder: Decoder,
    /// Stream index of the current decoder's first run.
    base: u64,
    /// Frame bytes since the last 0x00 (pushed to the decoder at the delimiter, after
    /// the restart check).
    chunk: Vec<u8>,
    scratch: Vec<u8>,
    emit: E,
    totals: Totals,
    error: Option<io::Error>,
}

impl<E: FnMut(serde_json::Value) -> io::Result<()>> Follower<E> {
    pub fn new(emit: E) -> Self {
        Follower {
            decoder: Decoder::new(Keep::All),
            base: 0,
            chunk: Vec::new(),
            scratch: Vec::new(),
            emit,
            totals: Totals::default(),
            error: None,
        }
    }

    /// Decodes every frame `bytes` completes (a frame cut by the end of `bytes`
    /// continues with the next call).
    pub fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.totals.bytes += bytes.len() as u64;
        let max = crate::trace::MAX_FRAME_BYTES;
        let mut rest = bytes;
        while !rest.is_empty() {
            let zero = rest.iter().position(|b| *b == 0);
            let piece = &rest[..zero.unwrap_or(rest.len())];
            // The decoder judges an overlong chunk; here only the first bytes are kept
            // for the restart check, so memory stays bounded.
            // An overlong chunk keeps `max + 1` bytes: the decoder counts it as bad.
            let room = (max + 1).saturating_sub(self.chunk.len());
            self.chunk
                .extend_from_slice(&piece[..piece.len().min(room)]);
            let Some(i) = zero else { break };
            self.delimiter();
            rest = &rest[i + 1..];
        }
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The chunk is complete: a header for a run id that is open means the device
    /// restarted, which cuts the open runs; then the decoder gets the chunk.
    fn delimiter(&mut self) {
        let mut chunk = std::mem::take(&mut self.chunk);
        if !chunk.is_empty() && chunk.len() <= crate::trace::MAX_FRAME_BYTES {
            self.scratch.clear();
            self.scratch.extend_from_slice(&chunk);
            let header_of = match decode_frame(&mut self.scratch) {
                Ok(f) if matches!(f.body, Body::Header(_)) => Some(f.run),
                _ => None,
            };
            if header_of.is_some_and(|id| self.open_run_with_id(id)) {
                self.cut_all();
            }
        }
        chunk.push(0);
        self.feed(&chunk);
        chunk.clear();
        if chunk.capacity() > 1 << 16 {
            chunk = Vec::new();
        }
        self.chunk = chunk;
        if self.decoder.runs().iter().all(|r| r.end.is_some()) && !self.decoder.runs().is_empty() {
            // Every run has ended: a fresh decoder keeps memory bounded.
            self.base += self.decoder.runs().len() as u64;
            self.decoder = Decoder::new(Keep::All);
        }
    }

    fn open_run_with_id(&self, id: u32) -> bool {
        self.decoder
            .runs()
            .iter()
            .any(|r| r.run_id == id && r.end.is_none())
    }

    /// Passes bytes to the decoder and writes a line for each event.
    fn feed(&mut self, bytes: &[u8]) {
        let base = self.base;
        let emit = &mut self.emit;
        let totals = &mut self.totals;
        let error = &mut self.error;
        let mut on_event = |d: &Decoder, e: Event| {
            let line = match e {
                Event::RunStarted { run } => d.run(run).map(|r| {
                    json!({
                        "event": "run_started",
                        "run": base + run as u64,
                        "run_id": r.run_id,
                        "model_crc": format!("{:08x}", r.model_crc),
                        "n_layers": r.config.n_layers,
                        "n_heads": r.config.n_heads,
                        "d_model": r.config.d_model,
                        "n_ctx": r.config.n_ctx,
                        "probes": r.probes.len(),
                    })
                }),
                Event::Token { run, pos, token } => Some(json!({
                    "event": "token", "run": base + run as u64, "pos": pos, "token": token,
                })),
                Event::Record { run, key } => d.run(run).and_then(|r| {
                    r.records.get(&key).map(|values| {
                        json!({
                            "event": "record",
                            "run": base + run as u64,
                            "hook": key.0.name(key.1).to_string(),
                            "head": key.2,
                            "pos": key.3,
                            "values": values,
                        })
                    })
                }),
                Event::RunEnded { run } => d.run(run).map(|r| {
                    totals.runs_ended += 1;
                    run_line("run_ended", base + run as u64, r)
                }),
                Event::Bad => Some(json!({ "event": "bad" })),
                _ => None,
            };
            if let Some(line) = line {
                if error.is_none() {
                    if let Err(e) = emit(line) {
                        *error = Some(e);
                    }
                }
            }
        };
        let before = self.decoder.report().clone();
        self.decoder.push(bytes, &mut on_event);
        let after = self.decoder.report();
        self.totals.frames_ok += (after.frames_ok - before.frames_ok) as u64;
        self.totals.bad_frames += (after.bad_frames - before.bad_frames) as u64;
    }

    /// Ends every open run as cut and starts a fresh decoder.
    fn cut_all(&mut self) {
        let decoder = std::mem::replace(&mut self.decoder, Decoder::new(Keep::All));
        let n = decoder.runs().len() as u64;
        let (runs, _) = decoder.finish();
        for (i, r) in runs.iter().enumerate() {
            if r.end.is_none() {
                self.totals.runs_cut += 1;
                let line = run_line("run_cut", self.base + i as u64, r);
                if self.error.is_none() {
                    if let Err(e) = (self.emit)(line) {
                        self.error = Some(e);
                    }
                }
            }
        }
        self.base += n;
    }

    /// The end of the input: open runs are cut; a frame cut by the end is bad.
    pub fn finish(mut self) -> io::Result<Totals> {
        if !self.chunk.is_empty() {
            self.totals.bad_frames += 1;
            (self.emit)(json!({ "event": "bad" }))?;
        }
        self.cut_all();
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(self.totals),
        }
    }
}

/// A `run_ended` / `run_cut` line: the run's counts and loss.
fn run_line(event: &str, index: u64, r: &Run) -> serde_json::Value {
    let loss = r.loss_now();
    json!({
        "event": event,
        "run": index,
        "run_id": r.run_id,
        "positions": r.positions(),
        "tokens": r.token_list(),
        "records": r.records.len(),
        "lost_frames": loss.lost_frames,
        "dropped_on_device": loss.dropped_on_device,
        "missing_records": loss.missing_count,
        "duplicate_frames": loss.duplicate_frames,
    })
}

/// Where live bytes come from.
pub enum Source<'a> {
    /// A file or `-` (standard input). A regular file is followed as it grows; a pipe,
    /// a terminal or a FIFO ends at its end.
    Path(&'a Path),
    /// A serial port at a baud rate.
    Serial { port: &'a str, baud: u32 },
}

/// Writes each event as one JSON line to `out`, flushed (for `decode --follow`).
pub fn json_lines(mut out: impl Write) -> impl FnMut(serde_json::Value) -> io::Result<()> {
    move |v| writeln!(out, "{v}").and_then(|_| out.flush())
}

/// Follows `source` until its end (or, for a growing file, until it has not grown
/// for `idle`), handing each event to `emit`.
///
/// `out` names where `emit` writes, for its errors (`<stdout>` or a path).
pub fn follow(
    source: Source<'_>,
    idle: Option<Duration>,
    out: &Path,
    emit: impl FnMut(serde_json::Value) -> io::Result<()>,
) -> Result<Totals> {
    let mut follower = Follower::new(emit);
    let mut buf = vec![0u8; 1 << 14];
    let (name, mut input, growing): (String, Box<dyn Read>, bool) = match source {
        Source::Path(p) => {
            let growing = p.as_os_str() != "-" && std::fs::metadata(p).is_ok_and(|m| m.is_file());
            (p.display().to_string(), crate::cli::open_input(p)?, growing)
        }
        Source::Serial { port, baud } => {
            let p = serialport::new(port, baud)
                .timeout(Duration::from_millis(100))
                .open()
                .map_err(|e| Error::Argument(format!("serial port {port}: {e}")))?;
            (port.to_string(), Box::new(p), false)
        }
    };
    let io_err = |e: io::Error| Error::io(Path::new(&name), e);
    let mut last_data = Instant::now();
    loop {
        match input.read(&mut buf) {
            Ok(0) if growing => {
                if idle.is_some_and(|d| last_data.elapsed() >= d) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(0) => break,
            Ok(n) => {
                last_data = Instant::now();
                follower.push(&buf[..n]).map_err(|e| Error::io(out, e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                if idle.is_some_and(|d| last_data.elapsed() >= d) {
                    break;
                }
            }
            // A pseudo-terminal whose other side closed reads as EIO: the end.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => return Err(io_err(e)),
        }
    }
    follower.finish().map_err(|e| Error::io(out, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tinylens_core::trace::Recorder;

    /// A small model's trace: `generate` positions, every attention pattern.
    fn trace(run_id: u32) -> Vec<u8> {
        let blob = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../firmware-examples/models/attn1_ln-int8.tlm"),
        )
        .unwrap();
        let model = tinylens_core::Model::from_bytes(&blob).unwrap();
        let mut probes = tinylens_core::probe::ProbeSet::<8>::new();
        probes.add_pattern("blocks.*.attn.hook_pattern").unwrap();
        let mut ws = vec![0f32; model.config().workspace_len()];
        let mut session = tinylens_core::Session::new(&model, &mut ws).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; tinylens_core::trace::frame_buffer_len(model.config())];
        let sink = |f: &[u8]| {
            out.extend_from_slice(f);
            Ok(())
        };
        let mut rec = Recorder::begin_run(&model, &probes, sink, &mut buf, run_id).unwrap();
        for t in [0u32, 3, 5, 3] {
            session.step_with(t, &mut rec).unwrap();
        }
        let _ = rec.finish();
        out
    }

    fn lines(out: &[u8]) -> Vec<serde_json::Value> {
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn garbage_a_cut_run_and_a_restart_decode_to_the_intact_frames() {
        let whole = trace(5);
        let mut input = b"\x13\x37garbage\x00\xff\xfe\x00".to_vec();
        // Cut mid-run and mid-frame; the line then idles (a 0x00, e.g. a break) and the
        // device restarts the run with the same id.
        input.extend_from_slice(&whole[..whole.len() / 2 + 3]);
        input.push(0);
        input.extend_from_slice(&whole);
        let mut out = Vec::new();
        let mut f = Follower::new(json_lines(&mut out));
        for piece in input.chunks(7) {
            f.push(piece).unwrap();
        }
        let totals = f.finish().unwrap();
        let ls = lines(&out);
        let events: Vec<&str> = ls.iter().map(|l| l["event"].as_str().unwrap()).collect();
        assert_eq!(totals.runs_ended, 1);
        assert_eq!(totals.runs_cut, 1);
        let ended = ls.iter().find(|l| l["event"] == "run_ended").unwrap();
        assert_eq!(ended["lost_frames"], 0);
        assert_eq!(ended["missing_records"], 0);
        assert_eq!(ended["positions"], 4);
        // The restarted run's records: every head's pattern at 4 positions.
        let started = ls.iter().find(|l| l["event"] == "run_started").unwrap();
        let heads = started["n_heads"].as_u64().unwrap() * started["n_layers"].as_u64().unwrap();
        let second = ended["run"].as_u64().unwrap();
        let records = ls
            .iter()
            .filter(|l| l["event"] == "record" && l["run"] == second)
            .count();
        assert_eq!(records as u64, 4 * heads, "{events:?}");
        assert_eq!(second, 1, "the cut run is run 0");
        assert!(events.contains(&"bad"));
    }
}
