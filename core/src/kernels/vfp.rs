//! Float kernels with the single-precision FPU of Cortex-M4F/M7/M33/M55 (FPv4-SP and
//! up, hard-float targets; see `build.rs`): attention over an f32 KV cache and f16
//! weights through the FPU's half-precision conversion. One of the crate's isolated
//! modules with `unsafe` code, because inline assembly is `unsafe`.
//!
//! Every kernel here forms exactly the sums of its portable counterpart, operation for
//! operation, so the results are the same bits:
//! - `VMLA.F32` is the *chained* multiply-accumulate (the product is rounded, then
//!   added), i.e. `acc + a * b` as Rust computes it (Rust never fuses);
//! - the dot products keep [`super::dot`]'s eight lanes (lane `j` takes columns `j, j +
//!   8, …`) and its lane tree. The portable lanes start at `+0.0`; here a lane starts at
//!   its first product, which differs only when that product is `-0.0`, and then only
//!   in the sign of a zero sum: the portable sum is never `-0.0` (it starts from `+0.0`
//!   and `x + y` is `-0.0` only for two negative zeros), so one `+ 0.0` at the end makes
//!   the two equal (it changes a `-0.0` into `+0.0` and nothing else);
//! - `VCVTB`/`VCVTT.F32.F16` convert a half exactly, as `f16_le_to_f32` does.
//!
//! The firmware self-test (`firmware-examples/kernels`) compares each kernel with the
//! portable one on random data in QEMU, and the firmware trace tests compare whole
//! traces (scores, patterns, z) with the host's bit for bit.
//!
//! Every `unsafe` block reads and writes only memory its safe entry point checked
//! (lengths; word alignment of f32/u32 slices is guaranteed by their types).

use core::arch::asm;

/// `out[j] = dot(q, keys[j * d..][..d]) / scale` for every `j < out.len()` (`d =
/// q.len()`), the sums of [`super::dot`]. `false` (nothing written) unless `d` is a
/// non-zero multiple of 8 and `keys` holds `out.len()` vectors.
pub(super) fn scores(q: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) -> bool {
    let d = q.len();
    let n = out.len();
    if d == 0 || d % 8 != 0 || n == 0 || keys.len() / d < n {
        return false;
    }
    if d == 16 {
        scores_16(q, keys, scale, out);
        return true;
    }
    let chunks = d / 8;
    // SAFETY: reads `d` floats at `q` (`q.len()`), `n * d` at `keys` (checked above)
    // and writes `n` at `out` (`out.len()`); f32 slices are word-aligned, as VLDM needs.
    // Only declared registers change (s16..s25 are callee-saved: the compiler saves
    // them around this); `subs` sets the flags.
    unsafe {
        asm!(
            "vmov s24, {zero}",
            "vmov s25, {scale}",
            "2:",
            "mov {qp}, {q}",
            "vldmia {qp}!, {{s16-s23}}",
            "vldmia {k}!, {{s8-s15}}",
            "vmul.f32 s0, s8, s16",
            "vmul.f32 s1, s9, s17",
            "vmul.f32 s2, s10, s18",
            "vmul.f32 s3, s11, s19",
            "vmul.f32 s4, s12, s20",
            "vmul.f32 s5, s13, s21",
            "vmul.f32 s6, s14, s22",
            "vmul.f32 s7, s15, s23",
            "subs {c}, {chunks}, #1",
            "beq 4f",
            "3:",
            "vldmia {qp}!, {{s16-s23}}",
            "vldmia {k}!, {{s8-s15}}",
            "vmla.f32 s0, s8, s16",
            "vmla.f32 s1, s9, s17",
            "vmla.f32 s2, s10, s18",
            "vmla.f32 s3, s11, s19",
            "vmla.f32 s4, s12, s20",
            "vmla.f32 s5, s13, s21",
            "vmla.f32 s6, s14, s22",
            "vmla.f32 s7, s15, s23",
            "subs {c}, {c}, #1",
            "bne 3b",
            "4:",
            // ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)), then + 0.0, / scale.
            "vadd.f32 s0, s0, s1",
            "vadd.f32 s2, s2, s3",
            "vadd.f32 s4, s4, s5",
            "vadd.f32 s6, s6, s7",
            "vadd.f32 s0, s0, s2",
            "vadd.f32 s4, s4, s6",
            "vadd.f32 s0, s0, s4",
            "vadd.f32 s0, s0, s24",
            "vdiv.f32 s0, s0, s25",
            "vstmia {o}!, {{s0}}",
            "subs {n}, {n}, #1",
            "bne 2b",
            q = in(reg) q.as_ptr(),
            qp = out(reg) _,
            k = inout(reg) keys.as_ptr() => _,
            o = inout(reg) out.as_mut_ptr() => _,
            n = inout(reg) n => _,
            c = out(reg) _,
            chunks = in(reg) chunks,
            zero = in(reg) 0u32,
            scale = in(reg) scale.to_bits(),
            out("s0") _, out("s1") _, out("s2") _, out("s3") _,
            out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            out("s8") _, out("s9") _, out("s10") _, out("s11") _,
            out("s12") _, out("s13") _, out("s14") _, out("s15") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _,
            out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            out("s24") _, out("s25") _,
            options(nostack),
        );
    }
    true
}

/// [`scores`] for `d_head = 16` (the checks done): the query stays in s16..s31, and
/// each key is one `VLDM` of 16 registers.
fn scores_16(q: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
    // SAFETY: reads 16 floats at `q`, `16 * out.len()` at `keys`, writes `out.len()`
    // at `out` (checked by `scores`); word-aligned f32 slices. Only declared registers
    // change (s16..s31 callee-saved: the compiler saves them); `subs` sets the flags.
    unsafe {
        asm!(
            "vldmia {q}, {{s16-s31}}",
            "2:",
            "vldmia {k}!, {{s0-s15}}",
            "vmul.f32 s0, s0, s16",
            "vmul.f32 s1, s1, s17",
            "vmul.f32 s2, s2, s18",
            "vmul.f32 s3, s3, s19",
            "vmul.f32 s4, s4, s20",
            "vmul.f32 s5, s5, s21",
            "vmul.f32 s6, s6, s22",
            "vmul.f32 s7, s7, s23",
            "vmla.f32 s0, s8, s24",
            "vmla.f32 s1, s9, s25",
            "vmla.f32 s2, s10, s26",
            "vmla.f32 s3, s11, s27",
            "vmla.f32 s4, s12, s28",
            "vmla.f32 s5, s13, s29",
            "vmla.f32 s6, s14, s30",
            "vmla.f32 s7, s15, s31",
            "vadd.f32 s0, s0, s1",
            "vadd.f32 s2, s2, s3",
            "vadd.f32 s4, s4, s5",
            "vadd.f32 s6, s6, s7",
            "vadd.f32 s0, s0, s2",
            "vadd.f32 s4, s4, s6",
            "vmov s8, s9, {zero}, {scale}",
            "vadd.f32 s0, s0, s4",
            "vadd.f32 s0, s0, s8",
            "vdiv.f32 s0, s0, s9",
            "vstmia {o}!, {{s0}}",
            "subs {n}, {n}, #1",
            "bne 2b",
            q = in(reg) q.as_ptr(),
            k = inout(reg) keys.as_ptr() => _,
            o = inout(reg) out.as_mut_ptr() => _,
            n = inout(reg) out.len() => _,
            zero = in(reg) 0u32,
            scale = in(reg) scale.to_bits(),
            out("s0") _, out("s1") _, out("s2") _, out("s3") _,
            out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            out("s8") _, out("s9") _, out("s10") _, out("s11") _,
            out("s12") _, out("s13") _, out("s14") _, out("s15") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _,
            out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            out("s24") _, out("s25") _, out("s26") _, out("s27") _,
            out("s28") _, out("s29") _, out("s30") _, out("s31") _,
            options(nostack),
        );
    }
}

/// `z[i] = Σ_j a[j] · values[j * z.len() + i]`, each element summed from `+0.0` in key
/// order, as [`super::weighted_sum`] does. `false` (nothing written) unless `z.len()`
/// is a non-zero multiple of 16, `a` is not empty and `values` holds `a.len()` vectors.
pub(super) fn weighted_sum(a: &[f32], values: &[f32], z: &mut [f32]) -> bool {
    let d = z.len();
    let n = a.len();
    if d == 0 || d % 16 != 0 || n == 0 || values.len() / d < n {
        return false;
    }
    // Bytes from one key's block of 16 values to the next key's (after VLDM's 64).
    let skip = (d - 16) * 4;
    for (i, zc) in z.chunks_exact_mut(16).enumerate() {
        // SAFETY: reads `n` floats at `a`, and at `values[16 * i..]` the 16 floats of
        // each of `n` vectors of `d` (the last ends at `(n - 1) * d + 16 * i + 16 <= n *
        // d`, checked above); writes the 16 floats of `zc`. Word-aligned f32 slices.
        // Only declared registers change (s16..s24 callee-saved, saved by the
        // compiler); `subs` sets the flags.
        unsafe {
            asm!(
                "vmov s0, s1, {zero}, {zero}",
                "vmov s2, s3, {zero}, {zero}",
                "vmov s4, s5, {zero}, {zero}",
                "vmov s6, s7, {zero}, {zero}",
                "vmov s8, s9, {zero}, {zero}",
                "vmov s10, s11, {zero}, {zero}",
                "vmov s12, s13, {zero}, {zero}",
                "vmov s14, s15, {zero}, {zero}",
                "2:",
                "vldmia {a}!, {{s24}}",
                "vldmia {v}!, {{s16-s23}}",
                "vmla.f32 s0, s24, s16",
                "vmla.f32 s1, s24, s17",
                "vmla.f32 s2, s24, s18",
                "vmla.f32 s3, s24, s19",
                "vmla.f32 s4, s24, s20",
                "vmla.f32 s5, s24, s21",
                "vmla.f32 s6, s24, s22",
                "vmla.f32 s7, s24, s23",
                "vldmia {v}!, {{s16-s23}}",
                "vmla.f32 s8, s24, s16",
                "vmla.f32 s9, s24, s17",
                "vmla.f32 s10, s24, s18",
                "vmla.f32 s11, s24, s19",
                "vmla.f32 s12, s24, s20",
                "vmla.f32 s13, s24, s21",
                "vmla.f32 s14, s24, s22",
                "vmla.f32 s15, s24, s23",
                "add {v}, {v}, {skip}",
                "subs {n}, {n}, #1",
                "bne 2b",
                "vstmia {z}, {{s0-s15}}",
                a = inout(reg) a.as_ptr() => _,
                v = inout(reg) values[16 * i..].as_ptr() => _,
                n = inout(reg) n => _,
                z = in(reg) zc.as_mut_ptr(),
                zero = in(reg) 0u32,
                skip = in(reg) skip,
                out("s0") _, out("s1") _, out("s2") _, out("s3") _,
                out("s4") _, out("s5") _, out("s6") _, out("s7") _,
                out("s8") _, out("s9") _, out("s10") _, out("s11") _,
                out("s12") _, out("s13") _, out("s14") _, out("s15") _,
                out("s16") _, out("s17") _, out("s18") _, out("s19") _,
                out("s20") _, out("s21") _, out("s22") _, out("s23") _,
                out("s24") _,
                options(nostack),
            );
        }
    }
    true
}

/// `out[r] = Σ_c W[r, c] · x[c]` for `out.len()` rows of `cols` little-endian f16
/// weights in `values`, the sums of the portable f16 kernel (`dot_f16_le`): eight
/// lanes, column `c` into lane `c % 8`, the lane tree. Each half is converted by
/// `VCVTB`/`VCVTT` (exact). `false` (nothing written) unless `cols` is a non-zero
/// multiple of 8, `values` is word-aligned (VLDM) and holds the rows, and `x` has
/// `cols` values.
pub(super) fn matvec_f16(values: &[u8], cols: usize, x: &[f32], out: &mut [f32]) -> bool {
    let rows = out.len();
    if rows == 0
        || cols == 0
        || cols % 8 != 0
        || (values.as_ptr() as usize) % 4 != 0
        || values.len() / 2 / cols < rows
        || x.len() < cols
    {
        return false;
    }
    // SAFETY: reads `rows * cols * 2` bytes at `values` (word-aligned) and `cols`
    // floats at `x` per row, writes `rows` floats at `out`: all checked above. Only
    // declared registers change (s16..s31 are callee-saved: the compiler saves them);
    // `subs` sets the flags.
    unsafe {
        asm!(
            "vmov s12, {zero}",
            "2:",
            "mov {xp}, {x}",
            "vldmia {w}!, {{s8-s11}}",
            "vldmia {xp}!, {{s24-s31}}",
            "vcvtb.f32.f16 s16, s8",
            "vcvtt.f32.f16 s17, s8",
            "vcvtb.f32.f16 s18, s9",
            "vcvtt.f32.f16 s19, s9",
            "vcvtb.f32.f16 s20, s10",
            "vcvtt.f32.f16 s21, s10",
            "vcvtb.f32.f16 s22, s11",
            "vcvtt.f32.f16 s23, s11",
            "vmul.f32 s0, s16, s24",
            "vmul.f32 s1, s17, s25",
            "vmul.f32 s2, s18, s26",
            "vmul.f32 s3, s19, s27",
            "vmul.f32 s4, s20, s28",
            "vmul.f32 s5, s21, s29",
            "vmul.f32 s6, s22, s30",
            "vmul.f32 s7, s23, s31",
            "subs {c}, {chunks}, #1",
            "beq 4f",
            "3:",
            "vldmia {w}!, {{s8-s11}}",
            "vldmia {xp}!, {{s24-s31}}",
            "vcvtb.f32.f16 s16, s8",
            "vcvtt.f32.f16 s17, s8",
            "vcvtb.f32.f16 s18, s9",
            "vcvtt.f32.f16 s19, s9",
            "vcvtb.f32.f16 s20, s10",
            "vcvtt.f32.f16 s21, s10",
            "vcvtb.f32.f16 s22, s11",
            "vcvtt.f32.f16 s23, s11",
            "vmla.f32 s0, s16, s24",
            "vmla.f32 s1, s17, s25",
            "vmla.f32 s2, s18, s26",
            "vmla.f32 s3, s19, s27",
            "vmla.f32 s4, s20, s28",
            "vmla.f32 s5, s21, s29",
            "vmla.f32 s6, s22, s30",
            "vmla.f32 s7, s23, s31",
            "subs {c}, {c}, #1",
            "bne 3b",
            "4:",
            "vadd.f32 s0, s0, s1",
            "vadd.f32 s2, s2, s3",
            "vadd.f32 s4, s4, s5",
            "vadd.f32 s6, s6, s7",
            "vadd.f32 s0, s0, s2",
            "vadd.f32 s4, s4, s6",
            "vadd.f32 s0, s0, s4",
            "vadd.f32 s0, s0, s12",
            "vstmia {o}!, {{s0}}",
            "subs {n}, {n}, #1",
            "bne 2b",
            w = inout(reg) values.as_ptr() => _,
            x = in(reg) x.as_ptr(),
            xp = out(reg) _,
            o = inout(reg) out.as_mut_ptr() => _,
            n = inout(reg) rows => _,
            c = out(reg) _,
            chunks = in(reg) cols / 8,
            zero = in(reg) 0u32,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _,
            out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            out("s8") _, out("s9") _, out("s10") _, out("s11") _, out("s12") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _,
            out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            out("s24") _, out("s25") _, out("s26") _, out("s27") _,
            out("s28") _, out("s29") _, out("s30") _, out("s31") _,
            options(nostack),
        );
    }
    true
}

/// `dst[i] += src[i]` for every `i < dst.len()`, eight at a time. `false` (nothing
/// written) unless `dst.len()` is a non-zero multiple of 8, `src` is as long, and `src`
/// is word-aligned (f32 slices are; weight bytes are checked).
pub(super) fn add_assign(dst: &mut [f32], src: *const u8, src_len: usize) -> bool {
    let n = dst.len();
    if n == 0 || n % 8 != 0 || src_len < n * 4 || (src as usize) % 4 != 0 {
        return false;
    }
    // SAFETY: reads and writes `n` floats at `dst`, reads `n * 4` bytes at `src`
    // (word-aligned): checked above. Only declared registers change (s16..s23 are
    // callee-saved: the compiler saves them); `subs` sets the flags.
    unsafe {
        asm!(
            "2:",
            "vldmia {d}, {{s0-s7}}",
            "vldmia {s}!, {{s16-s23}}",
            "vadd.f32 s0, s0, s16",
            "vadd.f32 s1, s1, s17",
            "vadd.f32 s2, s2, s18",
            "vadd.f32 s3, s3, s19",
            "vadd.f32 s4, s4, s20",
            "vadd.f32 s5, s5, s21",
            "vadd.f32 s6, s6, s22",
            "vadd.f32 s7, s7, s23",
            "vstmia {d}!, {{s0-s7}}",
            "subs {n}, {n}, #1",
            "bne 2b",
            d = inout(reg) dst.as_mut_ptr() => _,
            s = inout(reg) src => _,
            n = inout(reg) n / 8 => _,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _,
            out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _,
            out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            options(nostack),
        );
    }
    true
}

/// LayerNorm's centring: `mean = (x0 + x1 + … ) / len` in index order (Rust's
/// `iter().sum()`, whose start `-0.0` is the identity, so the chain starts at `x0`),
/// `x[i] -= mean`, then the variance `(c0·c0 + c1·c1 + … ) / len` of the centred values
/// in index order; returns the variance. `None` (nothing written) unless `x.len()` is
/// a non-zero multiple of 8.
pub(super) fn center(x: &mut [f32], len: f32) -> Option<f32> {
    let n = x.len();
    if n == 0 || n % 8 != 0 {
        return None;
    }
    let var: u32;
    // SAFETY: reads `n` floats at `x` twice and writes them once (checked above). Only
    // declared registers change (s16..s18 are callee-saved: the compiler saves them);
    // `subs` sets the flags.
    unsafe {
        asm!(
            "vmov s18, {len}",
            "mov {p}, {x}",
            "vldmia {p}!, {{s0-s7}}",
            "vadd.f32 s16, s0, s1",
            "vadd.f32 s16, s16, s2",
            "vadd.f32 s16, s16, s3",
            "vadd.f32 s16, s16, s4",
            "vadd.f32 s16, s16, s5",
            "vadd.f32 s16, s16, s6",
            "vadd.f32 s16, s16, s7",
            "subs {c}, {chunks}, #1",
            "beq 3f",
            "2:",
            "vldmia {p}!, {{s0-s7}}",
            "vadd.f32 s16, s16, s0",
            "vadd.f32 s16, s16, s1",
            "vadd.f32 s16, s16, s2",
            "vadd.f32 s16, s16, s3",
            "vadd.f32 s16, s16, s4",
            "vadd.f32 s16, s16, s5",
            "vadd.f32 s16, s16, s6",
            "vadd.f32 s16, s16, s7",
            "subs {c}, {c}, #1",
            "bne 2b",
            "3:",
            "vdiv.f32 s16, s16, s18",
            // Centre, and the sum of squares from the first square on.
            "mov {p}, {x}",
            "vldmia {p}, {{s0-s7}}",
            "vsub.f32 s0, s0, s16",
            "vsub.f32 s1, s1, s16",
            "vsub.f32 s2, s2, s16",
            "vsub.f32 s3, s3, s16",
            "vsub.f32 s4, s4, s16",
            "vsub.f32 s5, s5, s16",
            "vsub.f32 s6, s6, s16",
            "vsub.f32 s7, s7, s16",
            "vstmia {p}!, {{s0-s7}}",
            "vmul.f32 s17, s0, s0",
            "vmla.f32 s17, s1, s1",
            "vmla.f32 s17, s2, s2",
            "vmla.f32 s17, s3, s3",
            "vmla.f32 s17, s4, s4",
            "vmla.f32 s17, s5, s5",
            "vmla.f32 s17, s6, s6",
            "vmla.f32 s17, s7, s7",
            "subs {c}, {chunks}, #1",
            "beq 5f",
            "4:",
            "vldmia {p}, {{s0-s7}}",
            "vsub.f32 s0, s0, s16",
            "vsub.f32 s1, s1, s16",
            "vsub.f32 s2, s2, s16",
            "vsub.f32 s3, s3, s16",
            "vsub.f32 s4, s4, s16",
            "vsub.f32 s5, s5, s16",
            "vsub.f32 s6, s6, s16",
            "vsub.f32 s7, s7, s16",
            "vstmia {p}!, {{s0-s7}}",
            "vmla.f32 s17, s0, s0",
            "vmla.f32 s17, s1, s1",
            "vmla.f32 s17, s2, s2",
            "vmla.f32 s17, s3, s3",
            "vmla.f32 s17, s4, s4",
            "vmla.f32 s17, s5, s5",
            "vmla.f32 s17, s6, s6",
            "vmla.f32 s17, s7, s7",
            "subs {c}, {c}, #1",
            "bne 4b",
            "5:",
            "vdiv.f32 s17, s17, s18",
            "vmov {var}, s17",
            x = in(reg) x.as_mut_ptr(),
            p = out(reg) _,
            c = out(reg) _,
            chunks = in(reg) n / 8,
            len = in(reg) len.to_bits(),
            var = out(reg) var,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _,
            out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            out("s16") _, out("s17") _, out("s18") _,
            options(nostack),
        );
    }
    Some(f32::from_bits(var))
}

/// `x[i] /= s` for every `i`. `false` (nothing written) unless `x.len()` is a non-zero
/// multiple of 8.
pub(super) fn div_assign(x: &mut [f32], s: f32) -> bool {
    let n = x.len();
    if n == 0 || n % 8 != 0 {
        return false;
    }
    // SAFETY: reads and writes `n` floats at `x` (checked above). Only declared
    // registers change (s16 is callee-saved: the compiler saves it); `subs` sets the
    // flags.
    unsafe {
        asm!(
            "vmov s16, {s}",
            "2:",
            "vldmia {p}, {{s0-s7}}",
            "vdiv.f32 s0, s0, s16",
            "vdiv.f32 s1, s1, s16",
            "vdiv.f32 s2, s2, s16",
            "vdiv.f32 s3, s3, s16",
            "vdiv.f32 s4, s4, s16",
            "vdiv.f32 s5, s5, s16",
            "vdiv.f32 s6, s6, s16",
            "vdiv.f32 s7, s7, s16",
            "vstmia {p}!, {{s0-s7}}",
            "subs {n}, {n}, #1",
            "bne 2b",
            p = inout(reg) x.as_mut_ptr() => _,
            n = inout(reg) n / 8 => _,
            s = in(reg) s.to_bits(),
            out("s0") _, out("s1") _, out("s2") _, out("s3") _,
            out("s4") _, out("s5") _, out("s6") _, out("s7") _, out("s16") _,
            options(nostack),
        );
    }
    true
}

/// `x[i] = x[i] * w[i] + b[i]` (two roundings: `VMLA` adds the rounded product to `b`,
/// and `b + p = p + b`) for little-endian f32 `w` and `b`. `false` (nothing written)
/// unless `x.len()` is a non-zero multiple of 8 and `w`, `b` are word-aligned and long
/// enough.
pub(super) fn mul_add(x: &mut [f32], w: &[u8], b: &[u8]) -> bool {
    let n = x.len();
    if n == 0
        || n % 8 != 0
        || w.len() < n * 4
        || b.len() < n * 4
        || (w.as_ptr() as usize) % 4 != 0
        || (b.as_ptr() as usize) % 4 != 0
    {
        return false;
    }
    // SAFETY: reads and writes `n` floats at `x`, reads `n * 4` bytes at `w` and at `b`
    // (word-aligned): checked above. Only declared registers change (s16..s23 are
    // callee-saved: the compiler saves them); `subs` sets the flags.
    unsafe {
        asm!(
            "2:",
            "vldmia {p}, {{s0-s7}}",
            "vldmia {w}!, {{s8-s15}}",
            "vldmia {b}!, {{s16-s23}}",
            "vmla.f32 s16, s0, s8",
            "vmla.f32 s17, s1, s9",
            "vmla.f32 s18, s2, s10",
            "vmla.f32 s19, s3, s11",
            "vmla.f32 s20, s4, s12",
            "vmla.f32 s21, s5, s13",
            "vmla.f32 s22, s6, s14",
            "vmla.f32 s23, s7, s15",
            "vstmia {p}!, {{s16-s23}}",
            "subs {n}, {n}, #1",
            "bne 2b",
            p = inout(reg) x.as_mut_ptr() => _,
            w = inout(reg) w.as_ptr() => _,
            b = inout(reg) b.as_ptr() => _,
            n = inout(reg) n / 8 => _,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _,
            out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            out("s8") _, out("s9") _, out("s10") _, out("s11") _,
            out("s12") _, out("s13") _, out("s14") _, out("s15") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _,
            out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            options(nostack),
        );
    }
    true
}

/// `out[c] = (w[c] as i8) as f32 * s`: a row of int8 weights dequantized (`VCVT` from
/// s32 is exact for these, then one rounded product, as the portable loop). `false`
/// (nothing written) unless `out.len()` is a non-zero multiple of 8 and `w` as long.
pub(super) fn dequantize_i8(w: &[u8], s: f32, out: &mut [f32]) -> bool {
    let n = out.len();
    if n == 0 || n % 8 != 0 || w.len() < n {
        return false;
    }
    // SAFETY: reads `n` bytes at `w` and writes `n` floats at `out` (checked above;
    // LDRSB needs no alignment). Only declared registers change (s16 is callee-saved:
    // the compiler saves it); `subs` sets the flags.
    unsafe {
        asm!(
            "vmov s16, {s}",
            "2:",
            "ldrsb r0, [{w}], #1",
            "ldrsb r1, [{w}], #1",
            "ldrsb r2, [{w}], #1",
            "ldrsb r3, [{w}], #1",
            "vmov s0, s1, r0, r1",
            "vmov s2, s3, r2, r3",
            "ldrsb r0, [{w}], #1",
            "ldrsb r1, [{w}], #1",
            "ldrsb r2, [{w}], #1",
            "ldrsb r3, [{w}], #1",
            "vmov s4, s5, r0, r1",
            "vmov s6, s7, r2, r3",
            "vcvt.f32.s32 s0, s0",
            "vcvt.f32.s32 s1, s1",
            "vcvt.f32.s32 s2, s2",
            "vcvt.f32.s32 s3, s3",
            "vcvt.f32.s32 s4, s4",
            "vcvt.f32.s32 s5, s5",
            "vcvt.f32.s32 s6, s6",
            "vcvt.f32.s32 s7, s7",
            "vmul.f32 s0, s0, s16",
            "vmul.f32 s1, s1, s16",
            "vmul.f32 s2, s2, s16",
            "vmul.f32 s3, s3, s16",
            "vmul.f32 s4, s4, s16",
            "vmul.f32 s5, s5, s16",
            "vmul.f32 s6, s6, s16",
            "vmul.f32 s7, s7, s16",
            "vstmia {o}!, {{s0-s7}}",
            "subs {n}, {n}, #1",
            "bne 2b",
            w = inout(reg) w.as_ptr() => _,
            o = inout(reg) out.as_mut_ptr() => _,
            n = inout(reg) n / 8 => _,
            s = in(reg) s.to_bits(),
            out("r0") _, out("r1") _, out("r2") _, out("r3") _,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _,
            out("s4") _, out("s5") _, out("s6") _, out("s7") _, out("s16") _,
            options(nostack),
        );
    }
    true
}

/// The index of the first largest value of `x` (the greedy choice), for an `x` whose
/// first value is not NaN (then the portable rule "NaN never wins" is just `>`: a NaN
/// compares false, and the running best never becomes NaN). `None` unless `x.len()`
/// is a non-zero multiple of 8 and `x[0]` is not NaN.
pub(super) fn argmax(x: &[f32]) -> Option<u32> {
    let n = x.len();
    if n == 0 || n % 8 != 0 || x[0].is_nan() {
        return None;
    }
    let best: u32;
    // SAFETY: reads `n` floats at `x` (checked above). Only declared registers change
    // (s16 is callee-saved: the compiler saves it); `vcmp`/`vmrs` and `subs` set the
    // flags.
    unsafe {
        asm!(
            "vldr s16, [{p}]",
            "movs {best}, #0",
            "movs {i}, #0",
            "2:",
            "vldmia {p}!, {{s0-s7}}",
            "vcmp.f32 s0, s16",
            "vmrs APSR_nzcv, fpscr",
            "itt gt",
            "vmovgt.f32 s16, s0",
            "movgt {best}, {i}",
            "vcmp.f32 s1, s16",
            "vmrs APSR_nzcv, fpscr",
            "itt gt",
            "vmovgt.f32 s16, s1",
            "addgt {best}, {i}, #1",
            "vcmp.f32 s2, s16",
            "vmrs APSR_nzcv, fpscr",
            "itt gt",
            "vmovgt.f32 s16, s2",
            "addgt {best}, {i}, #2",
            "vcmp.f32 s3, s16",
            "vmrs APSR_nzcv, fpscr",
            "itt gt",
            "vmovgt.f32 s16, s3",
            "addgt {best}, {i}, #3",
            "vcmp.f32 s4, s16",
            "vmrs APSR_nzcv, fpscr",
            "itt gt",
            "vmovgt.f32 s16, s4",
            "addgt {best}, {i}, #4",
            "vcmp.f32 s5, s16",
            "vmrs APSR_nzcv, fpscr",
            "itt gt",
            "vmovgt.f32 s16, s5",
            "addgt {best}, {i}, #5",
            "vcmp.f32 s6, s16",
            "vmrs APSR_nzcv, fpscr",
            "itt gt",
            "vmovgt.f32 s16, s6",
            "addgt {best}, {i}, #6",
            "vcmp.f32 s7, s16",
            "vmrs APSR_nzcv, fpscr",
            "itt gt",
            "vmovgt.f32 s16, s7",
            "addgt {best}, {i}, #7",
            "adds {i}, {i}, #8",
            "subs {n}, {n}, #1",
            "bne 2b",
            p = inout(reg) x.as_ptr() => _,
            n = inout(reg) n / 8 => _,
            i = out(reg) _,
            best = out(reg) best,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _,
            out("s4") _, out("s5") _, out("s6") _, out("s7") _, out("s16") _,
            options(nostack, readonly),
        );
    }
    Some(best)
}
