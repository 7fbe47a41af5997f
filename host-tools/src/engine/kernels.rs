//! The host's matrix products: the core's [`MatMul`] with SIMD kernels where the CPU
//! has them (detected at run time, `simd.rs`) and large products split into row blocks
//! over the rayon threads. Every output is still one independent sum formed exactly as
//! the core's portable kernel forms it, so neither the instruction set nor the thread
//! count changes a bit.

use rayon::prelude::*;
use tinylens_core::kernels::{self, Block, MatMul};
use tinylens_core::quant::Tensor;

use super::simd;

/// Multiply-adds below which a product is not worth splitting over threads.
const SPLIT_MACS: usize = 1 << 21;
/// Rows per task when a product is split (a multiple of every kernel's row block).
const SPLIT_ROWS: usize = 256;

/// The host's [`MatMul`].
#[derive(Debug, Clone, Copy)]
pub struct HostKernels {
    simd: simd::Level,
    /// Whether large products are split into row blocks over the rayon threads (off
    /// when the threads are already busy with one sequence each).
    pub split_rows: bool,
}

impl Default for HostKernels {
    fn default() -> Self {
        Self::detect()
    }
}

impl HostKernels {
    /// The best kernels this CPU runs, splitting large products over threads.
    pub fn detect() -> Self {
        HostKernels {
            simd: simd::Level::detect(),
            split_rows: true,
        }
    }

    /// The core's portable kernels only (the reference), on one thread.
    pub fn portable() -> Self {
        HostKernels {
            simd: simd::Level::Portable,
            split_rows: false,
        }
    }

    /// The instruction set in use, e.g. `avx512+vnni`, `avx2`, `portable`.
    pub fn name(&self) -> &'static str {
        self.simd.name()
    }

    fn one_thread(&self, w: &Tensor<'_>, x: &Block<'_>, out: &mut [f32]) {
        if !simd::matmul(self.simd, w, x, out) {
            kernels::matmul(w, x, out);
        }
    }
}

impl MatMul for HostKernels {
    fn matmul(&self, w: &Tensor<'_>, x: &Block<'_>, out: &mut [f32]) {
        let (rows, n) = (w.rows, x.n);
        let macs = rows.saturating_mul(w.cols).saturating_mul(n);
        if !self.split_rows
            || macs < SPLIT_MACS
            || rows < 2 * SPLIT_ROWS
            || rayon::current_num_threads() < 2
            || out.len() < n * rows
        {
            return self.one_thread(w, x, out);
        }
        // Row blocks into their own buffers (`[n][block rows]`), then into place.
        let parts: Vec<(usize, Vec<f32>)> = (0..rows.div_ceil(SPLIT_ROWS))
            .into_par_iter()
            .map(|b| {
                let r0 = b * SPLIT_ROWS;
                let part = w.rows(r0, SPLIT_ROWS);
                let mut o = vec![0.0f32; n * part.rows];
                self.one_thread(&part, x, &mut o);
                (r0, o)
            })
            .collect();
        for (r0, o) in parts {
            let nr = o.len() / n.max(1);
            for (t, row) in o.chunks_exact(nr).enumerate() {
                out[t * rows + r0..t * rows + r0 + nr].copy_from_slice(row);
            }
        }
    }
}
