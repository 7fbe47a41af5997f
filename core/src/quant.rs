//! Quantized weight storage: how one tensor's bytes are laid out for each storage kind,
//! how a row is read back, and how the host quantizes f32 weights.
//!
//! Every matrix is stored as `rows x cols` with one *output* per row, so that a
//! matrix-vector product walks contiguous bytes (TransformerLens's `W[d_in, d_out]`
//! is stored transposed). Within a tensor's data the quantized values come first,
//! then (padded to 4 bytes) the f16 scales:
//!
//! | kind | values | scales |
//! |------|--------|--------|
//! | `F32`  | `rows*cols` little-endian f32 | none |
//! | `F16`  | `rows*cols` little-endian IEEE half | none |
//! | `Int8` | `rows*cols` i8, symmetric, in -127..=127 | one f16 per row |
//! | `Int4` | per row `ceil(cols/2)` bytes, two's-complement nibbles (even column in the low nibble), in -7..=7 | one f16 per group of `group` columns per row |
//!
//! The int4 group is a property of each tensor ([`Int4Group`]: 16, 32, 64 or 128
//! columns), part of its storage kind: a smaller group spends more bytes on scales and
//! follows the weights more closely.

use half::f16;

/// Columns that share one int4 scale: 16, 32, 64 or 128 (nothing else can be made, so
/// every kernel may rely on it).
///
/// Why these: a group must be even, so that every group starts on a whole byte (two
/// nibbles per byte) and a group's dot product reads whole bytes; multiples of 16
/// columns (8 bytes) keep every group and every row of a group-aligned matrix on whole
/// 32-bit words, which the DSP kernel reads; and four sizes, each twice the last, span
/// scale overheads from 1/8 to 1/64 of a byte per weight — enough choice for the flash
/// budget, few enough to try every one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(try_from = "u16", into = "u16")
)]
pub struct Int4Group(u8);

impl Int4Group {
    pub const G16: Int4Group = Int4Group(16);
    pub const G32: Int4Group = Int4Group(32);
    pub const G64: Int4Group = Int4Group(64);
    pub const G128: Int4Group = Int4Group(128);
    /// Every allowed group, smallest first.
    pub const ALL: [Int4Group; 4] = [Self::G16, Self::G32, Self::G64, Self::G128];
    /// The group of blob format version 1 (which has no group field) and the
    /// converter's default.
    pub const DEFAULT: Int4Group = Self::G32;

    /// The group of `cols` columns, if that is an allowed size.
    pub const fn new(cols: u16) -> Option<Int4Group> {
        match cols {
            16 | 32 | 64 | 128 => Some(Int4Group(cols as u8)),
            _ => None,
        }
    }

    /// Columns per group.
    #[inline(always)]
    pub const fn cols(self) -> usize {
        self.0 as usize
    }
}

impl From<Int4Group> for u16 {
    fn from(g: Int4Group) -> u16 {
        g.0 as u16
    }
}

impl TryFrom<u16> for Int4Group {
    type Error = &'static str;
    fn try_from(cols: u16) -> Result<Self, Self::Error> {
        Int4Group::new(cols).ok_or("int4 group must be 16, 32, 64 or 128")
    }
}

/// Storage kind of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum StorageKind {
    F32,
    F16,
    /// int8 symmetric, one f16 scale per output row.
    Int8,
    /// int4 symmetric, groups of `group` columns along the input dimension, one f16
    /// scale per group.
    Int4 {
        group: Int4Group,
    },
    /// Raw bytes (the vocabulary).
    Bytes,
}

impl StorageKind {
    /// int4 with the default group of 32 columns (what format version 1 stores).
    pub const INT4: StorageKind = StorageKind::Int4 {
        group: Int4Group::DEFAULT,
    };

    /// The kind's code in a blob's tensor table (the int4 group is stored beside it).
    pub const fn code(self) -> u8 {
        match self {
            StorageKind::F32 => 0,
            StorageKind::F16 => 1,
            StorageKind::Int8 => 2,
            StorageKind::Int4 { .. } => 3,
            StorageKind::Bytes => 4,
        }
    }

    /// The kind of table code `code`; `group` is used when it is int4.
    pub const fn from_code(code: u8, group: Int4Group) -> Option<Self> {
        Some(match code {
            0 => StorageKind::F32,
            1 => StorageKind::F16,
            2 => StorageKind::Int8,
            3 => StorageKind::Int4 { group },
            4 => StorageKind::Bytes,
            _ => return None,
        })
    }

    /// The int4 group, for an int4 kind.
    pub const fn int4_group(self) -> Option<Int4Group> {
        match self {
            StorageKind::Int4 { group } => Some(group),
            _ => None,
        }
    }

    /// Name used by the CLI and in reports: `int4` for the default group of 32 (as
    /// every blob of format version 1 has), `int4/g16`, `int4/g64`, `int4/g128` for the
    /// others.
    pub const fn name(self) -> &'static str {
        match self {
            StorageKind::F32 => "f32",
            StorageKind::F16 => "f16",
            StorageKind::Int8 => "int8",
            StorageKind::Int4 { group } => match group.0 {
                16 => "int4/g16",
                64 => "int4/g64",
                128 => "int4/g128",
                _ => "int4",
            },
            StorageKind::Bytes => "bytes",
        }
    }

    /// Bytes of the values part of a `rows x cols` tensor (None on overflow).
    pub fn values_len(self, rows: usize, cols: usize) -> Option<usize> {
        match self {
            StorageKind::F32 => rows.checked_mul(cols)?.checked_mul(4),
            StorageKind::F16 => rows.checked_mul(cols)?.checked_mul(2),
            StorageKind::Int8 => rows.checked_mul(cols),
            StorageKind::Int4 { .. } => rows.checked_mul(cols.div_ceil(2)),
            StorageKind::Bytes => None,
        }
    }

    /// Number of f16 scales of a `rows x cols` tensor.
    pub fn scales_count(self, rows: usize, cols: usize) -> Option<usize> {
        match self {
            StorageKind::F32 | StorageKind::F16 => Some(0),
            StorageKind::Int8 => Some(rows),
            StorageKind::Int4 { group } => rows.checked_mul(cols.div_ceil(group.cols())),
            StorageKind::Bytes => None,
        }
    }

    /// Total bytes of a `rows x cols` tensor: values, padding to 4, scales.
    pub fn data_len(self, rows: usize, cols: usize) -> Option<usize> {
        let values = self.values_len(rows, cols)?;
        let scales = self.scales_count(rows, cols)?.checked_mul(2)?;
        if scales == 0 {
            Some(values)
        } else {
            values.checked_next_multiple_of(4)?.checked_add(scales)
        }
    }
}

/// A read-only view of one stored matrix, borrowed from the blob (zero-copy).
#[derive(Debug, Clone, Copy)]
pub struct Tensor<'a> {
    pub kind: StorageKind,
    pub rows: usize,
    pub cols: usize,
    /// The quantized values (layout per kind, see the module docs).
    pub values: &'a [u8],
    /// The f16 scales, little-endian, two bytes each.
    pub scales: &'a [u8],
}

impl<'a> Tensor<'a> {
    /// Splits a tensor's data (`kind.data_len(rows, cols)` bytes) into values and
    /// scales; `None` when `data` is too short.
    pub fn from_data(kind: StorageKind, rows: usize, cols: usize, data: &'a [u8]) -> Option<Self> {
        let values_len = kind.values_len(rows, cols)?;
        let scales_len = kind.scales_count(rows, cols)?.checked_mul(2)?;
        let scales_at = if scales_len == 0 {
            values_len
        } else {
            values_len.checked_next_multiple_of(4)?
        };
        Some(Tensor {
            kind,
            rows,
            cols,
            values: data.get(..values_len)?,
            scales: data.get(scales_at..scales_at.checked_add(scales_len)?)?,
        })
    }

    /// The sub-matrix of rows `start..start + n` (used for per-head slices). Rows past
    /// the end are cut off: the result has `min(n, rows - start)` rows (none when
    /// `start >= rows`), so that any arguments give a valid view.
    pub fn rows(&self, start: usize, n: usize) -> Tensor<'a> {
        let start = start.min(self.rows);
        let n = n.min(self.rows - start);
        let (row_bytes, row_scales) = match self.kind {
            StorageKind::F32 => (self.cols.saturating_mul(4), 0),
            StorageKind::F16 => (self.cols.saturating_mul(2), 0),
            StorageKind::Int8 => (self.cols, 2),
            StorageKind::Int4 { group } => (
                self.cols.div_ceil(2),
                self.cols.div_ceil(group.cols()).saturating_mul(2),
            ),
            StorageKind::Bytes => return *self,
        };
        // A view built by hand may be shorter than its shape says: then it is empty.
        let part = |data: &'a [u8], width: usize| -> Option<&'a [u8]> {
            let lo = start.checked_mul(width)?;
            data.get(lo..lo.checked_add(n.checked_mul(width)?)?)
        };
        match (part(self.values, row_bytes), part(self.scales, row_scales)) {
            (Some(values), Some(scales)) => Tensor {
                kind: self.kind,
                rows: n,
                cols: self.cols,
                values,
                scales: if row_scales == 0 { self.scales } else { scales },
            },
            _ => Tensor {
                kind: self.kind,
                rows: 0,
                cols: self.cols,
                values: &[],
                scales: &[],
            },
        }
    }

    /// Scale number `i` as f32 (NaN when the view has no such scale).
    #[inline(always)]
    pub fn scale(&self, i: usize) -> f32 {
        match self.scales.get(2 * i..2 * i + 2) {
            Some(b) => f16_le_to_f32([b[0], b[1]]),
            None => f32::NAN,
        }
    }

    /// The bytes of row `r`, `width` bytes per row (`None` past the end).
    #[inline(always)]
    fn row_bytes(&self, r: usize, width: usize) -> Option<&'a [u8]> {
        let lo = r.checked_mul(width)?;
        self.values.get(lo..lo.checked_add(width)?)
    }

    /// Dequantizes row `r` into `out` (`out.len() == cols`; a shorter `out` receives
    /// the first `out.len()` columns; a row past the end leaves `out` unchanged).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        if self.kind == StorageKind::Int8 {
            // The embeddings' kind in quantized blobs: the row kernel (same values).
            if let Some(bytes) = self.row_bytes(r, self.cols) {
                let n = out.len().min(bytes.len());
                crate::kernels::dequantize_i8(&bytes[..n], self.scale(r), &mut out[..n]);
            }
            return;
        }
        self.zip_row(r, out, |o, v| *o = v);
    }

    /// Calls `f(c, W[r, c])` for every column of row `r`, in order (never for a row
    /// past the end).
    #[inline(always)]
    pub fn for_each_in_row(&self, r: usize, mut f: impl FnMut(usize, f32)) {
        let cols = self.cols;
        match self.kind {
            StorageKind::F32 => {
                let Some(bytes) = self.row_bytes(r, cols.saturating_mul(4)) else {
                    return;
                };
                for (c, b) in bytes.chunks_exact(4).enumerate() {
                    f(c, f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                }
            }
            StorageKind::F16 => {
                let Some(bytes) = self.row_bytes(r, cols.saturating_mul(2)) else {
                    return;
                };
                for (c, b) in bytes.chunks_exact(2).enumerate() {
                    f(c, f16_le_to_f32([b[0], b[1]]));
                }
            }
            StorageKind::Int8 => {
                let Some(bytes) = self.row_bytes(r, cols) else {
                    return;
                };
                let s = self.scale(r);
                for (c, &b) in bytes.iter().enumerate() {
                    f(c, (b as i8) as f32 * s);
                }
            }
            StorageKind::Int4 { group } => {
                let Some(bytes) = self.row_bytes(r, cols.div_ceil(2)) else {
                    return;
                };
                // Group by group: one scale each (and no division per column, which a
                // Cortex-M0 does in software).
                let (g, groups) = (group.cols(), cols.div_ceil(group.cols()));
                let first = r.saturating_mul(groups);
                for i in 0..groups {
                    let s = self.scale(first.saturating_add(i));
                    for c in i * g..((i + 1) * g).min(cols) {
                        f(c, int4_at(bytes, c) as f32 * s);
                    }
                }
            }
            StorageKind::Bytes => {}
        }
    }

    /// `out[c] += W[r, c]` (for the columns `out` has).
    #[inline]
    pub fn add_row_to(&self, r: usize, out: &mut [f32]) {
        self.zip_row(r, out, |o, v| *o += v);
    }

    /// `op(&mut out[c], W[r, c])` for the columns of row `r` that `out` has, in order
    /// (nothing for a row past the end): [`Tensor::for_each_in_row`] with the output
    /// walked alongside, without a bounds check per column.
    #[inline(always)]
    pub fn zip_row(&self, r: usize, out: &mut [f32], mut op: impl FnMut(&mut f32, f32)) {
        let cols = self.cols;
        match self.kind {
            StorageKind::F32 => {
                if let Some(bytes) = self.row_bytes(r, cols.saturating_mul(4)) {
                    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                        op(o, f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                    }
                }
            }
            StorageKind::F16 => {
                if let Some(bytes) = self.row_bytes(r, cols.saturating_mul(2)) {
                    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                        op(o, f16_le_to_f32([b[0], b[1]]));
                    }
                }
            }
            StorageKind::Int8 => {
                if let Some(bytes) = self.row_bytes(r, cols) {
                    let s = self.scale(r);
                    for (o, &b) in out.iter_mut().zip(bytes) {
                        op(o, (b as i8) as f32 * s);
                    }
                }
            }
            _ => self.for_each_in_row(r, |c, v| {
                if let Some(o) = out.get_mut(c) {
                    op(o, v)
                }
            }),
        }
    }

    /// `out[i] += W[0, start + i]` for a one-row tensor (a bias), over `out.len()`
    /// columns (those the row has).
    #[inline]
    pub fn add_range_to(&self, start: usize, out: &mut [f32]) {
        let n = out.len();
        let fast = match (self.kind, start.checked_add(n)) {
            (StorageKind::F32, Some(end)) if end <= self.cols => {
                self.values.get(start * 4..end * 4)
            }
            _ => None,
        };
        match fast {
            Some(bytes) => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            None => self.for_each_in_row(0, |c, v| {
                if let Some(o) = c.checked_sub(start).and_then(|i| out.get_mut(i)) {
                    *o += v;
                }
            }),
        }
    }

    /// Element `(r, c)` dequantized (slow; for tests and tools); NaN outside the tensor.
    pub fn get(&self, r: usize, c: usize) -> f32 {
        let mut out = f32::NAN;
        if c < self.cols {
            self.for_each_in_row(r, |i, v| {
                if i == c {
                    out = v
                }
            });
        }
        out
    }

    /// Whether every value and scale is finite (quantized values always are).
    pub(crate) fn all_finite(&self) -> bool {
        match self.kind {
            StorageKind::F32 => self
                .values
                .chunks_exact(4)
                .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
            StorageKind::F16 => self
                .values
                .chunks_exact(2)
                .all(|b| f16::from_le_bytes([b[0], b[1]]).is_finite()),
            StorageKind::Int8 | StorageKind::Int4 { .. } => self
                .scales
                .chunks_exact(2)
                .all(|b| f16::from_le_bytes([b[0], b[1]]).is_finite()),
            StorageKind::Bytes => true,
        }
    }
}

/// The little-endian IEEE half at `b[0..2]` as f32. Exact, like `half::f16::to_f32`, and
/// the same bits for every finite value (a test checks all 65 536 patterns), but
/// branch-free: the exponent is rebased by one multiplication by 2^112, which also turns
/// subnormal halves into the right normal floats; infinities and NaNs get their
/// exponent back afterwards. The compiler vectorizes it, where `half`'s
/// software conversion (no F16C or FP16 instructions are assumed) cannot be.
#[inline(always)]
pub fn f16_le_to_f32(b: [u8; 2]) -> f32 {
    let h = u16::from_le_bytes(b) as u32;
    let magnitude = f32::from_bits((h & 0x7fff) << 13) * f32::from_bits((254 - 15) << 23);
    let mut bits = magnitude.to_bits();
    if magnitude >= 65536.0 {
        bits |= 0xff << 23; // was infinity or NaN
    }
    f32::from_bits(bits | (h & 0x8000) << 16)
}

/// The signed nibble at column `c` of one int4 row.
#[inline(always)]
pub(crate) fn int4_at(row: &[u8], c: usize) -> i8 {
    let byte = row[c / 2];
    let nib = if c % 2 == 0 { byte & 0x0f } else { byte >> 4 };
    // Sign-extend the 4-bit two's-complement value.
    ((nib << 4) as i8) >> 4
}

/// Quantizes a `rows x cols` row-major f32 matrix into `out` in the layout of `kind`
/// (`out.len() == kind.data_len(rows, cols)`). Scales are rounded to f16 *before*
/// the values are divided by them, so the stored pair reconstructs as closely as f16 allows.
///
/// Returns `false` when `out` has the wrong length or `kind` is `Bytes`.
pub fn quantize(kind: StorageKind, rows: usize, cols: usize, src: &[f32], out: &mut [u8]) -> bool {
    if kind.data_len(rows, cols) != Some(out.len()) || src.len() != rows * cols {
        return false;
    }
    out.fill(0);
    match kind {
        StorageKind::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        StorageKind::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        StorageKind::Int8 => {
            let scales_at = (rows * cols).next_multiple_of(4);
            let (values, scales) = out.split_at_mut(scales_at);
            for r in 0..rows {
                let row = &src[r * cols..(r + 1) * cols];
                let s = symmetric_scale(row, 127.0);
                scales[2 * r..2 * r + 2].copy_from_slice(&s.to_le_bytes());
                let s = s.to_f32();
                for (c, v) in row.iter().enumerate() {
                    values[r * cols + c] = quantize_value(*v, s, 127.0) as u8;
                }
            }
        }
        StorageKind::Int4 { group } => {
            let rb = cols.div_ceil(2);
            let gc = group.cols();
            let groups = cols.div_ceil(gc);
            let scales_at = (rows * rb).next_multiple_of(4);
            let (values, scales) = out.split_at_mut(scales_at);
            for r in 0..rows {
                for g in 0..groups {
                    let lo = r * cols + g * gc;
                    let hi = r * cols + ((g + 1) * gc).min(cols);
                    let s = best_scale(&src[lo..hi], 7.0);
                    let si = r * groups + g;
                    scales[2 * si..2 * si + 2].copy_from_slice(&s.to_le_bytes());
                    let s = s.to_f32();
                    for (i, v) in src[lo..hi].iter().enumerate() {
                        let c = g * gc + i;
                        let q = (quantize_value(*v, s, 7.0) as u8) & 0x0f;
                        values[r * rb + c / 2] |= if c % 2 == 0 { q } else { q << 4 };
                    }
                }
            }
        }
        StorageKind::Bytes => return false,
    }
    true
}

/// Largest int8 level (levels are symmetric, in `-INT8_MAX..=INT8_MAX`).
pub const INT8_MAX: i8 = 127;
/// Largest int4 level (levels are symmetric, in `-INT4_MAX..=INT4_MAX`).
pub const INT4_MAX: i8 = 7;

/// The scale [`quantize`] gives one int8 row: `max|x| / 127`, rounded to f16 (upwards
/// when f16 rounding made it smaller).
pub fn int8_row_scale(row: &[f32]) -> f16 {
    symmetric_scale(row, INT8_MAX as f32)
}

/// The scale [`quantize`] gives one int4 group: the least-squares choice among
/// `max|x| / 7` and clipped versions of it (see `best_scale`).
pub fn int4_group_scale(group: &[f32]) -> f16 {
    best_scale(group, INT4_MAX as f32)
}

/// `round(v / scale)` clamped to `-qmax..=qmax` (0 for a zero scale): the rounding of
/// [`quantize`], for host quantizers that choose levels themselves.
pub fn round_level(v: f32, scale: f16, qmax: i8) -> i8 {
    quantize_value(v, scale.to_f32(), qmax as f32)
}

/// Writes levels chosen elsewhere (e.g. by an error-compensating quantizer on the host)
/// with their scales in the layout of `kind`: `levels` is `rows x cols` row-major,
/// `scales` one per row (int8) or `rows x ceil(cols/group)` (int4). The result reads back
/// as `levels[r][c] * scales[..]`, exactly as a blob from [`quantize`] would.
///
/// Returns `false` for a kind other than int8/int4, wrong lengths, or a level outside
/// the kind's range.
pub fn pack(
    kind: StorageKind,
    rows: usize,
    cols: usize,
    levels: &[i8],
    scales: &[f16],
    out: &mut [u8],
) -> bool {
    let qmax = match kind {
        StorageKind::Int8 => INT8_MAX,
        StorageKind::Int4 { .. } => INT4_MAX,
        _ => return false,
    };
    if kind.data_len(rows, cols) != Some(out.len())
        || Some(levels.len()) != rows.checked_mul(cols)
        || kind.scales_count(rows, cols) != Some(scales.len())
        || levels.iter().any(|l| *l < -qmax || *l > qmax)
    {
        return false;
    }
    out.fill(0);
    let values_len = kind.values_len(rows, cols).unwrap_or(0);
    let (values, tail) = out.split_at_mut(values_len.next_multiple_of(4));
    for (o, s) in tail.chunks_exact_mut(2).zip(scales) {
        o.copy_from_slice(&s.to_le_bytes());
    }
    match kind {
        StorageKind::Int8 => {
            for (o, l) in values.iter_mut().zip(levels) {
                *o = *l as u8;
            }
        }
        _ => {
            let rb = cols.div_ceil(2);
            for r in 0..rows {
                for c in 0..cols {
                    let q = (levels[r * cols + c] as u8) & 0x0f;
                    values[r * rb + c / 2] |= if c % 2 == 0 { q } else { q << 4 };
                }
            }
        }
    }
    true
}

/// `max|x| / qmax` rounded to f16, rounded up when f16 rounding made it smaller, so
/// that no value quantizes past `qmax`.
fn symmetric_scale(values: &[f32], qmax: f32) -> f16 {
    let amax = values.iter().fold(0.0f32, |m, v| m.max(libm::fabsf(*v)));
    if amax == 0.0 {
        return f16::from_f32(0.0);
    }
    let mut s = f16::from_f32(amax / qmax);
    if s.to_f32() == 0.0 {
        s = f16::from_bits(1); // smallest subnormal: keeps tiny rows non-zero
    }
    while s.to_f32() * qmax < amax && s.is_finite() {
        s = f16::from_bits(s.to_bits() + 1);
    }
    s
}

/// For int4 the `max|x|` scale wastes most of the 15 levels on one outlier: try scales
/// down to 70% of it (clipping the outlier) and keep the one with the least squared
/// error, a cheap form of the clipping search that GPTQ-style quantizers do.
fn best_scale(values: &[f32], qmax: f32) -> f16 {
    let full = symmetric_scale(values, qmax);
    let err = |s: f16| -> f32 {
        let s = s.to_f32();
        values
            .iter()
            .map(|v| {
                let d = v - quantize_value(*v, s, qmax) as f32 * s;
                d * d
            })
            .sum()
    };
    let mut best = (err(full), full);
    for k in 1..=15 {
        let s = f16::from_f32(full.to_f32() * (1.0 - 0.02 * k as f32));
        let e = err(s);
        if e < best.0 {
            best = (e, s);
        }
    }
    best.1
}

fn quantize_value(v: f32, scale: f32, qmax: f32) -> i8 {
    if scale == 0.0 {
        return 0;
    }
    libm::roundf(v / scale).clamp(-qmax, qmax) as i8
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    fn roundtrip(kind: StorageKind, rows: usize, cols: usize, src: &[f32]) -> Vec<f32> {
        let mut buf = vec![0u8; kind.data_len(rows, cols).unwrap()];
        assert!(quantize(kind, rows, cols, src, &mut buf));
        let t = Tensor::from_data(kind, rows, cols, &buf).unwrap();
        let mut out = vec![0.0; rows * cols];
        for r in 0..rows {
            t.dequantize_row(r, &mut out[r * cols..(r + 1) * cols]);
            for c in 0..cols {
                assert_eq!(t.get(r, c), out[r * cols + c]);
            }
        }
        out
    }

    fn data(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| libm::sinf(i as f32 * 0.7) * (1.0 + (i % 5) as f32))
            .collect()
    }

    #[test]
    fn f32_is_exact_and_f16_rounds() {
        let src = data(3 * 7);
        assert_eq!(roundtrip(StorageKind::F32, 3, 7, &src), src);
        let back = roundtrip(StorageKind::F16, 3, 7, &src);
        for (a, b) in src.iter().zip(&back) {
            assert!((a - b).abs() <= a.abs() * 1e-3, "{a} {b}");
        }
    }

    #[test]
    fn int8_error_within_half_a_step() {
        let (rows, cols) = (5, 37);
        let src = data(rows * cols);
        let back = roundtrip(StorageKind::Int8, rows, cols, &src);
        for r in 0..rows {
            let row = &src[r * cols..(r + 1) * cols];
            let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let step = amax / 127.0;
            for c in 0..cols {
                assert!((row[c] - back[r * cols + c]).abs() <= 0.5 * step * 1.01 + 1e-6);
            }
        }
    }

    #[test]
    fn int4_groups_and_odd_columns() {
        // 45 columns: two groups (32 + 13) and an odd number of nibbles per row.
        let (rows, cols) = (3, 45);
        let src = data(rows * cols);
        let back = roundtrip(StorageKind::INT4, rows, cols, &src);
        for r in 0..rows {
            for g in 0..2 {
                let lo = g * 32;
                let hi = ((g + 1) * 32).min(cols);
                let seg = &src[r * cols + lo..r * cols + hi];
                let amax = seg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let err2 = |q: &[f32]| -> f32 {
                    (lo..hi)
                        .map(|c| (src[r * cols + c] - q[c - lo]).powi(2))
                        .sum()
                };
                // No worse than plain max-abs rounding, whose error is at most half a step.
                let plain: std::vec::Vec<f32> = seg
                    .iter()
                    .map(|v| libm::roundf(v / (amax / 7.0)) * (amax / 7.0))
                    .collect();
                let ours: std::vec::Vec<f32> = (lo..hi).map(|c| back[r * cols + c]).collect();
                assert!(err2(&ours) <= err2(&plain) * 1.01 + 1e-9);
                for c in lo..hi {
                    // Clipping can cost at most 30% of the largest value.
                    assert!(
                        (src[r * cols + c] - back[r * cols + c]).abs()
                            <= 0.3 * amax + 0.5 * amax / 7.0
                    );
                }
            }
        }
    }

    /// Every kind a matrix can have: f32, f16, int8 and int4 at each group.
    fn matrix_kinds() -> std::vec::Vec<StorageKind> {
        let mut kinds = std::vec![StorageKind::F32, StorageKind::F16, StorageKind::Int8];
        kinds.extend(Int4Group::ALL.map(|group| StorageKind::Int4 { group }));
        kinds
    }

    #[test]
    fn int4_groups_are_the_allowed_sizes() {
        for cols in 0..=u16::MAX {
            let g = Int4Group::new(cols);
            assert_eq!(g.is_some(), [16, 32, 64, 128].contains(&cols), "{cols}");
            if let Some(g) = g {
                assert_eq!(g.cols(), cols as usize);
                assert_eq!(u16::from(g), cols);
            }
        }
        assert_eq!(StorageKind::INT4.name(), "int4");
        assert_eq!(
            StorageKind::Int4 {
                group: Int4Group::G16
            }
            .name(),
            "int4/g16"
        );
        // The wire code does not depend on the group.
        for group in Int4Group::ALL {
            let k = StorageKind::Int4 { group };
            assert_eq!(k.code(), 3);
            assert_eq!(StorageKind::from_code(3, group), Some(k));
        }
    }

    #[test]
    fn int4_scales_follow_the_group() {
        // 200 columns: groups of 16 (12.5 of them), 32, 64, 128, each with a partial
        // last group; every group's scale covers exactly its columns.
        let (rows, cols) = (3, 200);
        let src = data(rows * cols);
        for group in Int4Group::ALL {
            let kind = StorageKind::Int4 { group };
            let g = group.cols();
            assert_eq!(kind.scales_count(rows, cols), Some(rows * cols.div_ceil(g)));
            let back = roundtrip(kind, rows, cols, &src);
            let mut buf = vec![0u8; kind.data_len(rows, cols).unwrap()];
            assert!(quantize(kind, rows, cols, &src, &mut buf));
            let t = Tensor::from_data(kind, rows, cols, &buf).unwrap();
            for r in 0..rows {
                for (i, seg) in src[r * cols..(r + 1) * cols].chunks(g).enumerate() {
                    let s = t.scale(r * cols.div_ceil(g) + i);
                    assert_eq!(
                        s,
                        int4_group_scale(seg).to_f32(),
                        "{kind:?} row {r} group {i}"
                    );
                    for (j, v) in seg.iter().enumerate() {
                        let c = i * g + j;
                        assert_eq!(
                            back[r * cols + c],
                            round_level(*v, f16::from_f32(s), 7) as f32 * s
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn smaller_groups_cost_scales_and_err_less() {
        let (rows, cols) = (8, 256);
        let src: std::vec::Vec<f32> = data(rows * cols)
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 37 == 0 { v * 8.0 } else { *v })
            .collect();
        let mut last: Option<(usize, f32)> = None;
        for group in Int4Group::ALL {
            let kind = StorageKind::Int4 { group };
            let back = roundtrip(kind, rows, cols, &src);
            let err: f32 = src.iter().zip(&back).map(|(a, b)| (a - b).powi(2)).sum();
            let len = kind.data_len(rows, cols).unwrap();
            if let Some((prev_len, prev_err)) = last {
                assert!(
                    len < prev_len && err > prev_err,
                    "{kind:?}: {len} B, error {err}"
                );
            }
            last = Some((len, err));
        }
    }

    #[test]
    fn pack_reproduces_quantize() {
        let (rows, cols) = (3, 45);
        let src = data(rows * cols);
        let mut kinds = std::vec![StorageKind::Int8];
        kinds.extend(Int4Group::ALL.map(|group| StorageKind::Int4 { group }));
        for kind in kinds {
            let mut want = vec![0u8; kind.data_len(rows, cols).unwrap()];
            assert!(quantize(kind, rows, cols, &src, &mut want));
            let (qmax, group) = match kind {
                StorageKind::Int4 { group } => (INT4_MAX, group.cols()),
                _ => (INT8_MAX, cols),
            };
            let mut levels = std::vec::Vec::new();
            let mut scales = std::vec::Vec::new();
            for r in 0..rows {
                let row = &src[r * cols..(r + 1) * cols];
                for g in row.chunks(group) {
                    let s = match kind {
                        StorageKind::Int8 => int8_row_scale(g),
                        _ => int4_group_scale(g),
                    };
                    scales.push(s);
                    levels.extend(g.iter().map(|v| round_level(*v, s, qmax)));
                }
            }
            let mut got = vec![0u8; want.len()];
            assert!(pack(kind, rows, cols, &levels, &scales, &mut got));
            assert_eq!(got, want, "{kind:?}");
            levels[0] = if kind == StorageKind::Int8 {
                i8::MIN
            } else {
                qmax + 1
            };
            assert!(!pack(kind, rows, cols, &levels, &scales, &mut got));
        }
    }

    #[test]
    fn fast_half_conversion_is_exact() {
        for bits in 0..=u16::MAX {
            let want = f16::from_bits(bits).to_f32();
            let got = f16_le_to_f32(bits.to_le_bytes());
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{bits:#06x}");
            }
        }
    }

    #[test]
    fn nibble_sign_extension() {
        let row = [0x8f_u8, 0x71];
        assert_eq!(int4_at(&row, 0), -1);
        assert_eq!(int4_at(&row, 1), -8);
        assert_eq!(int4_at(&row, 2), 1);
        assert_eq!(int4_at(&row, 3), 7);
    }

    #[test]
    fn zero_rows_quantize_to_zero() {
        let src = vec![0.0; 2 * 40];
        for kind in &matrix_kinds()[2..] {
            assert!(roundtrip(*kind, 2, 40, &src).iter().all(|v| *v == 0.0));
        }
    }

    #[test]
    fn row_slices_match_full_tensor() {
        let (rows, cols) = (6, 40);
        let src = data(rows * cols);
        for kind in matrix_kinds() {
            let mut buf = vec![0u8; kind.data_len(rows, cols).unwrap()];
            assert!(quantize(kind, rows, cols, &src, &mut buf));
            let t = Tensor::from_data(kind, rows, cols, &buf).unwrap();
            let sub = t.rows(2, 3);
            for r in 0..3 {
                for c in 0..cols {
                    assert_eq!(sub.get(r, c), t.get(r + 2, c));
                }
            }
        }
    }
}
