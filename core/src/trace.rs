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

mod ring;
pub use ring::{BlockWhenFull, DropWhenFull, FrameRing, RingReader, RingWriter, END_RESERVE};

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
                    let q = quantize_payload(*v, self.inv_scale);
                    seq.serialize_element(&(q as u8))?;
                }
            }
        }
        seq.end()
    }
}

/// Symmetric int8 scale of a payload (1 for an all-zero or non-finite one).
fn int8_scale(values: &[f32]) -> f32 {
    // max |v| ignoring NaN (as `f32::max` does), on the bit patterns: with the sign
    // cleared their order is that of the magnitudes, and NaN patterns lie above
    // infinity's (no library call for `fmaxf` on a Cortex-M).
    let amax = f32::from_bits(values.iter().fold(0u32, |m, v| {
        let b = v.to_bits() & 0x7fff_ffff;
        if b <= 0x7f80_0000 {
            m.max(b)
        } else {
            m
        }
    }));
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

/// [`CRC`] of `bytes`. On hosts `crc32fast` computes the same CRC (the zlib one) with
/// carry-less multiplication where the CPU has it (about 10x a table); bare-metal
/// targets keep the 1 KiB table.
#[cfg(not(target_os = "none"))]
#[inline]
fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}
#[cfg(target_os = "none")]
#[inline]
fn crc32(bytes: &[u8]) -> u32 {
    crc32_slice4(bytes)
}

/// The four tables of slicing-by-4 for the reflected CRC-32 polynomial 0xEDB88320
/// (4 KiB of flash): `TABLES[0]` is the classic byte table, `TABLES[k][b]` the CRC of
/// byte `b` followed by `k` zero bytes.
const CRC_TABLES: [[u32; 256]; 4] = {
    let mut t = [[0u32; 256]; 4];
    let mut b = 0;
    while b < 256 {
        let mut c = b as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][b] = c;
        b += 1;
    }
    let mut b = 0;
    while b < 256 {
        let mut k = 1;
        while k < 4 {
            let prev = t[k - 1][b];
            t[k][b] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            k += 1;
        }
        b += 1;
    }
    t
};

/// [`CRC`] (CRC-32/ISO-HDLC) four bytes per step ("slicing-by-4"): about a third of
/// the instructions of the one-table loop on a Cortex-M, for 3 KiB more table.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
#[inline(always)]
fn crc32_slice4(bytes: &[u8]) -> u32 {
    // Four separate statics: each lookup is then one load from a base in a register.
    static T0: [u32; 256] = CRC_TABLES[0];
    static T1: [u32; 256] = CRC_TABLES[1];
    static T2: [u32; 256] = CRC_TABLES[2];
    static T3: [u32; 256] = CRC_TABLES[3];
    let mut c = !0u32;
    let mut words = bytes.chunks_exact(4);
    for w in &mut words {
        c ^= u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        c = T3[(c & 0xff) as usize]
            ^ T2[((c >> 8) & 0xff) as usize]
            ^ T1[((c >> 16) & 0xff) as usize]
            ^ T0[(c >> 24) as usize];
    }
    for &b in words.remainder() {
        c = (c >> 8) ^ T0[((c ^ b as u32) & 0xff) as usize];
    }
    !c
}

/// Raw frames up to this size are COBS-encoded from offset 1 (see `encode_record`).
const SMALL_FRAME: usize = 1024;

/// Moves `buf[src..src + len]` down to `buf[dst..]` (`dst <= src`; the ranges may
/// overlap). In pieces of `src - dst` bytes, each copied to where the previous one
/// was (so no piece overlaps its destination) when that gap is large; byte by byte
/// when it is small.
#[inline]
fn move_down(buf: &mut [u8], src: usize, dst: usize, len: usize) {
    let gap = src.saturating_sub(dst);
    if gap == 0 || len == 0 || src.saturating_add(len) > buf.len() {
        return;
    }
    if gap < 16 {
        for k in 0..len {
            buf[dst + k] = buf[src + k];
        }
        return;
    }
    let mut done = 0;
    while done < len {
        let n = gap.min(len - done);
        let (lo, hi) = buf.split_at_mut(src + done);
        lo[dst + done..dst + done + n].copy_from_slice(&hi[..n]);
        done += n;
    }
}

/// Writes `v` as a postcard (LEB128) varint at `out[*at..]`.
#[inline(always)]
fn put_varint(out: &mut [u8], at: &mut usize, mut v: u32) {
    while v >= 0x80 {
        out[*at] = (v as u8) | 0x80;
        *at += 1;
        v >>= 7;
    }
    out[*at] = v as u8;
    *at += 1;
}

/// Largest postcard prefix of a record frame: run, seq (5 + 5), body and point (1 + 1),
/// layer (3), head (1 + 3), pos (3), precision (1), scale (4), data length (5).
const RECORD_PREFIX_MAX: usize = 32;

/// Encodes a record frame into `buf`, byte for byte what [`encode`] writes for the same
/// [`FrameOut`] (a test checks it on random records), without going through serde one
/// byte at a time: the postcard bytes are laid out at the end of `buf`, checksummed in
/// one call, and COBS-encoded in place towards the start. `None` when `buf` might be
/// too small for that (the caller then takes the serde path, which knows exactly).
/// Always inlined: a firmware with two sink types has two recorders, and a call
/// (instead of the inlined encoder) costs a tenth of the recording's instructions.
#[inline(always)]
fn encode_record<'b>(
    run: u32,
    seq: u32,
    rec: &RecordOut<'_>,
    buf: &'b mut [u8],
) -> Option<&'b mut [u8]> {
    let values = rec.data.values;
    let data_len = values.len() * rec.precision.bytes_per_value();
    let data_len_u32 = u32::try_from(data_len).ok()?;
    let prefix = |out: &mut [u8]| {
        let mut n = 0;
        put_varint(out, &mut n, run);
        put_varint(out, &mut n, seq);
        put_varint(out, &mut n, 2); // Body::Record
        put_varint(out, &mut n, rec.point as u32);
        put_varint(out, &mut n, rec.layer as u32);
        match rec.head {
            None => put_varint(out, &mut n, 0),
            Some(h) => {
                put_varint(out, &mut n, 1);
                put_varint(out, &mut n, h as u32);
            }
        }
        put_varint(out, &mut n, rec.pos as u32);
        put_varint(out, &mut n, rec.precision as u32);
        out[n..n + 4].copy_from_slice(&rec.scale.to_bits().to_le_bytes());
        n += 4;
        put_varint(out, &mut n, data_len_u32);
        n
    };
    encode_fast::<RECORD_PREFIX_MAX>(prefix, data_len, buf, |data| match rec.precision {
        Precision::F32 => {
            for (o, v) in data.chunks_exact_mut(4).zip(values) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        Precision::F16 => {
            for (o, v) in data.chunks_exact_mut(2).zip(values) {
                o.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
        Precision::Int8 => {
            for (o, v) in data.iter_mut().zip(values) {
                *o = quantize_payload(*v, rec.data.inv_scale) as u8;
            }
        }
    })
}

/// Space [`encode_record`] needs for a record with `data_len` payload bytes (the
/// largest prefix, the CRC, COBS's code bytes and the delimiter).
#[inline]
const fn record_frame_max(data_len: usize) -> usize {
    let raw = RECORD_PREFIX_MAX + data_len + 4;
    raw + raw / 254 + 3
}

/// Space [`encode_token`] needs: a 20-byte prefix and the CRC, plus COBS.
const TOKEN_FRAME_MAX: usize = 20 + 4 + 3;

/// A token frame, as [`encode`] writes it for `Body::Token` (see [`encode_record`]).
#[inline(always)]
fn encode_token(run: u32, seq: u32, pos: u16, token: u32, buf: &mut [u8]) -> Option<&mut [u8]> {
    let prefix = |out: &mut [u8]| {
        let mut n = 0;
        put_varint(out, &mut n, run);
        put_varint(out, &mut n, seq);
        put_varint(out, &mut n, 1); // Body::Token
        put_varint(out, &mut n, pos as u32);
        put_varint(out, &mut n, token);
        n
    };
    encode_fast::<20>(prefix, 0, buf, |_| {})
}

/// The frame of the postcard bytes `prefix` writes (at most `P`; it returns how many),
/// followed by `data_len` bytes that `fill` writes: laid out in `buf`, checksummed in
/// one call and COBS-encoded in place. `None` when `buf` might be too small for that
/// (the caller then takes the serde path, which knows exactly).
#[inline(always)]
fn encode_fast<const P: usize>(
    prefix: impl Fn(&mut [u8]) -> usize,
    data_len: usize,
    buf: &mut [u8],
    fill: impl FnOnce(&mut [u8]),
) -> Option<&mut [u8]> {
    // Postcard bytes and CRC, `raw` in all, go at `buf[off..]`; the COBS output, at most
    // `raw + raw / 254 + 2` bytes, is written from `buf[0]` on. Small frames start right
    // after the first code byte (the prefix is written there directly), so that blocks
    // ending in a zero need no move at all; large ones leave room for all the code bytes
    // that 254-byte blocks can add, so that nothing ever moves up (see `cobs_in_place`).
    let small = P + data_len + 4 <= SMALL_FRAME;
    let (off, n, raw) = if small && buf.len() > P + 1 {
        let n = prefix(&mut buf[1..1 + P]);
        (1, n, n + data_len + 4)
    } else {
        let mut tmp = [0u8; P];
        let n = prefix(&mut tmp);
        let raw = n + data_len + 4;
        let off = 1 + raw / 254;
        if buf.len() >= off + n {
            buf[off..off + n].copy_from_slice(&tmp[..n]);
        }
        (off, n, raw)
    };
    if buf.len() < 2 + raw + raw / 254 || buf.len() < off + raw + 1 {
        return None;
    }
    let body = &mut buf[off..off + raw];
    fill(&mut body[n..n + data_len]);
    let crc = crc32(&body[..raw - 4]);
    body[raw - 4..].copy_from_slice(&crc.to_le_bytes());
    let len = cobs_in_place(buf, off, raw, n);
    Some(&mut buf[..len])
}

#[inline(always)]
fn quantize_payload(v: f32, inv_scale: f32) -> i8 {
    // `libm::roundf(v * inv_scale).clamp(-127.0, 127.0) as i8`, without the call.
    crate::kernels::round_clamp_i8(v * inv_scale)
}

/// Index of the first zero byte of `s`, a word at a time.
#[inline(always)]
fn first_zero(s: &[u8]) -> Option<usize> {
    const W: usize = core::mem::size_of::<usize>();
    const LO: usize = usize::MAX / 255; // 0x0101...
    const HI: usize = LO << 7; // 0x8080...
    let mut words = s.chunks_exact(W);
    let mut base = 0;
    for w in &mut words {
        let v = usize::from_le_bytes(w.try_into().unwrap_or([0xff; W]));
        // Non-zero exactly when some byte of v is zero.
        if v.wrapping_sub(LO) & !v & HI != 0 {
            return w.iter().position(|b| *b == 0).map(|i| base + i);
        }
        base += W;
    }
    words
        .remainder()
        .iter()
        .position(|b| *b == 0)
        .map(|i| base + i)
}

/// COBS-encodes `buf[off..off + raw]` into `buf[0..]` and appends the `0x00` delimiter;
/// returns the frame's length. Identical to postcard's `Cobs` flavor, which starts a new
/// block after every 254 non-zero bytes, even at the very end. `buf` must hold
/// `2 + raw + raw / 254` bytes and `off >= 1`; `head` is how many leading bytes are
/// better looked at one by one (the frame's postcard fields).
///
/// Each block's data moves down by `d = i - (w + 1)` (read position minus the write
/// position after the code byte), which stays the same across blocks that end in a
/// zero (the zero's place becomes the next code byte) and shrinks by one after a full
/// block of 254 non-zero bytes (its next code byte is new). With `off = 1`, `d` starts
/// at 0: nothing moves until a full block, and then, instead, the rest of the data
/// moves up one byte to make room for the code byte (cheap for small frames).
fn cobs_in_place(buf: &mut [u8], off: usize, raw: usize, head: usize) -> usize {
    if off == 1 {
        return cobs_from_one(buf, raw, head);
    }
    let mut end = off + raw;
    let (mut w, mut i) = (0, off);
    loop {
        let lim = end.min(i + 254);
        match first_zero(&buf[i..lim]) {
            Some(len) => {
                move_down(buf, i, w + 1, len);
                buf[w] = len as u8 + 1;
                w += len + 1;
                i += len + 1;
            }
            None => {
                let len = lim - i;
                if len == 254 && w + 1 == i {
                    // Room for the next code byte: the rest moves up by one.
                    buf.copy_within(lim..end, lim + 1);
                    end += 1;
                    buf[w] = 0xff;
                    w = lim;
                    i = lim + 1;
                    continue;
                }
                move_down(buf, i, w + 1, len);
                buf[w] = len as u8 + 1;
                w += len + 1;
                i = lim;
                if len < 254 {
                    break;
                }
            }
        }
    }
    buf[w] = 0;
    w + 1
}

/// [`cobs_in_place`] for data at `buf[1..1 + raw]`: every block that ends in a zero is
/// already where it belongs (the zero's place takes the next block's code byte), so the
/// encoding only writes code bytes, found by a scan a word at a time; a full block of
/// 254 non-zero bytes moves the rest of the data up one byte.
fn cobs_from_one(buf: &mut [u8], raw: usize, head: usize) -> usize {
    let mut end = 1 + raw;
    let mut code = 0; // where the current block's code byte goes
                      // The first `head` bytes (a frame's postcard fields, often zero) one by one: a
                      // zero costs a few instructions here, a restart of the word scan below. No block
                      // can fill up in fewer than 254 bytes.
    let head = head.min(raw).min(253);
    for k in 1..1 + head {
        if buf[k] == 0 {
            buf[code] = (k - code) as u8;
            code = k;
        }
    }
    let mut k = 1 + head; // next byte to look at
    loop {
        let lim = end.min(code + 255);
        k += first_zero(&buf[k..lim]).unwrap_or(lim - k);
        if k < lim {
            // A zero: it becomes the next block's code byte.
            buf[code] = (k - code) as u8;
            code = k;
            k += 1;
        } else if k == code + 255 {
            // 254 non-zero bytes: a new block starts here, in a byte of its own.
            buf[code] = 0xff;
            buf.copy_within(k..end, k + 1);
            end += 1;
            code = k;
            k += 1;
        } else {
            buf[code] = (end - code) as u8;
            buf[end] = 0;
            return end + 1;
        }
    }
}

/// Decodes one frame in place. `frame` is the bytes between two `0x00` delimiters
/// (without them); it is overwritten by the decoded bytes, which the result borrows.
pub fn decode_frame(frame: &mut [u8]) -> Result<Frame<'_>, Error> {
    let n = cobs::decode_in_place(frame).map_err(|_| Error::CorruptFrame)?;
    let decoded = &frame[..n];
    // The CRC must be the frame's last four bytes: a frame followed by anything (e.g. two
    // frames merged by a corrupted delimiter) is corrupt, not a frame plus ignored bytes.
    let (f, rest): (Frame<'_>, _) =
        postcard::take_from_bytes_crc32(decoded, CRC.digest()).map_err(|_| Error::CorruptFrame)?;
    if !rest.is_empty() {
        return Err(Error::CorruptFrame);
    }
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

    /// Writes the run's last frame (the end frame, with the counts of what was
    /// dropped). A sink that drops frames when it is full keeps room for this one.
    fn write_last_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        self.write_frame(frame)
    }

    /// Sinks that keep frames in memory (a trace ring) lend the recorder their free
    /// space, so that a frame is encoded where it is kept instead of being copied
    /// there: `Ok(Some(space))` of at least `max` bytes, followed by
    /// [`commit`](Sink::commit) of the frame's length; `Err` refuses the frame (counted
    /// like a failed write). The default, `Ok(None)`, makes the recorder encode into
    /// its own frame buffer and call [`write_frame`](Sink::write_frame).
    fn lend(&mut self, max: usize) -> Result<Option<&mut [u8]>, Error> {
        let _ = max;
        Ok(None)
    }

    /// Keeps the first `len` bytes of the space [`lend`](Sink::lend) gave: one frame.
    fn commit(&mut self, len: usize) -> Result<(), Error> {
        let _ = len;
        Ok(())
    }
}

impl<F: FnMut(&[u8]) -> Result<(), Error>> Sink for F {
    fn write_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        self(frame)
    }
}

/// Frames to any [`embedded_io::Write`] writer (a HAL's UART, a USB CDC class):
/// `Recorder::begin(&model, &probes, IoSink(uart), &mut frame_buf)`. A frame is written
/// whole with `write_all`; a writer error is [`Error::SinkFailed`], and the recorder
/// goes on counting what it could not write.
#[cfg(feature = "embedded-io")]
pub struct IoSink<W>(pub W);

#[cfg(feature = "embedded-io")]
impl<W: embedded_io::Write> Sink for IoSink<W> {
    fn write_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        self.0.write_all(frame).map_err(|_| Error::SinkFailed)
    }
}

/// [`IoSink`] for writers of embedded-io **0.6** (feature `embedded-io-06`), which many
/// HALs still implement (nrf52840-hal 0.18's `UarteTx`, rp2040-hal, stm32f4xx-hal):
/// `Recorder::begin(&model, &probes, IoSink06(uart_tx), &mut frame_buf)`.
#[cfg(feature = "embedded-io-06")]
pub struct IoSink06<W>(pub W);

#[cfg(feature = "embedded-io-06")]
impl<W: embedded_io_06::Write> Sink for IoSink06<W> {
    fn write_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        self.0.write_all(frame).map_err(|_| Error::SinkFailed)
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
    /// Frames (records, and the token frames that start positions) that could not be
    /// written: a failing sink, or a full one that drops frames.
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
        let last = matches!(body, BodyOut::End { .. });
        let frame = FrameOut {
            run: self.run,
            seq: self.seq,
            body,
        };
        let bytes = encode(&frame, self.buf)?;
        self.seq = self.seq.wrapping_add(1);
        if last {
            self.sink.write_last_frame(bytes)
        } else {
            self.sink.write_frame(bytes)
        }
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
        let record = RecordOut {
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
        };
        let (run, seq) = (self.run, self.seq);
        let max = record_frame_max(record.data.values.len() * precision.bytes_per_value());
        // Encoded in the sink's own memory when it lends some (a ring: no copy), else
        // in the frame buffer. One call site: the encoder is inlined here.
        let (space, in_place) = match self.sink.lend(max) {
            Ok(Some(space)) => (space, true),
            Ok(None) => (&mut *self.buf, false),
            Err(e) => {
                // Refused: the frame's number is used all the same (a gap the host sees).
                self.seq = self.seq.wrapping_add(1);
                self.dropped = self.dropped.saturating_add(1);
                self.note(e);
                return;
            }
        };
        let written = match encode_record(run, seq, &record, space).map(|b| b.len()) {
            Some(len) => {
                self.seq = self.seq.wrapping_add(1);
                if in_place {
                    self.sink.commit(len)
                } else {
                    self.sink.write_frame(&self.buf[..len])
                }
            }
            None => self.emit(BodyOut::Record(record)),
        };
        match written {
            Ok(()) => self.records = self.records.saturating_add(1),
            Err(e) => {
                self.dropped = self.dropped.saturating_add(1);
                self.note(e);
            }
        }
    }

    fn token(&mut self, pos: u16, token: u32) {
        self.positions = self.positions.max(u32::from(pos) + 1);
        let (run, seq) = (self.run, self.seq);
        let (space, in_place) = match self.sink.lend(TOKEN_FRAME_MAX) {
            Ok(Some(space)) => (space, true),
            Ok(None) => (&mut *self.buf, false),
            Err(e) => {
                self.seq = self.seq.wrapping_add(1);
                self.dropped = self.dropped.saturating_add(1);
                self.note(e);
                return;
            }
        };
        let written = match encode_token(run, seq, pos, token, space).map(|b| b.len()) {
            Some(len) => {
                self.seq = self.seq.wrapping_add(1);
                if in_place {
                    self.sink.commit(len)
                } else {
                    self.sink.write_frame(&self.buf[..len])
                }
            }
            None => self.emit(BodyOut::Token { pos, token }),
        };
        if let Err(e) = written {
            self.dropped = self.dropped.saturating_add(1);
            self.note(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Rng;

    /// The fast record encoder writes exactly the bytes of the serde path, for every
    /// precision, head form, varint width and payload length (across the 254-byte COBS
    /// blocks), with payloads from no zero bytes to nothing but zeros.
    #[test]
    fn fast_record_encoding_matches_postcard() {
        let mut rng = Rng::new(42);
        let mut fast_buf = [0u8; 4200];
        let mut slow_buf = [0u8; 4200];
        let mut values = [0.0f32; 1000];
        for case in 0..4000 {
            let len = match case % 4 {
                0 => (rng.next_u64() % 8) as usize,
                1 => (rng.next_u64() % 140) as usize,
                _ => (rng.next_u64() % 1000) as usize,
            };
            let zeros = rng.next_f32();
            for v in values[..len].iter_mut() {
                *v = if rng.next_f32() < zeros {
                    0.0
                } else {
                    match rng.next_u64() % 4 {
                        // Exact small integers and powers of two have zero low bytes.
                        0 => (rng.next_u64() % 5) as f32,
                        1 => f32::from_bits(rng.next_u64() as u32 & 0xff80_0000),
                        _ => (rng.next_f32() - 0.5) * 100.0,
                    }
                };
            }
            let precision = [Precision::F32, Precision::F16, Precision::Int8][case % 3];
            let big = |r: &mut Rng| match r.next_u64() % 3 {
                0 => (r.next_u64() % 128) as u32,
                1 => (r.next_u64() % 20_000) as u32,
                _ => r.next_u64() as u32,
            };
            let run = big(&mut rng);
            let seq = big(&mut rng);
            let scale = match precision {
                Precision::Int8 => int8_scale(&values[..len]),
                _ => 1.0,
            };
            let rec = || RecordOut {
                point: HookPoint::ALL[case % HookPoint::ALL.len()],
                layer: (big(&mut Rng::new(case as u64)) % 65_536) as u16,
                head: if case % 5 == 0 {
                    None
                } else {
                    Some((case * 37 % 70_000) as u16)
                },
                pos: (case * 7919 % 65_536) as u16,
                precision,
                scale,
                data: Payload {
                    values: &values[..len],
                    precision,
                    inv_scale: 1.0 / scale,
                },
            };
            let slow = encode(
                &FrameOut {
                    run,
                    seq,
                    body: BodyOut::Record(rec()),
                },
                &mut slow_buf,
            )
            .unwrap()
            .to_vec();
            let fast = encode_record(run, seq, &rec(), &mut fast_buf).unwrap();
            assert_eq!(fast, &slow[..], "case {case}, {len} values, {precision:?}");
        }
    }

    #[test]
    fn fast_token_encoding_matches_postcard() {
        let mut rng = Rng::new(5);
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        for _ in 0..20_000 {
            let wide = |r: &mut Rng| match r.next_u64() % 3 {
                0 => (r.next_u64() % 200) as u32,
                1 => (r.next_u64() % 70_000) as u32,
                _ => r.next_u64() as u32,
            };
            let (run, seq, token) = (wide(&mut rng), wide(&mut rng), wide(&mut rng));
            let pos = rng.next_u64() as u16;
            let slow = encode(
                &FrameOut {
                    run,
                    seq,
                    body: BodyOut::Token { pos, token },
                },
                &mut a,
            )
            .unwrap();
            let fast = encode_token(run, seq, pos, token, &mut b).unwrap();
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn int8_scale_ignores_nan_like_f32_max() {
        let reference = |v: &[f32]| {
            let amax = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            if amax > 0.0 && amax.is_finite() {
                amax / 127.0
            } else {
                1.0
            }
        };
        for v in [
            &[1.0, -3.0, 2.0][..],
            &[f32::NAN, 2.0, -0.5],
            &[0.0, -0.0],
            &[f32::NAN],
            &[1.0, f32::INFINITY],
            &[-f32::NAN, 1e-40, -7.5],
            &[],
        ] {
            assert_eq!(int8_scale(v).to_bits(), reference(v).to_bits(), "{v:?}");
        }
    }

    #[test]
    fn fast_encoding_declines_a_buffer_it_might_not_fit() {
        let values = [1.5f32; 300];
        let rec = RecordOut {
            point: HookPoint::Z,
            layer: 0,
            head: Some(0),
            pos: 0,
            precision: Precision::F32,
            scale: 1.0,
            data: Payload {
                values: &values,
                precision: Precision::F32,
                inv_scale: 1.0,
            },
        };
        let mut small = [0u8; 1200];
        assert!(encode_record(0, 0, &rec, &mut small).is_none());
        let mut enough = [0u8; 1300];
        assert!(encode_record(0, 0, &rec, &mut enough).is_some());
    }

    /// postcard's COBS flavor, byte by byte (cobs' `EncoderState`), for comparison.
    fn cobs_reference(raw: &[u8]) -> std::vec::Vec<u8> {
        let mut out = std::vec![0u8];
        let mut state = cobs::EncoderState::default();
        for &b in raw {
            match state.push(b) {
                cobs::PushResult::AddSingle(n) => out.push(n),
                cobs::PushResult::ModifyFromStartAndSkip((i, m)) => {
                    out[i] = m;
                    out.push(0);
                }
                cobs::PushResult::ModifyFromStartAndPushAndSkip((i, m, n)) => {
                    out[i] = m;
                    out.push(n);
                    out.push(0);
                }
            }
        }
        let (i, m) = state.finalize();
        out[i] = m;
        out.push(0);
        out
    }

    #[test]
    fn cobs_in_place_matches_postcard_at_block_edges() {
        for len in 0..800usize {
            for zero_at in [
                None,
                Some(0),
                Some(252),
                Some(253),
                Some(254),
                Some(len.saturating_sub(1)),
            ] {
                let mut raw: std::vec::Vec<u8> = (0..len).map(|i| (i % 255) as u8 + 1).collect();
                if let Some(z) = zero_at.filter(|z| *z < len) {
                    raw[z] = 0;
                }
                for off in [1, 1 + len / 254] {
                    let mut buf = std::vec![0xaau8; 2 + len + len / 254];
                    buf[off..].fill(0);
                    buf[off..off + len].copy_from_slice(&raw);
                    let n = cobs_in_place(&mut buf, off, len, len % 40);
                    assert_eq!(
                        &buf[..n],
                        &cobs_reference(&raw)[..],
                        "len {len} zero {zero_at:?} off {off}"
                    );
                }
            }
        }
    }

    #[test]
    fn crc32_is_the_blob_crc() {
        let mut rng = Rng::new(3);
        let bytes: std::vec::Vec<u8> = (0..5004).map(|_| rng.next_u64() as u8).collect();
        for len in (0..70).chain([255, 1000, 4999, 5000]) {
            for start in 0..4 {
                let b = &bytes[start..start + len];
                assert_eq!(crc32(b), CRC.checksum(b));
                assert_eq!(crc32_slice4(b), CRC.checksum(b));
            }
        }
    }

    #[test]
    fn move_down_handles_every_overlap() {
        for len in 0..80 {
            for gap in (0..9).chain([15, 16, 17, 40]) {
                let src = 5 + gap;
                let mut buf: std::vec::Vec<u8> = (0..200u8).collect();
                let want: std::vec::Vec<u8> = buf[src..src + len].to_vec();
                move_down(&mut buf, src, 5, len);
                assert_eq!(&buf[5..5 + len], &want[..], "len {len} gap {gap}");
            }
        }
    }

    #[test]
    fn first_zero_finds_every_position() {
        for len in 0..40 {
            for z in 0..=len {
                let mut s = [7u8; 40];
                if z < len {
                    s[z] = 0;
                }
                let want = (z < len).then_some(z);
                assert_eq!(first_zero(&s[..len]), want, "len {len} zero at {z}");
            }
        }
    }
}

#[cfg(all(test, feature = "embedded-io-06"))]
mod io_sink06_tests {
    use super::*;

    #[test]
    fn io_sink06_writes_whole_frames_and_reports_a_full_writer() {
        let mut storage = [0u8; 8];
        let mut sink = IoSink06(&mut storage[..]);
        assert_eq!(sink.write_frame(&[1, 2, 3, 0]), Ok(()));
        assert_eq!(sink.write_frame(&[4, 5, 6, 7, 0]), Err(Error::SinkFailed));
        assert_eq!(&storage[..4], &[1, 2, 3, 0]);
    }
}

#[cfg(all(test, feature = "embedded-io"))]
mod io_sink_tests {
    use super::*;

    #[test]
    fn io_sink_writes_whole_frames_and_reports_a_full_writer() {
        let mut storage = [0u8; 8];
        let mut sink = IoSink(&mut storage[..]);
        assert_eq!(sink.write_frame(&[1, 2, 3, 0]), Ok(()));
        assert_eq!(sink.write_frame(&[4, 5, 6, 7, 0]), Err(Error::SinkFailed));
        assert_eq!(&storage[..4], &[1, 2, 3, 0]);
    }
}
