//! The model blob: one contiguous, little-endian byte string that holds the config,
//! a tensor table and the (quantized) tensor data, used in place from flash.
//!
//! The byte layout is specified in `core/BLOB_FORMAT.md`. Loading checks every byte
//! that later code relies on, so that after [`Model::from_bytes`] returns `Ok`, no
//! access into the blob can fail: any other byte string gives a typed [`Error`].

use crate::config::{Config, Normalization, Positional};
use crate::quant::{Int4Group, StorageKind, Tensor};
use crate::Error;

/// First eight bytes of every blob.
pub const MAGIC: [u8; 8] = *b"TLNSBLOB";
/// The newest format version this build reads and writes. It reads every version from
/// 1: version 2 added the int4 group size per tensor (bytes 20..22 of a table entry,
/// reserved in version 1, where every int4 tensor has groups of 32). The converter
/// writes version 1 whenever that suffices (see [`write::version_for`]), so a blob
/// whose int4 tensors all have groups of 32 reads on older builds too.
pub const VERSION: u16 = 2;
/// The oldest format version this build reads.
pub const OLDEST_VERSION: u16 = 1;
/// Bytes before the tensor table.
pub const HEADER_LEN: usize = 64;
/// Bytes of one tensor table entry.
pub const ENTRY_LEN: usize = 24;
/// Alignment of every tensor's data, from the start of the blob.
pub const ALIGN: usize = 16;

/// Alignment the blob itself needs in memory in a build with the DSP kernel
/// ([`crate::kernels::DSP`]); [`Model::from_bytes`] refuses a blob that lacks it
/// ([`Error::BlobMisaligned`]). Other builds read tensors at any address.
pub const KERNEL_ALIGN: usize = 4;

/// Embeds a model blob file in flash, 16-byte aligned (what `include_bytes!` does not
/// promise: a blob from `include_bytes!` may start anywhere, and a DSP build then
/// refuses it). Gives a `&'static [u8]`:
///
/// ```text
/// static MODEL: &[u8] = tinylens_core::include_blob!("../models/demo-int8.tlm");
/// let model = Model::from_bytes(MODEL)?;
/// ```
///
/// (The path is relative to the file that uses the macro, as for `include_bytes!`.)
#[macro_export]
macro_rules! include_blob {
    ($path:expr) => {{
        #[repr(C, align(16))]
        struct Aligned<T: ?Sized>(T);
        static BLOB: &Aligned<[u8]> = &Aligned(*include_bytes!($path));
        &BLOB.0
    }};
}
/// The CRC-32 covers the blob from this offset to its end (everything after the CRC field).
pub const CRC_START: usize = 20;

/// CRC-32/ISO-HDLC, the zlib/PNG/Ethernet CRC, so `crc32` tools can check a blob.
pub const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Which TransformerLens weight processing was applied before the weights were stored
/// (they change intermediate activations, so an analysis must know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Processing {
    pub fold_ln: bool,
    pub center_writing_weights: bool,
    pub center_unembed: bool,
    pub fold_value_biases: bool,
}

impl Processing {
    /// All four steps (TransformerLens's `from_pretrained` defaults).
    pub const ALL: Processing = Processing {
        fold_ln: true,
        center_writing_weights: true,
        center_unembed: true,
        fold_value_biases: true,
    };

    /// No processing (`from_pretrained_no_processing`).
    pub const NONE: Processing = Processing {
        fold_ln: false,
        center_writing_weights: false,
        center_unembed: false,
        fold_value_biases: false,
    };

    pub const fn to_bits(self) -> u32 {
        self.fold_ln as u32
            | (self.center_writing_weights as u32) << 1
            | (self.center_unembed as u32) << 2
            | (self.fold_value_biases as u32) << 3
    }

    pub const fn from_bits(bits: u32) -> Option<Self> {
        if bits & !0xf != 0 {
            return None;
        }
        Some(Processing {
            fold_ln: bits & 1 != 0,
            center_writing_weights: bits & 2 != 0,
            center_unembed: bits & 4 != 0,
            fold_value_biases: bits & 8 != 0,
        })
    }
}

/// Identity of a tensor in the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
#[allow(non_camel_case_types)]
pub enum TensorId {
    W_E = 1,
    W_pos = 2,
    W_U = 3,
    b_U = 4,
    ln_final_w = 5,
    ln_final_b = 6,
    ln1_w = 16,
    ln1_b = 17,
    W_Q = 18,
    W_K = 19,
    W_V = 20,
    W_O = 21,
    b_Q = 22,
    b_K = 23,
    b_V = 24,
    b_O = 25,
    Vocab = 64,
}

/// A tensor's identity and layer; displays as its TransformerLens `state_dict` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TensorName {
    pub id: TensorId,
    pub layer: u16,
}

impl core::fmt::Display for TensorName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use TensorId::*;
        let l = self.layer;
        match self.id {
            W_E => write!(f, "embed.W_E"),
            W_pos => write!(f, "pos_embed.W_pos"),
            W_U => write!(f, "unembed.W_U"),
            b_U => write!(f, "unembed.b_U"),
            ln_final_w => write!(f, "ln_final.w"),
            ln_final_b => write!(f, "ln_final.b"),
            ln1_w => write!(f, "blocks.{l}.ln1.w"),
            ln1_b => write!(f, "blocks.{l}.ln1.b"),
            W_Q => write!(f, "blocks.{l}.attn.W_Q"),
            W_K => write!(f, "blocks.{l}.attn.W_K"),
            W_V => write!(f, "blocks.{l}.attn.W_V"),
            W_O => write!(f, "blocks.{l}.attn.W_O"),
            b_Q => write!(f, "blocks.{l}.attn.b_Q"),
            b_K => write!(f, "blocks.{l}.attn.b_K"),
            b_V => write!(f, "blocks.{l}.attn.b_V"),
            b_O => write!(f, "blocks.{l}.attn.b_O"),
            Vocab => write!(f, "vocab"),
        }
    }
}

/// One entry of the canonical tensor list: which tensor, and its stored `rows x cols`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub name: TensorName,
    pub rows: u32,
    pub cols: u32,
}

const GLOBAL_BEFORE: usize = 2; // W_E, W_pos

const fn per_layer(cfg: &Config) -> usize {
    match cfg.normalization {
        Normalization::LN => 10,
        _ => 8,
    }
}

const fn global_after(cfg: &Config) -> usize {
    match cfg.normalization {
        Normalization::LN => 4,
        _ => 2,
    }
}

/// Number of tensors (without the vocabulary) the format requires for `cfg`.
pub const fn tensor_count(cfg: &Config) -> usize {
    // Saturating: exact for a validated config, never an overflow for any other.
    (cfg.n_layers as usize)
        .saturating_mul(per_layer(cfg))
        .saturating_add(GLOBAL_BEFORE + global_after(cfg))
}

/// The tensor that must stand at table index `index` for `cfg` (the vocabulary, when
/// present, comes last). Stored shapes are one output per row: `W_Q` is stored as
/// `[n_heads * d_head, d_model]` (each head's `W_Q[h]` transposed, heads stacked),
/// `W_O` as `[n_heads * d_model, d_head]`, `W_U` as `[d_vocab_out, d_model]`;
/// vectors as one row.
pub fn slot(cfg: &Config, index: usize) -> Option<Slot> {
    let n = tensor_count(cfg);
    let s = |id, layer: usize, rows: u32, cols: u32| Slot {
        name: TensorName {
            id,
            layer: layer as u16,
        },
        rows,
        cols,
    };
    // (Products saturate for configs that did not pass `Config::validate`.)
    let (dm, qkv) = (cfg.d_model, cfg.n_heads.saturating_mul(cfg.d_head));
    if index == n {
        return Some(s(TensorId::Vocab, 0, cfg.d_vocab, 0));
    }
    if index > n {
        return None;
    }
    match index {
        0 => return Some(s(TensorId::W_E, 0, cfg.d_vocab, dm)),
        1 => return Some(s(TensorId::W_pos, 0, cfg.n_ctx, dm)),
        _ => {}
    }
    let i = index - GLOBAL_BEFORE;
    let pl = per_layer(cfg);
    let layers_end = (cfg.n_layers as usize).saturating_mul(pl);
    if i < layers_end {
        let (l, mut k) = (i / pl, i % pl);
        if pl == 10 {
            match k {
                0 => return Some(s(TensorId::ln1_w, l, 1, dm)),
                1 => return Some(s(TensorId::ln1_b, l, 1, dm)),
                _ => k -= 2,
            }
        }
        return Some(match k {
            0 => s(TensorId::W_Q, l, qkv, dm),
            1 => s(TensorId::W_K, l, qkv, dm),
            2 => s(TensorId::W_V, l, qkv, dm),
            3 => s(TensorId::W_O, l, cfg.n_heads.saturating_mul(dm), cfg.d_head),
            4 => s(TensorId::b_Q, l, 1, qkv),
            5 => s(TensorId::b_K, l, 1, qkv),
            6 => s(TensorId::b_V, l, 1, qkv),
            _ => s(TensorId::b_O, l, 1, dm),
        });
    }
    let mut k = i - layers_end;
    if global_after(cfg) == 4 {
        match k {
            0 => return Some(s(TensorId::ln_final_w, 0, 1, dm)),
            1 => return Some(s(TensorId::ln_final_b, 0, 1, dm)),
            _ => k -= 2,
        }
    }
    Some(match k {
        0 => s(TensorId::W_U, 0, cfg.d_vocab_out, dm),
        _ => s(TensorId::b_U, 0, 1, cfg.d_vocab_out),
    })
}

const fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

const fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Reads and validates the config from a blob's header, without checking the rest.
/// A `const fn`, so firmware can size its working memory at compile time from the
/// very blob it embeds:
///
/// ```
/// use tinylens_core::{blob::peek_config, Config};
/// static BLOB: &[u8] = include_bytes!("../../models/demo/demo-int8.tlm");
/// const CFG: Config = match peek_config(BLOB) {
///     Ok(c) => c,
///     Err(_) => panic!("not a tinylens blob"),
/// };
/// static WORKSPACE_WORDS: usize = CFG.workspace_len();
/// assert_eq!((CFG.n_layers, CFG.n_heads, CFG.d_model), (2, 4, 64));
/// assert!(WORKSPACE_WORDS <= CFG.minimum_len() * 105 / 100);
/// ```
pub const fn peek_config(bytes: &[u8]) -> Result<Config, Error> {
    // The magic first, as far as there are bytes: a short file of something else is
    // "not a blob" rather than "a truncated blob".
    let mut i = 0;
    while i < MAGIC.len() && i < bytes.len() {
        if bytes[i] != MAGIC[i] {
            return Err(Error::BadMagic);
        }
        i += 1;
    }
    if bytes.len() < HEADER_LEN {
        return Err(Error::Truncated {
            needed: HEADER_LEN,
            available: bytes.len(),
        });
    }
    let version = u16_at(bytes, 8);
    if version < OLDEST_VERSION || version > VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    if u16_at(bytes, 10) as usize != HEADER_LEN {
        return Err(Error::InvalidConfig {
            field: "header length",
        });
    }
    let normalization = match bytes[52] {
        0 => Normalization::None,
        1 => Normalization::LN,
        2 => Normalization::LNPre,
        _ => {
            return Err(Error::InvalidConfig {
                field: "normalization",
            })
        }
    };
    let positional = match bytes[53] {
        0 => Positional::Standard,
        1 => Positional::Shortformer,
        _ => {
            return Err(Error::InvalidConfig {
                field: "positional embedding",
            })
        }
    };
    let cfg = Config {
        n_layers: u32_at(bytes, 24),
        n_heads: u32_at(bytes, 28),
        d_model: u32_at(bytes, 32),
        d_head: u32_at(bytes, 36),
        d_vocab: u32_at(bytes, 40),
        d_vocab_out: u32_at(bytes, 44),
        n_ctx: u32_at(bytes, 48),
        normalization,
        positional,
        eps: f32::from_bits(u32_at(bytes, 56)),
        attn_scale: f32::from_bits(u32_at(bytes, 60)),
    };
    match cfg.validate() {
        Ok(()) => Ok(cfg),
        Err(e) => Err(e),
    }
}

/// A loaded model: a validated view of a blob. Nothing is copied; tensors are read
/// from the blob's bytes (flash on a microcontroller) on every use.
#[derive(Debug, Clone, Copy)]
pub struct Model<'a> {
    bytes: &'a [u8],
    version: u16,
    config: Config,
    processing: Processing,
    checksum: u32,
    has_vocab: bool,
}

/// The tensors of one attention layer, as views into the blob.
#[derive(Debug, Clone, Copy)]
pub struct LayerTensors<'a> {
    pub ln1_w: Option<Tensor<'a>>,
    pub ln1_b: Option<Tensor<'a>>,
    pub w_q: Tensor<'a>,
    pub w_k: Tensor<'a>,
    pub w_v: Tensor<'a>,
    pub w_o: Tensor<'a>,
    pub b_q: Tensor<'a>,
    pub b_k: Tensor<'a>,
    pub b_v: Tensor<'a>,
    pub b_o: Tensor<'a>,
}

impl<'a> Model<'a> {
    /// Validates a blob and returns a zero-copy view of it. Bytes after the blob's
    /// stated length (e.g. erased flash) are ignored. Every malformed input gives an
    /// error, never a panic or an out-of-bounds read.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, Error> {
        let config = peek_config(bytes)?;
        // The DSP kernel reads int8 rows a word at a time (tensors are aligned from
        // the blob's start): a misaligned blob would make every product silently take
        // the portable kernel. An error names it instead.
        if crate::kernels::DSP && (bytes.as_ptr() as usize) % KERNEL_ALIGN != 0 {
            return Err(Error::BlobMisaligned {
                address: bytes.as_ptr() as usize,
                required: KERNEL_ALIGN,
            });
        }
        let total = u32_at(bytes, 12) as usize;
        if total < HEADER_LEN {
            return Err(Error::Truncated {
                needed: HEADER_LEN,
                available: total,
            });
        }
        if bytes.len() < total {
            return Err(Error::Truncated {
                needed: total,
                available: bytes.len(),
            });
        }
        let bytes = &bytes[..total];
        let stored = u32_at(bytes, 16);
        let computed = CRC.checksum(&bytes[CRC_START..]);
        if stored != computed {
            return Err(Error::Checksum { stored, computed });
        }
        let processing = Processing::from_bits(u32_at(bytes, 20)).ok_or(Error::InvalidConfig {
            field: "processing flags",
        })?;
        let n_tensors = u16_at(bytes, 54) as usize;
        let required = tensor_count(&config);
        let has_vocab = match n_tensors {
            n if n == required => false,
            n if n == required + 1 => true,
            _ => {
                return Err(Error::InvalidConfig {
                    field: "tensor count does not match the config",
                })
            }
        };
        let table_end = HEADER_LEN + n_tensors * ENTRY_LEN;
        if table_end > total {
            return Err(Error::Truncated {
                needed: table_end,
                available: total,
            });
        }
        let version = u16_at(bytes, 8);
        let model = Model {
            bytes,
            version,
            config,
            processing,
            checksum: stored,
            has_vocab,
        };
        let mut expected_offset = table_end.next_multiple_of(ALIGN);
        for index in 0..n_tensors {
            let slot = slot(&config, index).ok_or(Error::InvalidConfig {
                field: "tensor count",
            })?;
            let e = &bytes[HEADER_LEN + index * ENTRY_LEN..][..ENTRY_LEN];
            if e[0] != slot.name.id as u8 || u16_at(e, 2) != slot.name.layer {
                return Err(Error::UnexpectedTensor {
                    index,
                    expected: slot.name,
                });
            }
            let (rows, cols) = (u32_at(e, 4), u32_at(e, 8));
            if (rows, cols) != (slot.rows, slot.cols) {
                return Err(Error::TensorShape {
                    tensor: slot.name,
                    expected: (slot.rows, slot.cols),
                    found: (rows, cols),
                });
            }
            let kind = entry_kind(e, version, slot.name)?;
            let is_vocab = slot.name.id == TensorId::Vocab;
            if is_vocab != (kind == StorageKind::Bytes) {
                return Err(Error::TensorKind {
                    tensor: slot.name,
                    kind: e[1],
                });
            }
            let (offset, len) = (u32_at(e, 12) as usize, u32_at(e, 16) as usize);
            let bounds = Error::TensorBounds { tensor: slot.name };
            if offset != expected_offset {
                return Err(bounds);
            }
            let end = offset.checked_add(len).ok_or(bounds)?;
            if end > total {
                return Err(bounds);
            }
            let data = &bytes[offset..end];
            if is_vocab {
                validate_vocab(data, rows as usize)?;
            } else {
                if kind.data_len(rows as usize, cols as usize) != Some(len) {
                    return Err(bounds);
                }
                let t =
                    Tensor::from_data(kind, rows as usize, cols as usize, data).ok_or(bounds)?;
                if !t.all_finite() {
                    return Err(Error::NonFiniteWeight { tensor: slot.name });
                }
            }
            expected_offset = end.next_multiple_of(ALIGN);
            if index + 1 == n_tensors && end != total {
                return Err(Error::TrailingData);
            }
        }
        Ok(model)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn processing(&self) -> Processing {
        self.processing
    }

    /// The blob's CRC-32; traces carry it to name the model they came from.
    pub fn checksum(&self) -> u32 {
        self.checksum
    }

    /// The blob's bytes (exactly its stated length).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The blob's format version (1 or 2).
    pub fn version(&self) -> u16 {
        self.version
    }

    fn entry(&self, index: usize) -> (StorageKind, usize, usize, &'a [u8]) {
        let e = &self.bytes[HEADER_LEN + index * ENTRY_LEN..][..ENTRY_LEN];
        let name = slot(&self.config, index).map_or(
            TensorName {
                id: TensorId::Vocab,
                layer: 0,
            },
            |s| s.name,
        );
        let kind = entry_kind(e, self.version, name).unwrap_or(StorageKind::Bytes);
        let (offset, len) = (u32_at(e, 12) as usize, u32_at(e, 16) as usize);
        (
            kind,
            u32_at(e, 4) as usize,
            u32_at(e, 8) as usize,
            &self.bytes[offset..offset + len],
        )
    }

    /// The tensor at table index `index` (validated at load).
    pub fn tensor_at(&self, index: usize) -> Tensor<'a> {
        let (kind, rows, cols, data) = self.entry(index);
        // Validated in from_bytes: the split cannot fail.
        Tensor::from_data(kind, rows, cols, data).unwrap_or(Tensor {
            kind,
            rows: 0,
            cols: 0,
            values: &[],
            scales: &[],
        })
    }

    /// Number of tensors in the table (including the vocabulary).
    pub fn tensor_count(&self) -> usize {
        tensor_count(&self.config) + self.has_vocab as usize
    }

    fn layer_base(&self, layer: usize) -> usize {
        GLOBAL_BEFORE + layer * per_layer(&self.config)
    }

    fn after_layers(&self) -> usize {
        GLOBAL_BEFORE + self.config.n_layers as usize * per_layer(&self.config)
    }

    pub fn w_e(&self) -> Tensor<'a> {
        self.tensor_at(0)
    }

    pub fn w_pos(&self) -> Tensor<'a> {
        self.tensor_at(1)
    }

    pub fn ln_final(&self) -> Option<(Tensor<'a>, Tensor<'a>)> {
        (self.config.normalization == Normalization::LN).then(|| {
            (
                self.tensor_at(self.after_layers()),
                self.tensor_at(self.after_layers() + 1),
            )
        })
    }

    /// `W_U` stored as `[d_vocab_out, d_model]`.
    pub fn w_u(&self) -> Tensor<'a> {
        self.tensor_at(self.after_layers() + global_after(&self.config) - 2)
    }

    pub fn b_u(&self) -> Tensor<'a> {
        self.tensor_at(self.after_layers() + global_after(&self.config) - 1)
    }

    /// The tensors of layer `layer` (`layer < n_layers`).
    pub fn layer(&self, layer: usize) -> LayerTensors<'a> {
        let mut i = self.layer_base(layer);
        let (ln1_w, ln1_b) = if self.config.normalization == Normalization::LN {
            i += 2;
            (Some(self.tensor_at(i - 2)), Some(self.tensor_at(i - 1)))
        } else {
            (None, None)
        };
        LayerTensors {
            ln1_w,
            ln1_b,
            w_q: self.tensor_at(i),
            w_k: self.tensor_at(i + 1),
            w_v: self.tensor_at(i + 2),
            w_o: self.tensor_at(i + 3),
            b_q: self.tensor_at(i + 4),
            b_k: self.tensor_at(i + 5),
            b_v: self.tensor_at(i + 6),
            b_o: self.tensor_at(i + 7),
        }
    }

    /// Whether the blob carries token strings.
    pub fn has_vocab(&self) -> bool {
        self.has_vocab
    }

    /// The string of token `token`, when the blob has a vocabulary.
    pub fn token_str(&self, token: u32) -> Option<&'a str> {
        if !self.has_vocab || token >= self.config.d_vocab {
            return None;
        }
        let (_, rows, _, data) = self.entry(tensor_count(&self.config));
        vocab_entry(data, rows, token as usize)
    }
}

/// The storage kind of table entry `e` in a blob of format `version`: the kind code
/// (byte 1) and, for int4 in version 2, the group (u16 at 20). Version 1 has no group
/// (int4 groups are 32); every byte of the group field that a kind does not use, and the
/// reserved u16 at 22, must be zero.
fn entry_kind(e: &[u8], version: u16, tensor: TensorName) -> Result<StorageKind, Error> {
    let (field, reserved) = (u16_at(e, 20), u16_at(e, 22));
    let bad_kind = Error::TensorKind { tensor, kind: e[1] };
    let int4 = e[1] == StorageKind::INT4.code();
    let group = if version >= 2 && int4 {
        Int4Group::new(field).ok_or(Error::Int4Group {
            tensor,
            group: field,
        })?
    } else if field != 0 {
        return Err(Error::TensorBounds { tensor });
    } else {
        Int4Group::DEFAULT
    };
    if reserved != 0 {
        return Err(Error::TensorBounds { tensor });
    }
    StorageKind::from_code(e[1], group).ok_or(bad_kind)
}

fn vocab_entry(data: &[u8], count: usize, i: usize) -> Option<&str> {
    let table = 4 * (count + 1);
    let start = u32_at(data.get(4 * i..4 * i + 4)?, 0) as usize;
    let end = u32_at(data.get(4 * i + 4..4 * i + 8)?, 0) as usize;
    core::str::from_utf8(data.get(table + start..table + end)?).ok()
}

/// The vocabulary: `count + 1` little-endian u32 offsets into the string bytes that
/// follow them (first 0, non-decreasing, last = their length), every string UTF-8.
fn validate_vocab(data: &[u8], count: usize) -> Result<(), Error> {
    let table = count
        .checked_add(1)
        .and_then(|n| n.checked_mul(4))
        .ok_or(Error::InvalidVocab)?;
    if data.len() < table {
        return Err(Error::InvalidVocab);
    }
    let strings = data.len() - table;
    let mut prev = 0usize;
    for i in 0..=count {
        let off = u32_at(data, 4 * i) as usize;
        if (i == 0 && off != 0) || off < prev || off > strings || (i == count && off != strings) {
            return Err(Error::InvalidVocab);
        }
        prev = off;
    }
    for i in 0..count {
        vocab_entry(data, count, i).ok_or(Error::InvalidVocab)?;
    }
    Ok(())
}

/// Building blocks for writing a blob (used by the host converter; no allocation).
pub mod write {
    use super::*;

    /// The oldest format version that can store tensors of these kinds: 1 unless an
    /// int4 tensor has a group other than 32 (then 2). Writing the oldest version keeps
    /// the blobs that need nothing new byte for byte what older converters wrote.
    pub fn version_for(kinds: impl IntoIterator<Item = StorageKind>) -> u16 {
        let new = kinds
            .into_iter()
            .any(|k| k.int4_group().is_some_and(|g| g != Int4Group::DEFAULT));
        if new {
            2
        } else {
            1
        }
    }

    /// Encodes the 64-byte header of a blob of format `version` (see [`version_for`]).
    /// `total_len` and the CRC are patched by [`finish`].
    pub fn header(
        cfg: &Config,
        processing: Processing,
        n_tensors: u16,
        version: u16,
    ) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&MAGIC);
        h[8..10].copy_from_slice(&version.to_le_bytes());
        h[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        h[20..24].copy_from_slice(&processing.to_bits().to_le_bytes());
        let dims = [
            cfg.n_layers,
            cfg.n_heads,
            cfg.d_model,
            cfg.d_head,
            cfg.d_vocab,
            cfg.d_vocab_out,
            cfg.n_ctx,
        ];
        for (i, d) in dims.iter().enumerate() {
            h[24 + 4 * i..28 + 4 * i].copy_from_slice(&d.to_le_bytes());
        }
        h[52] = cfg.normalization as u8;
        h[53] = cfg.positional as u8;
        h[54..56].copy_from_slice(&n_tensors.to_le_bytes());
        h[56..60].copy_from_slice(&cfg.eps.to_le_bytes());
        h[60..64].copy_from_slice(&cfg.attn_scale.to_le_bytes());
        h
    }

    /// Encodes one table entry of a blob of format `version`. Version 1 cannot hold an
    /// int4 group other than 32: [`version_for`] chooses a version that can (a blob
    /// written otherwise does not load).
    pub fn entry(
        slot: &Slot,
        kind: StorageKind,
        offset: u32,
        len: u32,
        version: u16,
    ) -> [u8; ENTRY_LEN] {
        let mut e = [0u8; ENTRY_LEN];
        e[0] = slot.name.id as u8;
        e[1] = kind.code();
        if let (2.., Some(g)) = (version, kind.int4_group()) {
            e[20..22].copy_from_slice(&u16::from(g).to_le_bytes());
        }
        e[2..4].copy_from_slice(&slot.name.layer.to_le_bytes());
        e[4..8].copy_from_slice(&slot.rows.to_le_bytes());
        e[8..12].copy_from_slice(&slot.cols.to_le_bytes());
        e[12..16].copy_from_slice(&offset.to_le_bytes());
        e[16..20].copy_from_slice(&len.to_le_bytes());
        e
    }

    /// Writes the total length and the CRC into a complete blob (a slice shorter than
    /// the header is left as it is).
    pub fn finish(blob: &mut [u8]) {
        if blob.len() < HEADER_LEN {
            return;
        }
        let total = blob.len() as u32;
        blob[12..16].copy_from_slice(&total.to_le_bytes());
        let crc = CRC.checksum(&blob[CRC_START..]);
        blob[16..20].copy_from_slice(&crc.to_le_bytes());
    }
}

#[cfg(test)]
mod include_blob_tests {
    use super::*;

    static FIXTURE: &[u8] =
        crate::include_blob!("../../firmware-examples/models/attn1_ln-int8.tlm");

    #[test]
    fn include_blob_is_aligned_and_loads() {
        assert_eq!(FIXTURE.as_ptr() as usize % ALIGN, 0);
        assert!(FIXTURE.len() > HEADER_LEN);
        let model = Model::from_bytes(FIXTURE).unwrap();
        assert_eq!(model.config().n_layers, 1);
    }

    #[test]
    fn misaligned_blob_error_names_the_fix() {
        let e = Error::BlobMisaligned {
            address: 0x2000_0003,
            required: KERNEL_ALIGN,
        };
        let msg = e.to_string();
        assert!(
            msg.contains("0x20000003") && msg.contains("include_blob!"),
            "{msg}"
        );
    }
}
