//! The trace wire format: what a [`Recorder`] writes, frame by frame, to any byte sink.
//!
//! A trace is a sequence of frames. Each frame is one postcard-serialized [`Frame`],
//! followed by the CRC-32 (ISO-HDLC, little-endian) of those bytes, COBS-encoded and
//! terminated by `0x00`. A receiver that loses or corrupts bytes resynchronises at the
//! next `0x00` and loses only the frames they touched; every frame carries a sequence
//! number, so the receiver knows what it lost. The full layout and its versioning are
//! specified in `core/TRACE_FORMAT.md`.

use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use crate::blob::{Model, CRC};
use crate::config::Config;
use crate::hooks::{HookPoint, Hooks, Site};
use crate::probe::{Precision, Probe, ProbeSet, MAX_PROBES};
use crate::Error;

/// Version of the trace format this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Bytes of one record frame beyond its payload values, at most: run and sequence
/// (5 + 5), variant (1), point (1), layer (3), head (4), position (3), precision (1),
/// scale (4), payload length (5), CRC (4) = 36.
const RECORD_OVERHEAD: usize = 40;

/// A decoded frame: which run it belongs to, its place in the run, and what it says.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Frame<'a> {
    /// Run identifier chosen by the recorder's caller; frames of different runs never mix.
    pub run: u32,
    /// Position of the frame in its run (the header is 0), so a receiver sees gaps.
    pub seq: u32,
    #[serde(borrow)]
    pub body: Body<'a>,
}

/// What a frame carries.
// The header is large (the probe set inline) but frames are decoded one at a time and
// there is no allocator to box it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum Body<'a> {
    /// Starts a run: which model, its shape, and what is recorded.
    Header(Header),
    /// Position `pos` starts, with input `token`.
    Token { pos: u16, token: u32 },
    /// One recorded value.
    Record(#[serde(borrow)] Record<'a>),
    /// Ends a run: positions processed, records written and records that could not be.
    End {
        positions: u32,
        records: u32,
        dropped: u32,
    },
}

/// The first frame of a run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Header {
    pub format: u16,
    /// CRC-32 of the model blob ([`Model::checksum`]).
    pub model_crc: u32,
    pub config: Config,
    /// [`crate::Processing`] bits of the blob.
    pub processing: u32,
    pub probes: heapless::Vec<Probe, MAX_PROBES>,
}

/// One recorded value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Record<'a> {
    pub point: HookPoint,
    pub layer: u16,
    pub head: Option<u16>,
    pub pos: u16,
    pub precision: Precision,
    /// Int8 payloads: value = byte as i8 * scale. Otherwise 1.
    pub scale: f32,
    /// Little-endian values at `precision`.
    pub data: &'a [u8],
}

impl Record<'_> {
    pub fn site(&self) -> Site {
        Site {
            point: self.point,
            layer: self.layer,
            head: self.head,
            pos: self.pos,
        }
    }

    /// Number of values in the payload.
    pub fn len(&self) -> usize {
        self.data.len() / self.precision.bytes_per_value()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Value `i` of the payload as f32 (NaN for `i >= self.len()`).
    pub fn value(&self, i: usize) -> f32 {
        let n = self.precision.bytes_per_value();
        let Some(d) = i.checked_mul(n).and_then(|at| self.data.get(at..at + n)) else {
            return f32::NAN;
        };
        match self.precision {
            Precision::F32 => f32::from_le_bytes([d[0], d[1], d[2], d[3]]),
            Precision::F16 => half::f16::from_le_bytes([d[0], d[1]]).to_f32(),
            Precision::Int8 => (d[0] as i8) as f32 * self.scale,
        }
    }

    /// The values as f32, into `out` (`out.len() >= self.len()`).
    pub fn values_into(&self, out: &mut [f32]) {
        for (i, o) in out.iter_mut().enumerate().take(self.len()) {
            *o = self.value(i);
        }
    }
}

// ---- Encoding. These mirror `Frame` field for field (same variant order, same
// field types on the wire), but borrow what they send instead of owning it. ----

#[derive(Serialize)]
struct FrameOut<'a> {
    run: u32,
    seq: u32,
    body: BodyOut<'a>,
}

#[derive(Serialize)]
enum BodyOut<'a> {
    Header(HeaderOut<'a>),
    Token {
        pos: u16,
        token: u32,
    },
    Record(RecordOut<'a>),
    End {
        positions: u32,
        records: u32,
        dropped: u32,
    },
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    format: u16,
    model_crc: u32,
    config: Config,
    processing: u32,
    probes: &'a [Probe],
}

#[derive(Serialize)]
struct RecordOut<'a> {
    point: HookPoint,
    layer: u16,
    head: Option<u16>,
    pos: u16,
    precision: Precision,
    scale: f32,
    data: Payload<'a>,
}

/// f32 values sent as a byte string at a precision, encoded on the fly (no scratch copy).
struct Payload<'a> {
    values: &'a [f32],
    precision: Precision,
    inv_scale: f32,
}

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.values.len() * self.precision.bytes_per_value();
        let mut seq = s.serialize_seq(Some(n))?;
        for v in self.values {
            match self.precision {
                Precision::F32 => {
                    for b in v.to_le_bytes() {
                        seq.serialize_element(&b)?;
                    }
                }
                Precision::F16 => {
                    for b in half::f16::from_f32(*v).to_le_bytes() {
                        seq.serialize_element(&b)?;
                    }
                }
                Precision::Int8 => {
                    let q = libm::roundf(v * self.inv_scale).clamp(-127.0, 127.0) as i8;
                    seq.serialize_element(&(q as u8))?;
                }
            }
        }
        seq.end()
    }
}

/// Symmetric int8 scale of a payload (1 for an all-zero or non-finite one).
fn int8_scale(values: &[f32]) -> f32 {
    let amax = values.iter().fold(0.0f32, |m, v| m.max(libm::fabsf(*v)));
    if amax > 0.0 && amax.is_finite() {
        amax / 127.0
    } else {
        1.0
    }
}

/// Serializes one frame with CRC and COBS into `buf`; returns the frame's bytes
/// (including the terminating 0x00).
fn encode<'b>(frame: &FrameOut<'_>, buf: &'b mut [u8]) -> Result<&'b mut [u8], Error> {
    use postcard::ser_flavors::{crc::CrcModifier, Cobs, Slice};
    let capacity = buf.len();
    let too_large = Error::FrameTooLarge {
        needed: capacity + 1,
        capacity,
    };
    let flavor = CrcModifier::new(
        Cobs::try_new(Slice::new(buf)).map_err(|_| too_large)?,
        CRC.digest(),
    );
    postcard::serialize_with_flavor(frame, flavor).map_err(|_| too_large)
}

/// Decodes one frame in place. `frame` is the bytes between two `0x00` delimiters
/// (without them); it is overwritten by the decoded bytes, which the result borrows.
pub fn decode_frame(frame: &mut [u8]) -> Result<Frame<'_>, Error> {
    let n = cobs::decode_in_place(frame).map_err(|_| Error::CorruptFrame)?;
    let decoded = &frame[..n];
    let f: Frame<'_> =
        postcard::from_bytes_crc32(decoded, CRC.digest()).map_err(|_| Error::CorruptFrame)?;
    if let Body::Header(h) = &f.body {
        if h.format != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                found: h.format,
                supported: FORMAT_VERSION,
            });
        }
        // A recorder writes only validated configs: anything else is corrupt content
        // that passed the CRC, and sizes computed from it could not be trusted.
        if h.config.validate().is_err() {
            return Err(Error::CorruptFrame);
        }
    }
    Ok(f)
}

/// Size of a frame buffer that holds any frame a run of a model with `cfg` writes.
pub const fn frame_buffer_len(cfg: &Config) -> usize {
    // The widest value a hook hands over: a residual vector, the logits, one row of
    // attention scores, or one head's q/k/v/z.
    let mut widest = cfg.d_vocab_out as usize;
    let others = [cfg.d_model, cfg.n_ctx, cfg.d_head];
    let mut i = 0;
    while i < others.len() {
        if others[i] as usize > widest {
            widest = others[i] as usize;
        }
        i += 1;
    }
    let record = widest.saturating_mul(4).saturating_add(RECORD_OVERHEAD);
    let header = MAX_PROBES * 12 + 96;
    let raw = if record > header { record } else { header };
    // COBS adds one byte per 254 and the delimiter.
    raw.saturating_add(raw / 254 + 2)
}

/// Where trace bytes go: a UART, a semihosting channel, a file, a ring buffer.
/// Implemented for closures `FnMut(&[u8]) -> Result<(), Error>`.
pub trait Sink {
    /// Writes a whole frame. An error means the frame was not (completely) written.
    fn write_frame(&mut self, frame: &[u8]) -> Result<(), Error>;
}

impl<F: FnMut(&[u8]) -> Result<(), Error>> Sink for F {
    fn write_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        self(frame)
    }
}

/// A fixed-capacity in-memory ring of frames. When it is full, the oldest whole frames
/// are dropped to make room, so what it holds is always a valid stream of the newest frames.
pub struct RingSink<const N: usize> {
    bytes: heapless::Deque<u8, N>,
    dropped_frames: u32,
}

impl<const N: usize> Default for RingSink<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> RingSink<N> {
    pub const fn new() -> Self {
        RingSink {
            bytes: heapless::Deque::new(),
            dropped_frames: 0,
        }
    }

    /// Frames dropped to make room.
    pub fn dropped_frames(&self) -> u32 {
        self.dropped_frames
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Moves up to `out.len()` bytes (oldest first) out of the ring; returns how many.
    pub fn drain_into(&mut self, out: &mut [u8]) -> usize {
        let mut n = 0;
        while n < out.len() {
            match self.bytes.pop_front() {
                Some(b) => {
                    out[n] = b;
                    n += 1;
                }
                None => break,
            }
        }
        n
    }
}

impl<const N: usize> Sink for RingSink<N> {
    fn write_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        if frame.len() > N {
            return Err(Error::SinkFull);
        }
        while N - self.bytes.len() < frame.len() {
            // Drop the oldest frame: everything up to and including its 0x00.
            while let Some(b) = self.bytes.pop_front() {
                if b == 0 {
                    break;
                }
            }
            self.dropped_frames = self.dropped_frames.saturating_add(1);
        }
        for &b in frame {
            // Room was made above.
            let _ = self.bytes.push_back(b);
        }
        Ok(())
    }
}

/// Summary of a recorded run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Summary {
    /// Frames written (header, tokens, records, end).
    pub frames: u32,
    pub records: u32,
    /// Records that were selected but could not be written.
    pub dropped: u32,
    /// The first error met, if any.
    pub error: Option<Error>,
}

/// Records the hook values a probe set selects as trace frames written to a sink.
/// It is a [`Hooks`] implementation: pass it to [`crate::Session::step_with`], alone or
/// after interventions (a tuple `(intervention, recorder)` records changed values).
///
/// A failing sink never stops the forward pass: the recorder counts what it could not
/// write and reports it in the end frame and the [`Summary`]; frames already written
/// stay valid.
pub struct Recorder<'p, 'b, S: Sink, const N: usize = MAX_PROBES> {
    probes: &'p ProbeSet<N>,
    mask: u32,
    run: u32,
    sink: S,
    buf: &'b mut [u8],
    seq: u32,
    positions: u32,
    records: u32,
    dropped: u32,
    error: Option<Error>,
}

impl<'p, 'b, S: Sink, const N: usize> Recorder<'p, 'b, S, N> {
    /// Starts run 0: see [`Recorder::begin_run`].
    pub fn begin(
        model: &Model<'_>,
        probes: &'p ProbeSet<N>,
        sink: S,
        frame_buf: &'b mut [u8],
    ) -> Result<Self, Error> {
        Self::begin_run(model, probes, sink, frame_buf, 0)
    }

    /// Starts a run: checks the probes against the model and writes the header frame.
    /// `frame_buf` must hold [`frame_buffer_len`] bytes for the model. Several runs may
    /// share one stream (e.g. firmware tracing prompt after prompt); give each its own
    /// `run` id so that a receiver that lost a header never mixes their frames.
    pub fn begin_run(
        model: &Model<'_>,
        probes: &'p ProbeSet<N>,
        sink: S,
        frame_buf: &'b mut [u8],
        run: u32,
    ) -> Result<Self, Error> {
        let cfg = model.config();
        probes.validate(cfg)?;
        // The header carries the probe set, and a receiver reads at most MAX_PROBES.
        if probes.len() > MAX_PROBES {
            return Err(Error::TooManyProbes {
                capacity: MAX_PROBES,
            });
        }
        let needed = frame_buffer_len(cfg);
        if frame_buf.len() < needed {
            return Err(Error::BufferTooSmall {
                needed,
                provided: frame_buf.len(),
            });
        }
        let mut r = Recorder {
            probes,
            mask: probes.point_mask(),
            run,
            sink,
            buf: frame_buf,
            seq: 0,
            positions: 0,
            records: 0,
            dropped: 0,
            error: None,
        };
        r.emit(BodyOut::Header(HeaderOut {
            format: FORMAT_VERSION,
            model_crc: model.checksum(),
            config: *cfg,
            processing: model.processing().to_bits(),
            probes: probes.probes(),
        }))?;
        Ok(r)
    }

    fn emit(&mut self, body: BodyOut<'_>) -> Result<(), Error> {
        let frame = FrameOut {
            run: self.run,
            seq: self.seq,
            body,
        };
        let bytes = encode(&frame, self.buf)?;
        self.seq = self.seq.wrapping_add(1);
        self.sink.write_frame(bytes)
    }

    fn note(&mut self, e: Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Writes the end frame and returns the summary.
    pub fn finish(mut self) -> (Summary, S) {
        let end = BodyOut::End {
            positions: self.positions,
            records: self.records,
            dropped: self.dropped,
        };
        if let Err(e) = self.emit(end) {
            self.note(e);
        }
        (
            Summary {
                frames: self.seq,
                records: self.records,
                dropped: self.dropped,
                error: self.error,
            },
            self.sink,
        )
    }

    /// The summary so far (without ending the run).
    pub fn summary(&self) -> Summary {
        Summary {
            frames: self.seq,
            records: self.records,
            dropped: self.dropped,
            error: self.error,
        }
    }
}

impl<S: Sink, const N: usize> Hooks for Recorder<'_, '_, S, N> {
    #[inline(always)]
    fn wants(&self, point: HookPoint) -> bool {
        self.mask & (1 << point as u32) != 0
    }

    fn hook(&mut self, site: Site, value: &mut [f32]) {
        let Some(precision) = self.probes.select(&site) else {
            return;
        };
        let scale = match precision {
            Precision::Int8 => int8_scale(value),
            _ => 1.0,
        };
        let frame = BodyOut::Record(RecordOut {
            point: site.point,
            layer: if site.point.per_layer() {
                site.layer
            } else {
                0
            },
            head: site.head,
            pos: site.pos,
            precision,
            scale,
            data: Payload {
                values: value,
                precision,
                inv_scale: 1.0 / scale,
            },
        });
        match self.emit(frame) {
            Ok(()) => self.records = self.records.saturating_add(1),
            Err(e) => {
                self.dropped = self.dropped.saturating_add(1);
                self.note(e);
            }
        }
    }

    fn token(&mut self, pos: u16, token: u32) {
        self.positions = self.positions.max(u32::from(pos) + 1);
        if let Err(e) = self.emit(BodyOut::Token { pos, token }) {
            self.note(e);
        }
    }
}
