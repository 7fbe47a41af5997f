//! The int8 matrix-vector product with the DSP instructions of Armv7E-M (Cortex-M4/M7)
//! and of Armv8-M Mainline cores that have the extension (Cortex-M33/M35P/M55/M85; see
//! `build.rs` for when it is on): one of the crate's two modules with `unsafe` code,
//! because inline assembly is `unsafe`.
//!
//! `SXTB16` sign-extends bytes 0 and 2 (or, rotated by 8, bytes 1 and 3) of a word of
//! four int8 weights into two 16-bit lanes; `SMLAD` multiplies two pairs of 16-bit
//! lanes and adds both products to a 32-bit accumulator. The activations are
//! quantized once per input vector and laid out by [`super::arrange_pairs`] as 16-bit
//! pairs in exactly those lanes (`[x0, x2]`, `[x1, x3]`, `[x4, x6]`, ...), so one `LDM`
//! of two weight words and one `LDM` of four activation words feed four `SXTB16` and
//! four `SMLAD`: eight multiply-accumulates in ten instructions. For the common row
//! lengths (8, 16, 32, 64, 128 columns) a row is unrolled completely and the loop runs
//! over rows; other multiples of 8 loop over blocks of 16 columns.
//!
//! Each row's sum is the exact integer `Σ w[c]·x[c]`, the same `i32` as the portable
//! [`super::dot_i8`] (integer addition is associative and no partial sum can overflow:
//! |w|, |x| <= 128 and at most 65 535 columns give |sum| < 2^31). The float that is
//! made of it, `sum as f32 * (scale_r * input_scale)`, is computed with the same
//! operations in the same order as the portable kernel (`VCVT` from s32 rounds to
//! nearest like Rust's `as f32`; `VCVTB` converts the f16 row scale exactly, like
//! `f16_le_to_f32`), so the outputs are bit-identical (for finite scales, the only
//! kind a valid blob holds). The firmware self-test (`firmware-examples/kernels`)
//! compares the two kernels on thousands of random matrices in QEMU, and the firmware
//! trace test compares whole traces with the host's bit for bit.
//!
//! Every `unsafe` block here is inline assembly that reads and writes only memory the
//! safe entry point [`matvec_i8`] has checked (lengths and alignment) beforehand; a
//! matrix that does not meet the conditions is left to the portable kernel.

use core::arch::asm;

use crate::quant::Int4Group;

/// `out[r] = Σ_c W[r, c]·x[c] as f32 * (scale_r * in_scale)` for `out.len()` rows of
/// `cols` int8 weights in `values` (row-major), f16 row scales in `scales`, and the
/// activations as [`super::arrange_pairs`] lays them out in `pairs`.
///
/// Returns `false` without touching `out` (the caller then runs the portable kernel)
/// unless `cols` is a non-zero multiple of 8, `values` starts on a 4-byte boundary
/// (`LDM` needs it; every row then does), and `values`, `scales` and `pairs` are long
/// enough.
pub(super) fn matvec_i8(
    values: &[u8],
    scales: &[u8],
    cols: usize,
    pairs: &[u32],
    in_scale: f32,
    out: &mut [f32],
) -> bool {
    let rows = out.len();
    let ok = rows > 0
        && cols > 0
        && cols % 8 == 0
        && cols <= 2040 // `SUB` immediate of the unrolled rows (2 * cols <= 4095)
        && (values.as_ptr() as usize) % 4 == 0
        && values.len() / cols >= rows
        && scales.len() / 2 >= rows
        && pairs.len() >= cols / 2;
    if !ok {
        return false;
    }
    // Pass 1: the integer sums, stored as the bits of `out`.
    let (w, x, o) = (values.as_ptr(), pairs.as_ptr(), out.as_mut_ptr());
    match cols {
        8 => rows_8(w, x, o, rows),
        16 => rows_16(w, x, o, rows),
        32 => rows_32(w, x, o, rows),
        64 => rows_64(w, x, o, rows),
        128 => rows_128(w, x, o, rows),
        _ => rows_any(w, x, o, rows, cols),
    }
    // Pass 2: each sum times its row scale and the input scale, in place.
    finish(scales, in_scale, out);
    true
}

/// One instantiation per row length: the row's `cols / 8` blocks unrolled (the first
/// with `SMUAD`, which starts the sum), then the activation pointer back to the row
/// start and the sum stored; two rows per pass of the loop (an odd count enters the
/// first pass at its second row).
macro_rules! rows_fixed {
    ($name:ident, $cols:literal) => {
        rows_fixed!(@impl $name, $cols, [
            "ldm {w}!, {{r4, r5}}",
            "ldm {x}!, {{r8, r9, r10, r11}}",
            "sxtb16 {t}, r4",
            "smuad {acc}, {t}, r8",
            "sxtb16 {t}, r4, ror #8",
            "smlad {acc}, {t}, r9, {acc}",
            "sxtb16 {t}, r5",
            "smlad {acc}, {t}, r10, {acc}",
            "sxtb16 {t}, r5, ror #8",
            "smlad {acc}, {t}, r11, {acc}",
            ".rept {more}",
            "ldm {w}!, {{r4, r5}}",
            "ldm {x}!, {{r8, r9, r10, r11}}",
            "sxtb16 {t}, r4",
            "smlad {acc}, {t}, r8, {acc}",
            "sxtb16 {t}, r4, ror #8",
            "smlad {acc}, {t}, r9, {acc}",
            "sxtb16 {t}, r5",
            "smlad {acc}, {t}, r10, {acc}",
            "sxtb16 {t}, r5, ror #8",
            "smlad {acc}, {t}, r11, {acc}",
            ".endr",
            "subw {x}, {x}, #{back}",
            "str {acc}, [{o}], #4"
        ]);
    };
    (@impl $name:ident, $cols:literal, [$($row:literal),*]) => {
        /// Integer row sums for rows of this many columns (see [`rows_fixed`]).
        #[inline(never)]
        fn $name(w: *const u8, x: *const u32, out: *mut f32, rows: usize) {
            // SAFETY: `matvec_i8` checked that `rows >= 1`, that `w` is 4-byte aligned
            // and holds `rows * cols` bytes, that `x` holds `cols / 2` words (the
            // pointer comes back to its start after each row) and that `out` holds
            // `rows` words, the only memory written (one word per row). Only declared
            // registers change; `lsrs`, `adds` and `subs` set the flags, which are not
            // declared preserved.
            unsafe {
                asm!(
                    "lsrs {n}, {n}, #1",
                    "bcc 2f",
                    "adds {n}, {n}, #1",
                    "b 3f",
                    "2:",
                    $($row,)*
                    "3:",
                    $($row,)*
                    "subs {n}, {n}, #1",
                    "bne 2b",
                    more = const $cols / 8 - 1,
                    back = const $cols * 2,
                    w = inout(reg) w => _,
                    x = inout(reg) x => _,
                    o = inout(reg) out => _,
                    n = inout(reg) rows => _,
                    acc = out(reg) _,
                    t = out(reg) _,
                    out("r4") _,
                    out("r5") _,
                    out("r8") _,
                    out("r9") _,
                    out("r10") _,
                    out("r11") _,
                    options(nostack),
                );
            }
        }
    };
}

rows_fixed!(rows_8, 8);
rows_fixed!(rows_16, 16);
rows_fixed!(rows_32, 32);
rows_fixed!(rows_64, 64);
rows_fixed!(rows_128, 128);

/// Integer row sums for any multiple of 8 columns: per row, a loop over blocks of 16
/// columns and a last block of 8 when `cols % 16 == 8`.
#[inline(never)]
fn rows_any(w: *const u8, x: *const u32, out: *mut f32, rows: usize, cols: usize) {
    let mut w = w;
    for r in 0..rows {
        let blocks = cols / 16;
        let mut acc: i32 = 0;
        let mut xp = x;
        if blocks > 0 {
            // SAFETY: `blocks * 16` bytes from `w` (4-byte aligned, within the `rows *
            // cols` bytes `matvec_i8` checked) and `blocks * 8` words from `xp` (within
            // the `cols / 2` words checked). Reads only; declared registers change;
            // `subs` sets the flags.
            unsafe {
                asm!(
                    "2:",
                    "ldm {w}!, {{r4, r5}}",
                    "ldm {x}!, {{r8, r9, r10, r11}}",
                    "sxtb16 {t}, r4",
                    "smlad {acc}, {t}, r8, {acc}",
                    "sxtb16 {t}, r4, ror #8",
                    "smlad {acc}, {t}, r9, {acc}",
                    "sxtb16 {t}, r5",
                    "smlad {acc}, {t}, r10, {acc}",
                    "sxtb16 {t}, r5, ror #8",
                    "smlad {acc}, {t}, r11, {acc}",
                    "ldm {w}!, {{r4, r5}}",
                    "ldm {x}!, {{r8, r9, r10, r11}}",
                    "sxtb16 {t}, r4",
                    "smlad {acc}, {t}, r8, {acc}",
                    "sxtb16 {t}, r4, ror #8",
                    "smlad {acc}, {t}, r9, {acc}",
                    "sxtb16 {t}, r5",
                    "smlad {acc}, {t}, r10, {acc}",
                    "sxtb16 {t}, r5, ror #8",
                    "smlad {acc}, {t}, r11, {acc}",
                    "subs {n}, {n}, #1",
                    "bne 2b",
                    w = inout(reg) w,
                    x = inout(reg) xp,
                    n = inout(reg) blocks => _,
                    acc = inout(reg) acc,
                    t = out(reg) _,
                    out("r4") _,
                    out("r5") _,
                    out("r8") _,
                    out("r9") _,
                    out("r10") _,
                    out("r11") _,
                    options(nostack, readonly),
                );
            }
        }
        if cols % 16 != 0 {
            // SAFETY: the row's last 8 bytes from `w` (still 4-byte aligned: it moved
            // by whole blocks of 16) and 4 words from `xp`, within the checked lengths.
            // Reads only; declared registers change.
            unsafe {
                asm!(
                    "ldm {w}!, {{r4, r5}}",
                    "ldm {x}, {{r8, r9, r10, r11}}",
                    "sxtb16 {t}, r4",
                    "smlad {acc}, {t}, r8, {acc}",
                    "sxtb16 {t}, r4, ror #8",
                    "smlad {acc}, {t}, r9, {acc}",
                    "sxtb16 {t}, r5",
                    "smlad {acc}, {t}, r10, {acc}",
                    "sxtb16 {t}, r5, ror #8",
                    "smlad {acc}, {t}, r11, {acc}",
                    w = inout(reg) w,
                    x = in(reg) xp,
                    acc = inout(reg) acc,
                    t = out(reg) _,
                    out("r4") _,
                    out("r5") _,
                    out("r8") _,
                    out("r9") _,
                    out("r10") _,
                    out("r11") _,
                    options(nostack, readonly, preserves_flags),
                );
            }
        }
        // SAFETY: `r < rows`, and `out` holds `rows` words (checked by `matvec_i8`).
        unsafe { out.add(r).write(f32::from_bits(acc as u32)) };
    }
}

/// `out[r] = (bits of out[r] as i32) as f32 * (f16 scales[r] * in_scale)` without an
/// FPU the kernel may use (soft-float targets such as `thumbv7em-none-eabi`): the
/// portable kernel's expression itself, so the same bits.
#[cfg(not(tinylens_dsp_vfp))]
pub(super) fn finish(scales: &[u8], in_scale: f32, out: &mut [f32]) {
    for (o, s) in out.iter_mut().zip(scales.chunks_exact(2)) {
        let sum = o.to_bits() as i32;
        *o = sum as f32 * (crate::quant::f16_le_to_f32([s[0], s[1]]) * in_scale);
    }
}

/// `out[r] = (bits of out[r] as i32) as f32 * (f16 scales[r] * in_scale)`, the
/// portable kernel's float operations in its order: `VCVT.F32.S32` (round to nearest,
/// as `as f32`), `VCVTB.F32.F16` (exact), then the two multiplications.
#[cfg(tinylens_dsp_vfp)]
pub(super) fn finish(scales: &[u8], in_scale: f32, out: &mut [f32]) {
    let rows = out.len();
    let mut o = out.as_mut_ptr();
    let mut s = scales.as_ptr();
    // Eight rows at a time when the scales are word-aligned (LDM needs it): the loads,
    // the store and the loop are then shared by eight rows.
    let octs = if (s as usize) % 4 == 0 { rows / 8 } else { 0 };
    if octs > 0 {
        // SAFETY: reads and writes `8 * octs <= rows` words at `o` (`out` holds
        // `rows`), reads `16 * octs` bytes at `s` (`scales` holds `2 * rows`, checked
        // by `matvec_i8`; 4-byte aligned as checked above). Only declared registers
        // change (s16..s20 are callee-saved: the compiler saves them around this);
        // `subs` sets the flags.
        unsafe {
            asm!(
                "vmov s20, {k}",
                "2:",
                "vldmia {o}, {{s0, s1, s2, s3, s4, s5, s6, s7}}",
                // Fixed registers: LDM fills its list in register-number order.
                "ldm {s}!, {{r8, r9, r10, r11}}",
                "vmov s8, s9, r8, r9",
                "vmov s10, s11, r10, r11",
                "vcvt.f32.s32 s0, s0",
                "vcvt.f32.s32 s1, s1",
                "vcvt.f32.s32 s2, s2",
                "vcvt.f32.s32 s3, s3",
                "vcvt.f32.s32 s4, s4",
                "vcvt.f32.s32 s5, s5",
                "vcvt.f32.s32 s6, s6",
                "vcvt.f32.s32 s7, s7",
                "vcvtb.f32.f16 s12, s8",
                "vcvtt.f32.f16 s13, s8",
                "vcvtb.f32.f16 s14, s9",
                "vcvtt.f32.f16 s15, s9",
                "vcvtb.f32.f16 s16, s10",
                "vcvtt.f32.f16 s17, s10",
                "vcvtb.f32.f16 s18, s11",
                "vcvtt.f32.f16 s19, s11",
                "vmul.f32 s12, s12, s20",
                "vmul.f32 s13, s13, s20",
                "vmul.f32 s14, s14, s20",
                "vmul.f32 s15, s15, s20",
                "vmul.f32 s16, s16, s20",
                "vmul.f32 s17, s17, s20",
                "vmul.f32 s18, s18, s20",
                "vmul.f32 s19, s19, s20",
                "vmul.f32 s0, s0, s12",
                "vmul.f32 s1, s1, s13",
                "vmul.f32 s2, s2, s14",
                "vmul.f32 s3, s3, s15",
                "vmul.f32 s4, s4, s16",
                "vmul.f32 s5, s5, s17",
                "vmul.f32 s6, s6, s18",
                "vmul.f32 s7, s7, s19",
                "vstmia {o}!, {{s0, s1, s2, s3, s4, s5, s6, s7}}",
                "subs {n}, {n}, #1",
                "bne 2b",
                o = inout(reg) o,
                s = inout(reg) s,
                n = inout(reg) octs => _,
                out("r8") _,
                out("r9") _,
                out("r10") _,
                out("r11") _,
                k = in(reg) in_scale.to_bits(),
                out("s0") _,
                out("s1") _,
                out("s2") _,
                out("s3") _,
                out("s4") _,
                out("s5") _,
                out("s6") _,
                out("s7") _,
                out("s8") _,
                out("s9") _,
                out("s10") _,
                out("s11") _,
                out("s12") _,
                out("s13") _,
                out("s14") _,
                out("s15") _,
                out("s16") _,
                out("s17") _,
                out("s18") _,
                out("s19") _,
                out("s20") _,
                options(nostack),
            );
        }
    }
    let rest = rows - 8 * octs;
    if rest > 0 {
        // SAFETY: reads and writes the `rest` remaining words at `o` and reads `2 *
        // rest` bytes at `s` (LDRH may be unaligned on Armv7-M), within `out` and
        // `scales` as checked. Only declared registers change; `subs` sets the flags.
        unsafe {
            asm!(
                "vmov s2, {k}",
                "2:",
                "vldr s0, [{o}]",
                "ldrh {a}, [{s}], #2",
                "vcvt.f32.s32 s0, s0",
                "vmov s1, {a}",
                "vcvtb.f32.f16 s1, s1",
                "vmul.f32 s1, s1, s2",
                "vmul.f32 s0, s0, s1",
                "vstmia {o}!, {{s0}}",
                "subs {n}, {n}, #1",
                "bne 2b",
                o = inout(reg) o => _,
                s = inout(reg) s => _,
                n = inout(reg) rest => _,
                a = out(reg) _,
                k = in(reg) in_scale.to_bits(),
                out("s0") _,
                out("s1") _,
                out("s2") _,
                options(nostack),
            );
        }
    }
}

/// Bits of `max |x[i]|` (the sign cleared, so the order of the patterns as integers is
/// the order of the magnitudes and a NaN is above infinity), as the portable
/// [`super::quantize_input`] folds them; `x.len()` a non-zero multiple of 4.
#[cfg(tinylens_dsp_vfp)]
fn max_abs_bits(x: &[f32]) -> u32 {
    let m: u32;
    // SAFETY: reads `x.len()` words at `x` (a multiple of 4, non-zero: checked by the
    // caller). Only declared registers change; `cmp` and `subs` set the flags.
    unsafe {
        asm!(
            "movs {m}, #0",
            "2:",
            "ldm {x}!, {{r0, r1, r2, r3}}",
            // m = max(m, bits << 1): the shift drops the sign.
            "cmp {m}, r0, lsl #1",
            "it lo",
            "lsllo {m}, r0, #1",
            "cmp {m}, r1, lsl #1",
            "it lo",
            "lsllo {m}, r1, #1",
            "cmp {m}, r2, lsl #1",
            "it lo",
            "lsllo {m}, r2, #1",
            "cmp {m}, r3, lsl #1",
            "it lo",
            "lsllo {m}, r3, #1",
            "subs {n}, {n}, #1",
            "bne 2b",
            "lsrs {m}, {m}, #1",
            x = inout(reg) x.as_ptr() => _,
            n = inout(reg) x.len() / 4 => _,
            m = out(reg) m,
            out("r0") _, out("r1") _, out("r2") _, out("r3") _,
            options(nostack, readonly),
        );
    }
    m
}

/// [`super::quantize_input`] and [`super::arrange_pairs`] in one pass: `q` gets the
/// int8 activations, `pairs` their DSP layout, and the scale is returned. `None`
/// (nothing written) unless `x.len()` is a non-zero multiple of 8, `q` is word-aligned
/// and both are long enough, and `x` has a finite non-zero maximum whose `2 · 127 /
/// max` is finite; the caller then takes the portable path.
///
/// Per element: `VMUL` by `127 / max` (the portable product), `VCVT.S32.F32 #1` (the
/// fixed-point conversion with one fraction bit, rounding toward zero: exactly
/// `trunc(2y)`, the portable `(y * 2.0) as i32`), then two lanes at a time: `PKHBT`
/// packs `t` of the pair layout's two elements into 16-bit lanes (|t| <= 255), `BIC`
/// makes `1 + (t >> 31)` per lane (1 for `t >= 0`, else 0) and `SHADD16` halves `t +`
/// that: `(t + 1 + (t >> 31)) >> 1`, the portable round-half-away. `UXTB16`/`ORR`
/// gather the low bytes of two pair words into four int8 values.
#[cfg(tinylens_dsp_vfp)]
pub(super) fn quantize_pairs(x: &[f32], q: &mut [i8], pairs: &mut [u32]) -> Option<f32> {
    let n = x.len();
    if n == 0 || n % 8 != 0 || q.len() < n || pairs.len() < n / 2 || (q.as_ptr() as usize) % 4 != 0
    {
        return None;
    }
    let amax = f32::from_bits(max_abs_bits(x));
    if amax == 0.0 || !amax.is_finite() {
        return None;
    }
    let inv = 127.0 / amax;
    if !(inv * 2.0).is_finite() {
        return None;
    }
    // SAFETY: reads `n` words at `x`, writes `n` bytes at `q` (word-aligned, as STR of
    // whole words here needs) and `n / 2` words at `pairs`: all checked above. Only
    // declared registers change (s16 is callee-saved: the compiler saves it); `subs`
    // sets the flags.
    unsafe {
        asm!(
            "vmov s16, {inv}",
            "2:",
            "vldmia {x}!, {{s0-s7}}",
            "vmul.f32 s0, s0, s16",
            "vmul.f32 s1, s1, s16",
            "vmul.f32 s2, s2, s16",
            "vmul.f32 s3, s3, s16",
            "vmul.f32 s4, s4, s16",
            "vmul.f32 s5, s5, s16",
            "vmul.f32 s6, s6, s16",
            "vmul.f32 s7, s7, s16",
            "vcvt.s32.f32 s0, s0, #1",
            "vcvt.s32.f32 s1, s1, #1",
            "vcvt.s32.f32 s2, s2, #1",
            "vcvt.s32.f32 s3, s3, #1",
            "vcvt.s32.f32 s4, s4, #1",
            "vcvt.s32.f32 s5, s5, #1",
            "vcvt.s32.f32 s6, s6, #1",
            "vcvt.s32.f32 s7, s7, #1",
            "vmov r0, r1, s0, s1",
            "vmov r2, r3, s2, s3",
            "pkhbt r4, r0, r2, lsl #16",
            "pkhbt r5, r1, r3, lsl #16",
            "bic r0, {one}, r4, lsr #15",
            "shadd16 r4, r4, r0",
            "bic r0, {one}, r5, lsr #15",
            "shadd16 r5, r5, r0",
            "uxtb16 r1, r4",
            "uxtb16 r2, r5",
            "orr r1, r1, r2, lsl #8",
            "str r1, [{q}], #4",
            "stm {p}!, {{r4, r5}}",
            "vmov r0, r1, s4, s5",
            "vmov r2, r3, s6, s7",
            "pkhbt r4, r0, r2, lsl #16",
            "pkhbt r5, r1, r3, lsl #16",
            "bic r0, {one}, r4, lsr #15",
            "shadd16 r4, r4, r0",
            "bic r0, {one}, r5, lsr #15",
            "shadd16 r5, r5, r0",
            "uxtb16 r1, r4",
            "uxtb16 r2, r5",
            "orr r1, r1, r2, lsl #8",
            "str r1, [{q}], #4",
            "stm {p}!, {{r4, r5}}",
            "subs {n}, {n}, #1",
            "bne 2b",
            x = inout(reg) x.as_ptr() => _,
            q = inout(reg) q.as_mut_ptr() => _,
            p = inout(reg) pairs.as_mut_ptr() => _,
            n = inout(reg) n / 8 => _,
            one = in(reg) 0x0001_0001u32,
            inv = in(reg) inv.to_bits(),
            out("r0") _, out("r1") _, out("r2") _, out("r3") _, out("r4") _, out("r5") _,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _,
            out("s4") _, out("s5") _, out("s6") _, out("s7") _, out("s16") _,
            options(nostack),
        );
    }
    Some(amax / 127.0)
}

/// Widest int4 row [`matvec_i4`] takes (its activation layout lives on the stack).
const I4_MAX_COLS: usize = 512;

/// `out[r] = (Σ_g S_rg as f32 * scale_rg) * in_scale` for `out.len()` rows of `cols`
/// int4 weights (two per byte, low nibble first; one f16 scale per group of `group`
/// columns), `S_rg` the exact integer sum of group `g` of row `r` with the int8
/// activations `q`: the portable kernel's float operations in its order, so the same
/// bits.
///
/// The nibbles go to 16-bit lanes without shifting each one down: `AND` with
/// `0xF0F0F0F0` of the word (odd columns) and of the word shifted left by 4 (even
/// columns) leaves every nibble in the top of its byte, i.e. `16 · w` as an int8, and
/// `SXTB16` makes lanes of those, which `SMLAD` multiplies with activation pairs laid
/// out to match (per 8 columns `[x0, x4] [x2, x6] [x1, x5] [x3, x7]`). A group is
/// summed 16 columns (two weight words) at a time, [`dot16`]; its sum is then `16 · S`
/// exactly (|16 · S| <= 16 · 128 · 8 · 128 < 2^31 for groups of up to 128), and `>> 4`
/// gives `S`.
///
/// `false` (nothing written) unless `cols` is a non-zero multiple of the group, or 16,
/// 32 or 64 columns no wider than it (one group per row), at most [`I4_MAX_COLS`];
/// `values` is word-aligned and holds the rows, and `scales` and `q` are long enough.
pub(super) fn matvec_i4(
    values: &[u8],
    scales: &[u8],
    cols: usize,
    group: crate::quant::Int4Group,
    q: &[i8],
    in_scale: f32,
    out: &mut [f32],
) -> bool {
    let rows = out.len();
    // A row no wider than its group is one group, summed whole (as the portable kernel
    // does): taken too when it is itself 16, 32 or 64 columns, e.g. a head's W_O row of
    // 16 columns with the default groups of 32.
    let gc = group.cols().min(cols.max(1));
    let groups = cols / gc;
    let ok = rows > 0
        && cols > 0
        && Int4Group::new(gc as u16).is_some()
        && cols % gc == 0
        && cols <= I4_MAX_COLS
        && (values.as_ptr() as usize) % 4 == 0
        && values.len() / (cols / 2) >= rows
        && scales.len() / 2 / groups >= rows
        && q.len() >= cols;
    if !ok {
        return false;
    }
    let lane = |v: i8| v as i16 as u16 as u32;
    let mut xl = [0u32; I4_MAX_COLS / 2];
    for (g, o) in q[..cols].chunks_exact(8).zip(xl.chunks_exact_mut(4)) {
        o[0] = lane(g[0]) | lane(g[4]) << 16;
        o[1] = lane(g[2]) | lane(g[6]) << 16;
        o[2] = lane(g[1]) | lane(g[5]) << 16;
        o[3] = lane(g[3]) | lane(g[7]) << 16;
    }
    // One copy of the row loop per group size, each group's steps of 16 columns
    // straight-line code (the loop of the one-size kernel of 32 columns, unchanged).
    match gc {
        16 => rows_i4::<1>(values, scales, groups, &xl, in_scale, out),
        32 => rows_i4::<2>(values, scales, groups, &xl, in_scale, out),
        64 => rows_i4::<4>(values, scales, groups, &xl, in_scale, out),
        _ => rows_i4::<8>(values, scales, groups, &xl, in_scale, out),
    }
    true
}

/// The rows of [`matvec_i4`] with groups of `16 * STEPS` columns (`STEPS` 1, 2, 4 or
/// 8), `groups` per row, activations laid out in `xl`; the lengths were checked there.
#[inline(always)]
fn rows_i4<const STEPS: usize>(
    values: &[u8],
    scales: &[u8],
    groups: usize,
    xl: &[u32],
    in_scale: f32,
    out: &mut [f32],
) {
    #[cfg(not(tinylens_dsp_vfp))]
    use crate::quant::f16_le_to_f32;
    let mut w = values.as_ptr();
    #[cfg(not(tinylens_dsp_vfp))]
    let mut s = scales.chunks_exact(2);
    #[cfg(tinylens_dsp_vfp)]
    let mut sp = scales.as_ptr();
    for o in out.iter_mut() {
        let mut acc = 0.0f32;
        let mut x = xl.as_ptr();
        for _ in 0..groups {
            let mut sum: i32 = 0;
            // SAFETY: the group's `8 * STEPS` bytes at `w` lie within the
            // `rows * cols / 2` bytes checked, on word boundaries (rows and groups are
            // whole words, as `cols` is a multiple of the group, itself of 16), and its
            // `8 * STEPS` words at `x` within `xl`, which holds `cols / 2` words per row.
            unsafe {
                if STEPS == 1 {
                    dot16(&mut w, &mut x, &mut sum);
                }
                for _ in 0..STEPS / 2 {
                    dot32(&mut w, &mut x, &mut sum);
                }
            }
            #[cfg(not(tinylens_dsp_vfp))]
            {
                let scale = s.next().map_or(f32::NAN, |b| f16_le_to_f32([b[0], b[1]]));
                acc += (sum >> 4) as f32 * scale;
            }
            // The same operations with the FPU: `VCVT.F32.S32` rounds as `as f32`,
            // `VCVTB` converts the f16 scale exactly.
            #[cfg(tinylens_dsp_vfp)]
            let mut acc_bits = acc.to_bits();
            #[cfg(tinylens_dsp_vfp)]
            // SAFETY: reads the group's f16 scale at `sp` (LDRH: any alignment), the
            // `groups` scales of each of `rows` rows being within `scales` (checked).
            // Only declared registers change; no flags.
            unsafe {
                asm!(
                    "asr {t}, {sum}, #4",
                    "vmov s0, {t}",
                    "vcvt.f32.s32 s0, s0",
                    "ldrh {t}, [{sp}], #2",
                    "vmov s1, {t}",
                    "vcvtb.f32.f16 s1, s1",
                    "vmul.f32 s0, s0, s1",
                    "vmov s2, {a}",
                    "vadd.f32 s2, s2, s0",
                    "vmov {a}, s2",
                    sum = in(reg) sum,
                    sp = inout(reg) sp,
                    t = out(reg) _,
                    a = inout(reg) acc_bits,
                    out("s0") _,
                    out("s1") _,
                    out("s2") _,
                    options(nostack, readonly, preserves_flags),
                );
            }
            #[cfg(tinylens_dsp_vfp)]
            {
                acc = f32::from_bits(acc_bits);
            }
        }
        *o = acc * in_scale;
    }
}

/// `sum += 16 · Σ w[c]·x[c]` over the next 16 int4 columns: two weight words at `*w` and
/// eight activation-pair words at `*x` (the layout of [`matvec_i4`]), both pointers
/// advanced past them.
///
/// # Safety
/// `*w` must be word-aligned with 8 readable bytes, `*x` have 8 readable words.
#[inline(always)]
unsafe fn dot16(w: &mut *const u8, x: &mut *const u32, sum: &mut i32) {
    // SAFETY: reads only the 8 bytes at `w` and 8 words at `x` the caller vouches for;
    // declared registers change; no flags.
    unsafe {
        asm!(
            "ldm {w}!, {{r0, r1}}",
            "ldm {x}!, {{r8, r9, r10, r11}}",
            "and r4, {m}, r0, lsl #4",
            "and r0, r0, {m}",
            "sxtb16 r5, r4",
            "smlad {acc}, r5, r8, {acc}",
            "sxtb16 r4, r4, ror #8",
            "smlad {acc}, r4, r9, {acc}",
            "sxtb16 r5, r0",
            "smlad {acc}, r5, r10, {acc}",
            "sxtb16 r0, r0, ror #8",
            "smlad {acc}, r0, r11, {acc}",
            "ldm {x}!, {{r8, r9, r10, r11}}",
            "and r4, {m}, r1, lsl #4",
            "and r1, r1, {m}",
            "sxtb16 r5, r4",
            "smlad {acc}, r5, r8, {acc}",
            "sxtb16 r4, r4, ror #8",
            "smlad {acc}, r4, r9, {acc}",
            "sxtb16 r5, r1",
            "smlad {acc}, r5, r10, {acc}",
            "sxtb16 r1, r1, ror #8",
            "smlad {acc}, r1, r11, {acc}",
            w = inout(reg) *w,
            x = inout(reg) *x,
            m = in(reg) 0xF0F0_F0F0u32,
            acc = inout(reg) *sum,
            out("r0") _, out("r1") _, out("r4") _, out("r5") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            options(nostack, readonly, preserves_flags),
        );
    }
}

/// [`dot16`] twice, in one `asm!` block: the mask is loaded once per 32 columns (two
/// blocks load it twice, which costs 7% of a group of 32).
///
/// # Safety
/// `*w` must be word-aligned with 16 readable bytes, `*x` have 16 readable words.
#[inline(always)]
unsafe fn dot32(w: &mut *const u8, x: &mut *const u32, sum: &mut i32) {
    // SAFETY: reads only the 16 bytes at `w` and 16 words at `x` the caller vouches
    // for; declared registers change; no flags.
    unsafe {
        asm!(
            "ldm {w}!, {{r0, r1}}",
            "ldm {x}!, {{r8, r9, r10, r11}}",
            "and r4, {m}, r0, lsl #4",
            "and r0, r0, {m}",
            "sxtb16 r5, r4",
            "smlad {acc}, r5, r8, {acc}",
            "sxtb16 r4, r4, ror #8",
            "smlad {acc}, r4, r9, {acc}",
            "sxtb16 r5, r0",
            "smlad {acc}, r5, r10, {acc}",
            "sxtb16 r0, r0, ror #8",
            "smlad {acc}, r0, r11, {acc}",
            "ldm {x}!, {{r8, r9, r10, r11}}",
            "and r4, {m}, r1, lsl #4",
            "and r1, r1, {m}",
            "sxtb16 r5, r4",
            "smlad {acc}, r5, r8, {acc}",
            "sxtb16 r4, r4, ror #8",
            "smlad {acc}, r4, r9, {acc}",
            "sxtb16 r5, r1",
            "smlad {acc}, r5, r10, {acc}",
            "sxtb16 r1, r1, ror #8",
            "smlad {acc}, r1, r11, {acc}",
            "ldm {w}!, {{r0, r1}}",
            "ldm {x}!, {{r8, r9, r10, r11}}",
            "and r4, {m}, r0, lsl #4",
            "and r0, r0, {m}",
            "sxtb16 r5, r4",
            "smlad {acc}, r5, r8, {acc}",
            "sxtb16 r4, r4, ror #8",
            "smlad {acc}, r4, r9, {acc}",
            "sxtb16 r5, r0",
            "smlad {acc}, r5, r10, {acc}",
            "sxtb16 r0, r0, ror #8",
            "smlad {acc}, r0, r11, {acc}",
            "ldm {x}!, {{r8, r9, r10, r11}}",
            "and r4, {m}, r1, lsl #4",
            "and r1, r1, {m}",
            "sxtb16 r5, r4",
            "smlad {acc}, r5, r8, {acc}",
            "sxtb16 r4, r4, ror #8",
            "smlad {acc}, r4, r9, {acc}",
            "sxtb16 r5, r1",
            "smlad {acc}, r5, r10, {acc}",
            "sxtb16 r1, r1, ror #8",
            "smlad {acc}, r1, r11, {acc}",
            w = inout(reg) *w,
            x = inout(reg) *x,
            m = in(reg) 0xF0F0_F0F0u32,
            acc = inout(reg) *sum,
            out("r0") _, out("r1") _, out("r4") _, out("r5") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            options(nostack, readonly, preserves_flags),
        );
    }
}
