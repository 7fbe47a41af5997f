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
