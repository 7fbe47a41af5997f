//! The int8 matrix-vector product with Helium, the M-Profile Vector Extension (MVE) of
//! Armv8.1-M (Cortex-M55 in Alif Ensemble and Corstone-300, Cortex-M85): one of the
//! crate's modules with `unsafe` code, because inline assembly is `unsafe`.
//!
//! `VLDRB.U8` loads 16 bytes into a 128-bit Q register and `VMLADAVA.S8` multiplies 16
//! pairs of int8 lanes and adds all 16 products to a 32-bit core register: 16
//! multiply-accumulates in two instructions. The activations need no layout of their own
//! (the DSP kernel's [`super::arrange_pairs`]): the int8 input vector is read as it is.
//! Up to 64 of them stay in `q4..q7` for a whole pass over the rows, so each row costs
//! only its weight loads, one `VMLADAV[A]` per 16 columns, the store of the sum and the
//! low-overhead loop's `LE`. Wider rows (the real-text model's 128 columns) are done in
//! column panels of at most 64, each later panel adding to the sums of the earlier ones.
//!
//! Each row's sum is the exact integer `Σ w[c]·x[c]`, the same `i32` as the portable
//! [`super::dot_i8`] (the same argument as the DSP kernel's: no partial sum overflows).
//! The float made of it goes through the DSP kernel's epilogue (`dsp::finish`: scalar
//! `VCVT`, `VCVTB`, two `VMUL.F32` in the portable kernel's order). Not MVE's vector
//! floating point: Armv8.1-M runs it with the "standard FPSCR value" (flush-to-zero,
//! default NaN; QEMU models it so), which would flush a subnormal product the host keeps.
//! The firmware self-test (`firmware-examples/kernels`, QEMU `mps3-an547`) compares this
//! kernel with the portable one on thousands of random matrices bit for bit, and the
//! firmware trace test compares whole traces with the host's.
//!
//! How rustc targets it: there is no Armv8.1-M target triple, so the build is
//! `thumbv8m.main-none-eabihf` with `-C target-cpu=cortex-m55` (or `cortex-m85`), which
//! turns on LLVM's `mve.fp`, `dsp`, `v8.1m.main` and the FPU for the whole crate; the
//! assembler then accepts `VLDRB`, `VMLADAV`, `DLS`/`LE` in `asm!` without `.arch`
//! directives, and `build.rs` sets `cfg(tinylens_mve)` from that flag (stable rustc
//! does not expose Arm target features to `cfg`). `-C target-feature=+mve` on a
//! `cortex-m33`-class build would assemble too but does not describe a real core.
//!
//! Every `unsafe` block here is inline assembly that reads and writes only memory the
//! safe entry point [`matvec_i8`] has checked beforehand; a matrix that does not meet
//! its conditions goes to the DSP or the portable kernel.

use core::arch::asm;

/// `out[r] = Σ_c W[r, c]·x[c] as f32 * (scale_r * in_scale)` for `out.len()` rows of
/// `cols` int8 weights in `values` (row-major), f16 row scales in `scales` and the int8
/// activations `q`.
///
/// Returns `false` without touching `out` (the caller then runs another kernel) unless
/// `cols` is a non-zero multiple of 16 and `values`, `scales` and `q` are long enough.
/// No alignment is needed: `VLDRB` loads bytes.
pub(super) fn matvec_i8(
    values: &[u8],
    scales: &[u8],
    cols: usize,
    q: &[i8],
    in_scale: f32,
    out: &mut [f32],
) -> bool {
    let rows = out.len();
    let ok = rows > 0
        && cols > 0
        && cols % 16 == 0
        && cols <= 65_520 // |sum| < 2^31 (see the module docs)
        && values.len() / cols >= rows
        && scales.len() / 2 >= rows
        && q.len() >= cols;
    if !ok {
        return false;
    }
    // Pass 1: the integer sums, stored as the bits of `out`, panel by panel.
    let (w, x, o) = (values.as_ptr(), q.as_ptr(), out.as_mut_ptr());
    let mut c = 0;
    while c < cols {
        let width = (cols - c).min(64);
        let skip = cols - width;
        // SAFETY (of the pointer offsets): `c < cols`, within row 0 and within `q`.
        let (wp, xp) = (w.wrapping_add(c), x.wrapping_add(c));
        match (c == 0, width) {
            // One panel (`skip == 0`): the rows follow each other.
            (true, 16) => first_16(wp, xp, o, rows, skip),
            (true, 32) => first_32(wp, xp, o, rows, skip),
            (true, 48) => first_48(wp, xp, o, rows, skip),
            (true, _) if skip == 0 => first_64(wp, xp, o, rows, skip),
            // The first of several panels is 64 wide.
            (true, _) => wide_64(wp, xp, o, rows, skip),
            (false, 16) => add_16(wp, xp, o, rows, skip),
            (false, 32) => add_32(wp, xp, o, rows, skip),
            (false, 48) => add_48(wp, xp, o, rows, skip),
            (false, _) => add_64(wp, xp, o, rows, skip),
        }
        c += width;
    }
    // Pass 2: each sum times its row scale and the input scale, in place.
    super::dsp::finish(scales, in_scale, out);
    true
}

/// One function per panel width (16, 32, 48 or 64 columns) and kind (the first panel
/// starts each sum with `VMLADAV`; later ones load it and add with `VMLADAVA`): the
/// panel's activations into `q4..`, then per row its weights into `q0..` (post-
/// incremented loads), the products, with several panels the pointer on to the next
/// row's panel (`skip` bytes: the other panels' columns), the sum stored; `DLS`/`LE`
/// loop over the rows.
macro_rules! panel {
    // Both kinds from one body: rows that follow each other, and rows of several panels.
    ($contiguous:ident / $strided:ident, $xload:tt, $row:tt) => {
        panel!($contiguous, $xload, $row, contiguous);
        panel!($strided, $xload, $row);
    };
    ($name:ident, $xload:tt, $row:tt) => {
        panel!(@impl $name, $xload, $row, "add {w}, {w}, {skip}");
    };
    ($name:ident, $xload:tt, $row:tt, contiguous) => {
        // `skip` is 0 here: no pointer step (the `.if` keeps the operand used).
        panel!(@impl $name, $xload, $row, ".if 0\nadd {w}, {w}, {skip}\n.endif");
    };
    (@impl $name:ident, [$($xload:literal),*], [$($row:literal),*], $step:literal) => {
        /// Integer row sums of one column panel (see [`panel`]).
        #[inline(never)]
        fn $name(w: *const u8, x: *const i8, out: *mut f32, rows: usize, skip: usize) {
            // SAFETY: `matvec_i8` checked `rows >= 1`, that the weights hold `rows *
            // cols` bytes from the matrix start, that `q` holds `cols` bytes and that
            // `out` holds `rows` words. `w` and `x` point at this panel's first column
            // (`c`), and a row reads the panel's `width` bytes then skips `cols -
            // width`: the last row reads up to `rows * cols - 1` bytes from the matrix
            // start. `x` reads `width` bytes from `c`. `out` is read (later panels) and
            // written one word per row. Only declared registers change (`r0`, the loop
            // counter `lr`, `q0..q7` declared as `d0..d15`; `d8..d15` are callee-saved,
            // so the compiler saves them); `LE` sets no flags.
            unsafe {
                asm!(
                    $($xload,)*
                    "dls lr, {n}",
                    "2:",
                    $($row,)*
                    $step,
                    "str r0, [{o}], #4",
                    "le lr, 2b",
                    w = inout(reg) w => _,
                    x = in(reg) x,
                    o = inout(reg) out => _,
                    n = in(reg) rows,
                    skip = in(reg) skip,
                    out("r0") _,
                    out("lr") _,
                    out("d0") _, out("d1") _, out("d2") _, out("d3") _,
                    out("d4") _, out("d5") _, out("d6") _, out("d7") _,
                    out("d8") _, out("d9") _, out("d10") _, out("d11") _,
                    out("d12") _, out("d13") _, out("d14") _, out("d15") _,
                    options(nostack, preserves_flags),
                );
            }
        }
    };
}

panel!(
    first_16,
    ["vldrb.u8 q4, [{x}]"],
    ["vldrb.u8 q0, [{w}], #16", "vmladav.s8 r0, q0, q4"],
    contiguous
);
panel!(
    first_32,
    ["vldrb.u8 q4, [{x}]", "vldrb.u8 q5, [{x}, #16]"],
    [
        "vldrb.u8 q0, [{w}], #16",
        "vldrb.u8 q1, [{w}], #16",
        "vmladav.s8 r0, q0, q4",
        "vmladava.s8 r0, q1, q5"
    ],
    contiguous
);
panel!(
    first_48,
    [
        "vldrb.u8 q4, [{x}]",
        "vldrb.u8 q5, [{x}, #16]",
        "vldrb.u8 q6, [{x}, #32]"
    ],
    [
        "vldrb.u8 q0, [{w}], #16",
        "vldrb.u8 q1, [{w}], #16",
        "vldrb.u8 q2, [{w}], #16",
        "vmladav.s8 r0, q0, q4",
        "vmladava.s8 r0, q1, q5",
        "vmladava.s8 r0, q2, q6"
    ],
    contiguous
);
panel!(
    first_64 / wide_64,
    [
        "vldrb.u8 q4, [{x}]",
        "vldrb.u8 q5, [{x}, #16]",
        "vldrb.u8 q6, [{x}, #32]",
        "vldrb.u8 q7, [{x}, #48]"
    ],
    [
        "vldrb.u8 q0, [{w}], #16",
        "vldrb.u8 q1, [{w}], #16",
        "vldrb.u8 q2, [{w}], #16",
        "vldrb.u8 q3, [{w}], #16",
        "vmladav.s8 r0, q0, q4",
        "vmladava.s8 r0, q1, q5",
        "vmladava.s8 r0, q2, q6",
        "vmladava.s8 r0, q3, q7"
    ]
);

panel!(
    add_16,
    ["vldrb.u8 q4, [{x}]"],
    [
        "vldrb.u8 q0, [{w}], #16",
        "ldr r0, [{o}]",
        "vmladava.s8 r0, q0, q4"
    ]
);
panel!(
    add_32,
    ["vldrb.u8 q4, [{x}]", "vldrb.u8 q5, [{x}, #16]"],
    [
        "vldrb.u8 q0, [{w}], #16",
        "vldrb.u8 q1, [{w}], #16",
        "ldr r0, [{o}]",
        "vmladava.s8 r0, q0, q4",
        "vmladava.s8 r0, q1, q5"
    ]
);
panel!(
    add_48,
    [
        "vldrb.u8 q4, [{x}]",
        "vldrb.u8 q5, [{x}, #16]",
        "vldrb.u8 q6, [{x}, #32]"
    ],
    [
        "vldrb.u8 q0, [{w}], #16",
        "vldrb.u8 q1, [{w}], #16",
        "vldrb.u8 q2, [{w}], #16",
        "ldr r0, [{o}]",
        "vmladava.s8 r0, q0, q4",
        "vmladava.s8 r0, q1, q5",
        "vmladava.s8 r0, q2, q6"
    ]
);
panel!(
    add_64,
    [
        "vldrb.u8 q4, [{x}]",
        "vldrb.u8 q5, [{x}, #16]",
        "vldrb.u8 q6, [{x}, #32]",
        "vldrb.u8 q7, [{x}, #48]"
    ],
    [
        "vldrb.u8 q0, [{w}], #16",
        "vldrb.u8 q1, [{w}], #16",
        "vldrb.u8 q2, [{w}], #16",
        "vldrb.u8 q3, [{w}], #16",
        "ldr r0, [{o}]",
        "vmladava.s8 r0, q0, q4",
        "vmladava.s8 r0, q1, q5",
        "vmladava.s8 r0, q2, q6",
        "vmladava.s8 r0, q3, q7"
    ]
);
