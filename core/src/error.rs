//! The core's one error type.

use crate::blob::TensorName;

/// Everything that can go wrong in the core: a malformed blob, a buffer too small for
/// the model, an input the model cannot take, or a trace sink that gives up.
///
/// Errors are small and `Copy` so that firmware can log and keep them without
/// allocation; [`core::fmt::Display`] gives a one-line message naming the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    /// The bytes do not start with the blob magic `TLNSBLOB`.
    BadMagic,
    /// The blob's format version is not one this build reads.
    UnsupportedVersion { found: u16, supported: u16 },
    /// The input ends before a structure it announces.
    Truncated { needed: usize, available: usize },
    /// The CRC-32 over the blob contents does not match the stored one.
    Checksum { stored: u32, computed: u32 },
    /// A configuration field is out of range or inconsistent.
    InvalidConfig { field: &'static str },
    /// A tensor table entry is not the one the format requires at this place.
    UnexpectedTensor { index: usize, expected: TensorName },
    /// A tensor's shape does not match the configuration.
    TensorShape {
        tensor: TensorName,
        expected: (u32, u32),
        found: (u32, u32),
    },
    /// A tensor uses a storage kind that is not allowed for it (or unknown).
    TensorKind { tensor: TensorName, kind: u8 },
    /// An int4 tensor's group size is not one of 16, 32, 64, 128.
    Int4Group { tensor: TensorName, group: u16 },
    /// A tensor's data lies outside the blob, overlaps the header, is misaligned
    /// or has a length that does not match its shape.
    TensorBounds { tensor: TensorName },
    /// A tensor holds a non-finite value (NaN or infinity) or scale.
    NonFiniteWeight { tensor: TensorName },
    /// The vocabulary section is malformed (offsets or UTF-8).
    InvalidVocab,
    /// Bytes after the last tensor that are not covered by the table.
    TrailingData,
    /// A caller-provided buffer is smaller than the model needs.
    BufferTooSmall { needed: usize, provided: usize },
    /// A token id is not below `d_vocab`.
    TokenOutOfRange { token: u32, d_vocab: u32 },
    /// The session already holds `n_ctx` positions.
    ContextFull { n_ctx: u32 },
    /// A NaN or infinity reached the logits at this position.
    NonFiniteLogits { pos: u32 },
    /// A probe or intervention names a layer, head, position or hook that the model does not have.
    InvalidProbe,
    /// The probe set does not fit its fixed capacity.
    TooManyProbes { capacity: usize },
    /// A value given to an intervention has the wrong length for its hook point.
    InterventionShape { expected: usize, found: usize },
    /// The trace sink accepted no more bytes.
    SinkFull,
    /// The trace sink reported a write failure.
    SinkFailed,
    /// A trace frame does not fit the recorder's frame buffer.
    FrameTooLarge { needed: usize, capacity: usize },
    /// A trace frame could not be decoded (bad COBS, CRC or postcard content).
    CorruptFrame,
    /// The blob does not start on a 4-byte boundary, and this build's DSP kernel
    /// (Cortex-M4/M7/M33) reads int8 weights a word at a time: it would silently take
    /// the portable kernel, about 4x slower. Embed blobs with
    /// [`crate::include_blob!`] (16-byte aligned).
    BlobMisaligned { address: usize, required: usize },
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use Error::*;
        match *self {
            BadMagic => write!(f, "not a tinylens model blob (bad magic)"),
            UnsupportedVersion { found, supported } => write!(
                f,
                "blob format version {found} is not supported (the newest this build reads is {supported})"
            ),
            Truncated { needed, available } => write!(
                f,
                "input truncated: needs {needed} bytes, has {available}"
            ),
            Checksum { stored, computed } => write!(
                f,
                "blob checksum mismatch: stored {stored:#010x}, computed {computed:#010x} (corrupt blob)"
            ),
            InvalidConfig { field } => write!(f, "invalid model config: {field}"),
            UnexpectedTensor { index, expected } => {
                write!(f, "tensor table entry {index} should be `{expected}`")
            }
            TensorShape {
                tensor,
                expected,
                found,
            } => write!(
                f,
                "tensor `{tensor}` has stored shape {}x{}, expected {}x{}",
                found.0, found.1, expected.0, expected.1
            ),
            TensorKind { tensor, kind } => {
                write!(f, "tensor `{tensor}` has unsupported storage kind {kind}")
            }
            Int4Group { tensor, group } => write!(
                f,
                "int4 tensor `{tensor}` has groups of {group} columns (allowed: 16, 32, 64, 128)"
            ),
            TensorBounds { tensor } => write!(
                f,
                "tensor `{tensor}` has data outside the blob or of the wrong length"
            ),
            NonFiniteWeight { tensor } => {
                write!(f, "tensor `{tensor}` contains NaN or infinity")
            }
            InvalidVocab => write!(f, "vocabulary section is malformed"),
            TrailingData => write!(f, "blob has data not described by its tensor table"),
            BufferTooSmall { needed, provided } => write!(
                f,
                "buffer too small: the model needs {needed} words, {provided} provided"
            ),
            TokenOutOfRange { token, d_vocab } => {
                write!(f, "token {token} is out of range (d_vocab = {d_vocab})")
            }
            ContextFull { n_ctx } => write!(
                f,
                "context full: the model has n_ctx = {n_ctx} positions"
            ),
            NonFiniteLogits { pos } => {
                write!(f, "NaN or infinity in the logits at position {pos}")
            }
            InvalidProbe => write!(
                f,
                "probe or intervention names a hook, layer, head or position the model does not have"
            ),
            TooManyProbes { capacity } => {
                write!(f, "too many probes (capacity {capacity})")
            }
            InterventionShape { expected, found } => write!(
                f,
                "intervention value has {found} elements, the hook point has {expected}"
            ),
            SinkFull => write!(f, "trace sink is full"),
            SinkFailed => write!(f, "trace sink write failed"),
            BlobMisaligned { address, required } => write!(
                f,
                "model blob at {address:#x} is not {required}-byte aligned, which the DSP kernel needs (embed it with tinylens_core::include_blob!)"
            ),
            FrameTooLarge { needed, capacity } => write!(
                f,
                "trace frame of {needed} bytes exceeds the frame buffer ({capacity} bytes)"
            ),
            CorruptFrame => write!(f, "corrupt trace frame"),
        }
    }
}

impl core::error::Error for Error {}
