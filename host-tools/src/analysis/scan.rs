//! Scans of vocabulary-sized products `L R` ([tokens, d_vocab], rank `k`) that need
//! every entry: the largest entries, the rows whose largest entry is on the diagonal,
//! and the largest entries of every row.
//!
//! The product is formed one block of rows at a time ([`ROW_BLOCK`] rows, as one
//! f32 matrix product of faer), blocks run in parallel on the current rayon pool, and
//! only what the scan keeps survives a block, so memory is `threads x ROW_BLOCK x d_vocab`
//! floats whatever the vocabulary. f32 is the precision the model itself computes in;
//! callers recompute the values they report in f64 ([`crate::analysis::vocab`]).

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use indicatif::ProgressBar;
use rayon::prelude::*;

/// Rows of the product formed at once by one thread.
pub const ROW_BLOCK: usize = 128;

/// What a scan keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanSpec {
    /// The largest entries of the whole product (0: none).
    pub top_pairs: usize,
    /// Count the rows whose first largest entry is the diagonal one (column = token).
    pub diagonal: bool,
    /// The largest entries of every row (0: none).
    pub row_top: usize,
}

/// What a scan found; rows are named by their token.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScanOut {
    /// `(value, (token, column))`, largest first (ties: smaller token, then column).
    pub top: Vec<(f32, (usize, usize))>,
    /// Rows whose first largest entry is at column = token.
    pub diagonal_hits: usize,
    /// Rows scanned.
    pub rows: usize,
    /// Per scanned row (in the order of `tokens`), `(column, value)` largest first.
    pub row_top: Vec<Vec<(usize, f32)>>,
}

/// Number of blocks [`scan`] processes for `rows` rows (progress-bar length).
pub fn blocks(rows: usize) -> u64 {
    rows.div_ceil(ROW_BLOCK) as u64
}

/// Scans `left · right`, where row `i` of `left` ([tokens.len(), k]) is token
/// `tokens[i]` and `right` is [k, m]. `pb` advances by one per block.
pub fn scan(
    left: MatRef<'_, f32>,
    tokens: &[usize],
    right: MatRef<'_, f32>,
    spec: ScanSpec,
    pb: &ProgressBar,
) -> ScanOut {
    assert_eq!(left.nrows(), tokens.len(), "scan: one token per row");
    assert_eq!(left.ncols(), right.nrows(), "scan: inner dimensions");
    let (r, m) = (left.nrows(), right.ncols());
    let starts: Vec<usize> = (0..r).step_by(ROW_BLOCK).collect();
    let parts: Vec<Part> = starts
        .par_iter()
        .map_init(
            || Mat::<f32>::zeros(m, ROW_BLOCK.min(r)),
            |buf, &start| {
                let len = ROW_BLOCK.min(r - start);
                // Transposed (`right^T left_block^T`, [m, len]) so that each row of the
                // product is one contiguous column of the buffer.
                matmul(
                    buf.as_mut().subcols_mut(0, len),
                    Accum::Replace,
                    right.transpose(),
                    left.subrows(start, len).transpose(),
                    1.0f32,
                    Par::Seq,
                );
                let mut part = Part::new(spec);
                for c in 0..len {
                    part.row(tokens[start + c], buf.col_as_slice(c));
                }
                pb.inc(1);
                part
            },
        )
        .collect();
    let mut top = TopK::new(spec.top_pairs);
    let mut out = ScanOut {
        rows: r,
        ..Default::default()
    };
    for p in parts {
        for (v, key) in p.top.items {
            top.push(v, key);
        }
        out.diagonal_hits += p.diagonal_hits;
        out.row_top.extend(p.row_top);
    }
    out.top = top.items;
    out
}

/// One block's findings.
struct Part {
    spec: ScanSpec,
    top: TopK<f32, (usize, usize)>,
    diagonal_hits: usize,
    row_top: Vec<Vec<(usize, f32)>>,
}

impl Part {
    fn new(spec: ScanSpec) -> Self {
        Part {
            spec,
            top: TopK::new(spec.top_pairs),
            diagonal_hits: 0,
            row_top: Vec::new(),
        }
    }

    fn row(&mut self, token: usize, row: &[f32]) {
        if self.spec.diagonal || self.spec.top_pairs > 0 {
            let max = row_max(row);
            if self.spec.diagonal
                && token < row.len()
                && row[token] == max
                && row[..token].iter().all(|&v| v < max)
            {
                self.diagonal_hits += 1;
            }
            if self.spec.top_pairs > 0 && self.top.admits(max) {
                for (j, &v) in row.iter().enumerate() {
                    if self.top.admits(v) {
                        self.top.push(v, (token, j));
                    }
                }
            }
        }
        if self.spec.row_top > 0 {
            self.row_top.push(top_k_of_row(row, self.spec.row_top));
        }
    }
}

/// The largest value of a row (NaN ignored; -inf for an empty or all-NaN row), in
/// sixteen lanes so that it vectorizes.
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = row.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = if v > *l { v } else { *l };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in lanes.iter().chain(rest) {
        if v > m {
            m = v;
        }
    }
    m
}

/// The `k` largest values of `row` as `(index, value)`, largest first (ties: smaller index).
pub fn top_k_of_row<T: Copy + PartialOrd>(row: &[T], k: usize) -> Vec<(usize, T)> {
    let mut top = TopK::new(k);
    for (j, &v) in row.iter().enumerate() {
        if top.admits(v) {
            top.push(v, j);
        }
    }
    top.items.into_iter().map(|(v, j)| (j, v)).collect()
}

/// A bounded selection of the `k` largest values (ties broken towards the smaller key).
/// `k` is small (tens), so a sorted vector with insertion is simplest; [`TopK::admits`]
/// is the cheap test that rejects almost every value of a long scan.
pub struct TopK<V, K> {
    k: usize,
    /// Sorted best first.
    pub items: Vec<(V, K)>,
}

impl<V: Copy + PartialOrd, K: Ord + Copy> TopK<V, K> {
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            // (A capacity hint only: `k` may come from the command line.)
            items: Vec::with_capacity(k.saturating_add(1).min(1024)),
        }
    }

    /// Whether `value` could enter (is not NaN, and not below the current k-th value).
    #[inline]
    pub fn admits(&self, value: V) -> bool {
        #[allow(clippy::eq_op)]
        let not_nan = value == value;
        self.k > 0
            && not_nan
            && (self.items.len() < self.k || value >= self.items[self.items.len() - 1].0)
    }

    fn better(a: &(V, K), b: &(V, K)) -> bool {
        a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
    }

    pub fn push(&mut self, value: V, key: K) {
        if !self.admits(value) {
            return;
        }
        let item = (value, key);
        if self.items.len() == self.k && !Self::better(&item, &self.items[self.k - 1]) {
            return;
        }
        let pos = self
            .items
            .iter()
            .position(|x| Self::better(&item, x))
            .unwrap_or(self.items.len());
        self.items.insert(pos, item);
        self.items.truncate(self.k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo(rows: usize, cols: usize, seed: u64) -> Mat<f32> {
        Mat::from_fn(rows, cols, |i, j| {
            let x = ((i * 7919 + j * 104_729) as u64 ^ seed.wrapping_mul(0x9E37_79B9)) as f64;
            ((x * 0.618_033_988_7).sin() * 2.0) as f32
        })
    }

    #[test]
    fn scan_matches_a_dense_product() {
        // More rows than one block, an uneven last block, a row subset.
        let (n, k, m) = (300, 5, 290);
        let left = pseudo(n, k, 1);
        let right = pseudo(k, m, 2);
        let dense = &left * &right;
        let tokens: Vec<usize> = (0..n).collect();
        let spec = ScanSpec {
            top_pairs: 7,
            diagonal: true,
            row_top: 3,
        };
        let out = scan(
            left.as_ref(),
            &tokens,
            right.as_ref(),
            spec,
            &ProgressBar::hidden(),
        );
        let mut all: Vec<(f32, usize, usize)> = Vec::new();
        let mut hits = 0;
        for i in 0..n {
            let row: Vec<f32> = (0..m).map(|j| dense[(i, j)]).collect();
            let first_max = (0..m).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            if first_max == i {
                hits += 1;
            }
            let mut sorted = row.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            assert_eq!(out.row_top[i].len(), 3);
            for (t, (j, v)) in out.row_top[i].iter().enumerate() {
                assert!((v - sorted[t]).abs() <= 1e-5 * sorted[0].abs().max(1.0));
                assert!((row[*j] - v).abs() <= 1e-5 * sorted[0].abs().max(1.0));
            }
            all.extend(row.iter().enumerate().map(|(j, &v)| (v, i, j)));
        }
        assert_eq!(out.rows, n);
        assert_eq!(out.diagonal_hits, hits);
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        assert_eq!(out.top.len(), 7);
        for ((v, (i, j)), want) in out.top.iter().zip(&all) {
            assert!((v - want.0).abs() <= 1e-5 * want.0.abs());
            assert!((dense[(*i, *j)] - want.0).abs() <= 1e-5 * want.0.abs());
        }

        // Rows named by tokens: a subset scanned in its own order.
        let sub = [250usize, 3, 17];
        let lsub = Mat::from_fn(3, k, |r, c| left[(sub[r], c)]);
        let o = scan(
            lsub.as_ref(),
            &sub,
            right.as_ref(),
            spec,
            &ProgressBar::hidden(),
        );
        assert_eq!(o.rows, 3);
        assert_eq!(o.row_top[0][0].1, out.row_top[250][0].1);
        assert!(o.top.iter().all(|(_, (t, _))| sub.contains(t)));
    }

    #[test]
    fn ties_and_nan() {
        assert_eq!(
            top_k_of_row(&[1.0f32, 3.0, 3.0, 2.0], 3),
            vec![(1, 3.0), (2, 3.0), (3, 2.0)]
        );
        assert_eq!(top_k_of_row(&[1.0f64], 3), vec![(0, 1.0)]);
        assert!(top_k_of_row(&[1.0f32], 0).is_empty());
        assert_eq!(top_k_of_row(&[f32::NAN, 1.0, f32::NAN], 2), vec![(1, 1.0)]);
        assert_eq!(row_max(&[f32::NAN; 20]), f32::NEG_INFINITY);
        let mut r = vec![0.0f32; 40];
        r[33] = 5.0;
        assert_eq!(row_max(&r), 5.0);
    }
}
