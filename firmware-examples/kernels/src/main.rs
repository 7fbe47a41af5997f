//! Kernel self-test and micro-benchmarks on QEMU `mps2-an386` (Cortex-M4F), and on
//! `mps3-an547` (Cortex-M55, `cargo build-m55`: the Helium kernel, `kernels/mve.rs`).
//!
//! 1. **Self-test**: the DSP int8 kernel (`tinylens_core::kernels::matvec`, which uses
//!    `SXTB16`/`SMLAD` on Armv7E-M) against the portable reference
//!    (`kernels::matvec_portable`) on many random matrices: every byte value as a
//!    weight, every int8 activation, lengths of 1 to 136 columns, rows starting at
//!    every alignment (the kernel takes 4-byte-aligned rows whose length is a multiple
//!    of 8 and leaves the others to the portable kernel), and matrices quantized from
//!    random floats as the converter makes them. Outputs must be the same bits; any
//!    difference is printed and the firmware exits with status 1.
//! 2. **Micro-benchmarks**: one matrix-vector product per storage kind at the demo
//!    model's shapes, and the input preparation, each between two calls of
//!    `tinylens_icount_mark` so that `run-qemu.sh --icount` counts its executed
//!    instructions exactly. Before each pair the firmware prints
//!    `region <n> <label> macs=<m>` on stdout; `scripts/bench_firmware.sh` joins these
//!    lines with the counts of the regions.
//!
//! `./run-qemu.sh --icount target/thumbv7em-none-eabihf/release/kernels`
#![no_std]
#![no_main]

use core::hint::black_box;

// The critical-section implementation (single core) that semihosting printing needs.
use core::sync::atomic::{AtomicU32, Ordering};
use cortex_m as _;

use cortex_m_rt::{entry, exception, ExceptionFrame};
use cortex_m_semihosting::{debug, heprintln, hprintln};
use tinylens_core::kernels::{self, Input};
use tinylens_core::quant::{quantize, Tensor};
use tinylens_core::{Int4Group, StorageKind};

/// Largest matrix of the tests and benches (in elements) and widest input.
const MAX_ELEMS: usize = 64 * 64;
const MAX_COLS: usize = 160;

static MARKS: AtomicU32 = AtomicU32::new(0);

/// Instruction-count marker (same contract as `tinylens_fw::tinylens_icount_mark`:
/// `run-qemu.sh --icount` finds it by name and the plugin records the running count
/// each time it is entered).
#[inline(never)]
#[no_mangle]
pub extern "C" fn tinylens_icount_mark(id: u32) {
    MARKS.store(
        MARKS.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
    black_box(id);
}

/// xorshift32: deterministic test data.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
    fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
}

struct Buffers {
    bytes: [u8; MAX_ELEMS * 4 + 64],
    floats: [f32; MAX_ELEMS],
    x: [f32; MAX_COLS],
    q: [i8; MAX_COLS],
    pairs: [u32; kernels::pairs_len(MAX_COLS)],
    out: [f32; 64],
    reference: [f32; 64],
}

#[entry]
fn main() -> ! {
    static mut BUF: Buffers = Buffers {
        bytes: [0; MAX_ELEMS * 4 + 64],
        floats: [0.0; MAX_ELEMS],
        x: [0.0; MAX_COLS],
        q: [0; MAX_COLS],
        pairs: [0; kernels::pairs_len(MAX_COLS)],
        out: [0.0; 64],
        reference: [0.0; 64],
    };
    let b: &'static mut Buffers = BUF;
    hprintln!(
        "kernels: DSP int8 kernel {}, MVE int8 kernel {}",
        if kernels::DSP {
            "on"
        } else {
            "off (portable build)"
        },
        if kernels::MVE { "on" } else { "off" }
    );
    let failures = self_test(b) + self_test_float_and_prep(b);
    if failures > 0 {
        heprintln!("self-test FAILED: {} mismatching outputs", failures);
        debug::exit(debug::EXIT_FAILURE);
    }
    benches(b);
    debug::exit(debug::EXIT_SUCCESS);
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Compares `matvec` (DSP on this target) with `matvec_portable`, bit for bit; returns
/// the number of differing outputs.
fn self_test(b: &mut Buffers) -> usize {
    let mut rng = Rng(0x1234_5678);
    let (mut failures, mut outputs, mut dsp_rows) = (0usize, 0usize, 0usize);
    const TRIALS: usize = 3000;
    for trial in 0..TRIALS {
        let cols = match rng.below(4) {
            0 => 1 + rng.below(40) as usize,
            1 => 8 * (1 + rng.below(17) as usize),
            2 => [16, 64][rng.below(2) as usize],
            _ => 1 + rng.below(MAX_COLS as u32) as usize,
        };
        let rows = 1 + rng.below(20) as usize;
        // Mostly aligned (the DSP path), sometimes not (the fallback).
        let offset = if rng.below(4) == 0 {
            1 + rng.below(3) as usize
        } else {
            0
        };
        let realistic = trial % 5 == 0;
        let kind = StorageKind::Int8;
        let len = kind.data_len(rows, cols).unwrap_or(0);
        let data = &mut b.bytes[offset..offset + len];
        if realistic {
            // As the converter makes them: quantized from floats.
            for v in b.floats[..rows * cols].iter_mut() {
                *v = rng.unit() * 3.0;
            }
            if !quantize(kind, rows, cols, &b.floats[..rows * cols], data) {
                heprintln!("quantize failed");
                return usize::MAX;
            }
            for v in b.x[..cols].iter_mut() {
                *v = rng.unit() * 10.0;
            }
        } else {
            // Every byte value as a weight, finite positive f16 scales.
            let values = rows * cols;
            for v in data[..values].iter_mut() {
                *v = rng.next() as u8;
            }
            let scales_at = values.next_multiple_of(4);
            for s in data[scales_at..].chunks_exact_mut(2) {
                let bits = 0x2c00u16 + rng.below(0x2000) as u16;
                s.copy_from_slice(&bits.to_le_bytes());
            }
            for v in b.x[..cols].iter_mut() {
                *v = rng.unit();
            }
        }
        let Some(t) = Tensor::from_data(kind, rows, cols, data) else {
            heprintln!("tensor view failed");
            return usize::MAX;
        };
        let mut scale = kernels::quantize_input(&b.x[..cols], &mut b.q[..cols]);
        if !realistic {
            // Every activation value, -128 included (the kernels accept any i8).
            for q in b.q[..cols].iter_mut() {
                *q = rng.next() as i8;
            }
            scale = 0.001 + rng.unit().abs() * 0.1;
        }
        kernels::arrange_pairs(&b.q[..cols], &mut b.pairs);
        let input = Input {
            x: &b.x[..cols],
            q: &b.q[..cols],
            scale,
            pairs: &b.pairs,
        };
        kernels::matvec(&t, &input, &mut b.out[..rows]);
        kernels::matvec_portable(&t, &input, &mut b.reference[..rows]);
        for r in 0..rows {
            outputs += 1;
            // The MVE kernel takes multiples of 16 columns at any alignment, the DSP
            // kernel 4-byte-aligned multiples of 8.
            let mve = kernels::MVE && cols % 16 == 0;
            if mve || (kernels::DSP && cols % 8 == 0 && (offset + r * cols) % 4 == 0) {
                dsp_rows += 1;
            }
            if b.out[r].to_bits() != b.reference[r].to_bits() {
                failures += 1;
                if failures <= 10 {
                    heprintln!(
                        "mismatch: trial {} ({} x {}, offset {}) row {}: dsp {:#010x} portable {:#010x}",
                        trial,
                        rows,
                        cols,
                        offset,
                        r,
                        b.out[r].to_bits(),
                        b.reference[r].to_bits()
                    );
                }
            }
        }
    }
    hprintln!(
        "self-test: {} matrices, {} outputs ({} rows on the DSP/MVE path), {} mismatches",
        TRIALS,
        outputs,
        dsp_rows,
        failures
    );
    failures
}

/// The other device kernels against their portable references, bit for bit: the
/// one-pass input quantization with the pair layout, attention scores and the weighted
/// sum over an f32 cache (FPU), and the f16 (FPU) and int4 (DSP) matrix-vector
/// products. Returns the number of differing outputs.
// Indices compare the device and portable outputs element by element (and name them).
#[allow(clippy::needless_range_loop)]
fn self_test_float_and_prep(b: &mut Buffers) -> usize {
    let mut rng = Rng(0x0bad_cafe);
    let mut failures = 0usize;
    let mut report = |what: &str, trial: usize, i: usize, got: u32, want: u32| {
        failures += 1;
        if failures <= 10 {
            heprintln!(
                "mismatch: {} trial {} element {}: device {:#010x} portable {:#010x}",
                what,
                trial,
                i,
                got,
                want
            );
        }
    };
    const TRIALS: usize = 600;
    for trial in 0..TRIALS {
        // Input quantization: lengths the one-pass kernel takes (multiples of 8) and
        // others, magnitudes from tiny to huge, exact halves (ties) among them.
        let cols = if rng.below(3) == 0 {
            1 + rng.below(MAX_COLS as u32) as usize
        } else {
            8 * (1 + rng.below(MAX_COLS as u32 / 8) as usize)
        };
        let magnitude = [1e-30f32, 1e-3, 1.0, 300.0, 1e30][rng.below(5) as usize];
        for v in b.x[..cols].iter_mut() {
            *v = if rng.below(8) == 0 {
                (rng.below(512) as f32 - 256.0) * 0.5
            } else {
                rng.unit() * magnitude
            };
        }
        let mut q2 = [0i8; MAX_COLS];
        let mut p2 = [0u32; kernels::pairs_len(MAX_COLS)];
        let s1 = kernels::quantize_with_pairs(&b.x[..cols], &mut b.q[..cols], &mut b.pairs);
        let s2 = kernels::quantize_with_pairs_portable(&b.x[..cols], &mut q2[..cols], &mut p2);
        if s1.to_bits() != s2.to_bits() {
            report("quantize scale", trial, 0, s1.to_bits(), s2.to_bits());
        }
        for (i, (x, y)) in b.q[..cols].iter().zip(&q2[..cols]).enumerate() {
            if x != y {
                report("quantize q", trial, i, *x as u32, *y as u32);
            }
        }
        let pairs = kernels::pairs_len(cols);
        for (i, (x, y)) in b.pairs[..pairs].iter().zip(&p2[..pairs]).enumerate() {
            if x != y {
                report("quantize pairs", trial, i, *x, *y);
            }
        }

        // Attention over an f32 cache: d_head 8..=40 (multiples of 8 take the FPU
        // kernels), 1..=32 keys, scores of every sign and zero products.
        let d = [8, 16, 24, 32, 12, 16, 16, 40][rng.below(8) as usize];
        let keys = 1 + rng.below(32) as usize;
        let (kv, rest) = b.floats.split_at_mut(keys * d);
        for v in kv.iter_mut() {
            *v = if rng.below(16) == 0 {
                -0.0
            } else {
                rng.unit() * 3.0
            };
        }
        let (q, rest) = rest.split_at_mut(d);
        let zero_q = rng.below(8) == 0;
        for v in q.iter_mut() {
            *v = if zero_q { 0.0 } else { rng.unit() * 2.0 };
        }
        let (out1, rest) = rest.split_at_mut(keys);
        let (out2, rest) = rest.split_at_mut(keys);
        kernels::scores(q, kv, 4.0, out1);
        kernels::scores_portable(q, kv, 4.0, out2);
        for i in 0..keys {
            if out1[i].to_bits() != out2[i].to_bits() {
                report("scores", trial, i, out1[i].to_bits(), out2[i].to_bits());
            }
        }
        let (z1, rest) = rest.split_at_mut(d);
        let (z2, _) = rest.split_at_mut(d);
        for v in out1.iter_mut() {
            *v = rng.unit().abs();
        }
        kernels::weighted_sum(out1, kv, z1);
        kernels::weighted_sum_portable(out1, kv, z2);
        for i in 0..d {
            if z1[i].to_bits() != z2[i].to_bits() {
                report("weighted sum", trial, i, z1[i].to_bits(), z2[i].to_bits());
            }
        }

        // The vector kernels of LayerNorm, the residual adds, the embeddings and the
        // greedy choice, against the plain loops.
        let len = 8 * (1 + rng.below(12) as usize);
        let (row, rest) = b.floats.split_at_mut(len);
        let (w, rest) = rest.split_at_mut(len);
        let (c1, rest) = rest.split_at_mut(len);
        let (c2, _) = rest.split_at_mut(len);
        for (i, (v, wv)) in row.iter_mut().zip(w.iter_mut()).enumerate() {
            *v = match trial % 7 {
                0 => -0.0,
                1 if i % 3 == 0 => 1.5,
                _ => rng.unit() * magnitude.min(1e6),
            };
            *wv = rng.unit() * 2.0;
        }
        c1.copy_from_slice(row);
        c2.copy_from_slice(row);
        let v1 = kernels::center(c1);
        let n = c2.len() as f32;
        let mean = c2.iter().sum::<f32>() / n;
        for v in c2.iter_mut() {
            *v -= mean;
        }
        let v2 = c2.iter().map(|v| v * v).sum::<f32>() / n;
        if v1.to_bits() != v2.to_bits() {
            report("layer norm variance", trial, 0, v1.to_bits(), v2.to_bits());
        }
        let sc = 0.3 + rng.unit().abs();
        kernels::div_assign(c1, sc);
        for v in c2.iter_mut() {
            *v /= sc;
        }
        let wb: &[u8] = bytemuck::cast_slice(w);
        let bb: &[u8] = bytemuck::cast_slice(row);
        kernels::mul_add_le(c1, wb, bb);
        for (v, (x, y)) in c2.iter_mut().zip(w.iter().zip(row.iter())) {
            *v = *v * x + y;
        }
        kernels::add_assign(c1, w);
        for (v, x) in c2.iter_mut().zip(w.iter()) {
            *v += x;
        }
        for i in 0..len {
            if c1[i].to_bits() != c2[i].to_bits() {
                report(
                    "layer norm / adds",
                    trial,
                    i,
                    c1[i].to_bits(),
                    c2[i].to_bits(),
                );
            }
        }
        if trial % 5 == 0 {
            c1[rng.below(len as u32) as usize] = f32::NAN;
        }
        if trial % 3 == 0 {
            let j = rng.below(len as u32) as usize;
            c1[j] = c1[0];
        }
        let (g1, g2) = (kernels::argmax(c1), kernels::argmax_portable(c1));
        if g1 != g2 {
            report("argmax", trial, 0, g1, g2);
        }
        let bytes = &mut b.bytes[..len];
        for v in bytes.iter_mut() {
            *v = rng.next() as u8;
        }
        kernels::dequantize_i8(bytes, sc, c1);
        for i in 0..len {
            let want = (bytes[i] as i8) as f32 * sc;
            if c1[i].to_bits() != want.to_bits() {
                report("dequantize int8", trial, i, c1[i].to_bits(), want.to_bits());
            }
        }

        // f16 and int4 matrices (int4 at every group size), quantized from random floats
        // as the converter does; a third of the shapes whole groups (the DSP kernel's).
        let group = Int4Group::ALL[rng.below(4) as usize];
        let kind = if trial % 2 == 0 {
            StorageKind::F16
        } else {
            StorageKind::Int4 { group }
        };
        let whole = kind.int4_group().map_or(32, |g| g.cols());
        let cols = match rng.below(3) {
            0 => whole * (1 + rng.below((MAX_COLS / whole) as u32) as usize),
            1 => 8 * (1 + rng.below(16) as usize),
            _ => 1 + rng.below(MAX_COLS as u32) as usize,
        };
        let rows = 1 + rng.below(20) as usize;
        for v in b.floats[..rows * cols].iter_mut() {
            *v = rng.unit() * 2.0;
        }
        let len = kind.data_len(rows, cols).unwrap_or(0);
        let data = &mut b.bytes[..len];
        if !quantize(kind, rows, cols, &b.floats[..rows * cols], data) {
            heprintln!("quantize failed");
            return usize::MAX;
        }
        let Some(t) = Tensor::from_data(kind, rows, cols, data) else {
            heprintln!("tensor view failed");
            return usize::MAX;
        };
        for v in b.x[..cols].iter_mut() {
            *v = rng.unit() * 5.0;
        }
        let scale = kernels::quantize_input(&b.x[..cols], &mut b.q[..cols]);
        let input = Input {
            x: &b.x[..cols],
            q: &b.q[..cols],
            scale,
            pairs: &[],
        };
        kernels::matvec(&t, &input, &mut b.out[..rows]);
        kernels::matvec_portable(&t, &input, &mut b.reference[..rows]);
        for r in 0..rows {
            if b.out[r].to_bits() != b.reference[r].to_bits() {
                report(
                    kind.name(),
                    trial,
                    r,
                    b.out[r].to_bits(),
                    b.reference[r].to_bits(),
                );
            }
        }
    }
    hprintln!(
        "self-test (quantization, attention, LayerNorm, adds, argmax, f16, int4): {} trials, {} mismatches",
        TRIALS,
        failures
    );
    failures
}

/// Prints the label of the next region; the caller then runs it between two marks.
fn region(n: &mut u32, label: &str, kind: &str, rows: usize, cols: usize) {
    *n += 1;
    hprintln!(
        "region {} {}_{}_{}x{} macs={}",
        *n,
        label,
        kind,
        rows,
        cols,
        rows * cols
    );
}

fn benches(b: &mut Buffers) {
    let mut rng = Rng(99);
    let mut n = 0u32;
    n += 1;
    hprintln!("region {} empty macs=0", n);
    tinylens_icount_mark(1);
    tinylens_icount_mark(2);

    for v in b.x.iter_mut() {
        *v = rng.unit() * 2.0;
    }
    region(&mut n, "quantize_input", "int8", 1, 64);
    tinylens_icount_mark(1);
    let scale = kernels::quantize_input(black_box(&b.x[..64]), &mut b.q[..64]);
    tinylens_icount_mark(2);
    region(&mut n, "arrange_pairs", "int8", 1, 64);
    tinylens_icount_mark(1);
    kernels::arrange_pairs(black_box(&b.q[..64]), &mut b.pairs);
    tinylens_icount_mark(2);
    for cols in [64, 16] {
        region(&mut n, "quantize_with_pairs", "int8", 1, cols);
        tinylens_icount_mark(1);
        let s =
            kernels::quantize_with_pairs(black_box(&b.x[..cols]), &mut b.q[..cols], &mut b.pairs);
        tinylens_icount_mark(2);
        black_box(s);
    }
    // Attention of one head over 32 cached positions (d_head 16): q·k and Σ a·v.
    {
        for v in b.floats[..33 * 16].iter_mut() {
            *v = rng.unit();
        }
        let (kv, rest) = b.floats.split_at_mut(32 * 16);
        let (q, rest) = rest.split_at_mut(16);
        let (a, rest) = rest.split_at_mut(32);
        region(&mut n, "scores", "f32", 32, 16);
        tinylens_icount_mark(1);
        kernels::scores(black_box(q), black_box(kv), 4.0, a);
        tinylens_icount_mark(2);
        region(&mut n, "weighted_sum", "f32", 32, 16);
        tinylens_icount_mark(1);
        kernels::weighted_sum(black_box(a), black_box(kv), &mut rest[..16]);
        tinylens_icount_mark(2);
        black_box(&rest[..16]);
    }

    // The demo model's matrix shapes: W_Q (all heads) and W_U; one head's W_K/W_V; one
    // head's W_O.
    for (label, rows, cols) in [
        ("qkv_all_heads", 64, 64),
        ("one_head_kv", 16, 64),
        ("one_head_o", 64, 16),
    ] {
        for v in b.floats[..rows * cols].iter_mut() {
            *v = rng.unit();
        }
        for kind in [
            StorageKind::F32,
            StorageKind::F16,
            StorageKind::Int8,
            StorageKind::INT4,
        ] {
            let len = kind.data_len(rows, cols).unwrap_or(0);
            let data = &mut b.bytes[..len];
            if !quantize(kind, rows, cols, &b.floats[..rows * cols], data) {
                heprintln!("quantize failed");
                debug::exit(debug::EXIT_FAILURE);
            }
            let t = Tensor::from_data(kind, rows, cols, data).expect("tensor view");
            let scale = kernels::quantize_input(&b.x[..cols], &mut b.q[..cols]);
            kernels::arrange_pairs(&b.q[..cols], &mut b.pairs);
            let input = Input {
                x: &b.x[..cols],
                q: &b.q[..cols],
                scale,
                pairs: &b.pairs,
            };
            if kind == StorageKind::Int8 {
                region(&mut n, label, "int8_portable", rows, cols);
                tinylens_icount_mark(1);
                kernels::matvec_portable(black_box(&t), black_box(&input), &mut b.out[..rows]);
                tinylens_icount_mark(2);
                black_box(&b.out);
            }
            let name = match kind {
                StorageKind::Int8 if kernels::MVE => "int8_mve",
                StorageKind::Int8 if kernels::DSP => "int8_dsp",
                k => k.name(),
            };
            region(&mut n, label, name, rows, cols);
            tinylens_icount_mark(1);
            kernels::matvec(black_box(&t), black_box(&input), &mut b.out[..rows]);
            tinylens_icount_mark(2);
            black_box(&b.out);
            if kind == StorageKind::Int8 {
                // The same product as the forward pass calls it: a block of one position.
                let scales = [scale];
                let block = kernels::Block {
                    n: 1,
                    cols,
                    x: &b.x[..cols],
                    q: &b.q[..cols],
                    scales: &scales,
                    pairs: &b.pairs[..kernels::pairs_len(cols)],
                };
                region(&mut n, label, "int8_block_of_one", rows, cols);
                tinylens_icount_mark(1);
                kernels::matmul(black_box(&t), black_box(&block), &mut b.out[..rows]);
                tinylens_icount_mark(2);
                black_box(&b.out);
            }
        }
    }
    black_box(scale);
    hprintln!("benches: {} regions", n);
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    heprintln!("kernels firmware {}", info);
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}

// cortex-m-rt requires exception handlers to be `unsafe fn`.
#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    heprintln!("kernels firmware HardFault: pc={:#010x}", ef.pc());
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}
