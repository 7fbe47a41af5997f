//! Low-rank matrices kept as a product of two small factors, in f64.
//!
//! The analogue of TransformerLens's `FactoredMatrix`: a matrix `M = A B` with
//! `A` [n, k] and `B` [k, m] (k small, n and m possibly the vocabulary size) is never
//! formed. Its Frobenius norm comes from the triangular factors of thin QR
//! decompositions (`A = Q_A R_A`, `B^T = Q_B R_B`, so `||A B||_F = ||R_A R_B^T||_F`,
//! as `Q_A` and `Q_B` have orthonormal columns); its non-zero eigenvalues are those of
//! `B A` [k, k]. This serves the `d_model`-sized OV and QK matrices (composition
//! scores); the vocabulary-sized full circuits are in [`super::vocab`], their entries
//! in [`super::scan`].

use nalgebra::{Complex, DMatrix};

use crate::{Error, Result};

/// Widens an f32 matrix to f64.
pub fn to_f64(m: &DMatrix<f32>) -> DMatrix<f64> {
    m.map(f64::from)
}

/// The triangular factor `R` of a thin QR decomposition of `x` ([min(n, m), m]), so that
/// `||x y||_F = ||R y||_F` for every `y`.
fn r_factor(x: &DMatrix<f64>) -> DMatrix<f64> {
    x.clone().qr().r()
}

/// One entry of a matrix, with its row and column.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Entry {
    pub row: usize,
    pub col: usize,
    pub value: f64,
}

/// `M = A B`, kept factored.
#[derive(Clone, Debug)]
pub struct LowRank {
    a: DMatrix<f64>,
    b: DMatrix<f64>,
    /// `R` of `A` and of `B^T`, computed once (norms of this matrix and of its products).
    r_a: DMatrix<f64>,
    r_bt: DMatrix<f64>,
}

impl LowRank {
    /// `A B`; panics if the inner dimensions differ (a programming error here, as every
    /// caller builds the factors from one validated `Weights`).
    pub fn new(a: DMatrix<f64>, b: DMatrix<f64>) -> Self {
        assert_eq!(
            a.ncols(),
            b.nrows(),
            "LowRank: inner dimensions differ ({}x{} times {}x{})",
            a.nrows(),
            a.ncols(),
            b.nrows(),
            b.ncols()
        );
        let r_a = r_factor(&a);
        let r_bt = r_factor(&b.transpose());
        LowRank { a, b, r_a, r_bt }
    }

    /// Left factor `A` [n, k].
    pub fn a(&self) -> &DMatrix<f64> {
        &self.a
    }

    /// Right factor `B` [k, m].
    pub fn b(&self) -> &DMatrix<f64> {
        &self.b
    }

    /// Rows of `A B`.
    pub fn nrows(&self) -> usize {
        self.a.nrows()
    }

    /// Columns of `A B`.
    pub fn ncols(&self) -> usize {
        self.b.ncols()
    }

    /// `(A B)^T = B^T A^T`, factored.
    pub fn transpose(&self) -> LowRank {
        LowRank {
            a: self.b.transpose(),
            b: self.a.transpose(),
            r_a: self.r_bt.clone(),
            r_bt: self.r_a.clone(),
        }
    }

    /// The product `A B` as a dense matrix (for tests and small matrices only).
    pub fn dense(&self) -> DMatrix<f64> {
        &self.a * &self.b
    }

    /// Frobenius norm of `A B`, from the small factors.
    pub fn frobenius_norm(&self) -> f64 {
        (&self.r_a * self.r_bt.transpose()).norm()
    }

    /// Frobenius norm of the product `self · other`, from the small factors:
    /// `A1 B1 A2 B2 = Q1 (R_A1 (B1 A2) R_B2^T) Q2^T`.
    pub fn product_norm(&self, other: &LowRank) -> f64 {
        assert_eq!(self.ncols(), other.nrows(), "LowRank::product_norm: shapes");
        let middle = &self.b * &other.a;
        (&self.r_a * middle * other.r_bt.transpose()).norm()
    }

    /// `self · other`, factored as `A1 (B1 A2 B2)`.
    pub fn then(&self, other: &LowRank) -> LowRank {
        assert_eq!(self.ncols(), other.nrows(), "LowRank::then: shapes");
        LowRank::new(self.a.clone(), &self.b * &other.a * &other.b)
    }

    /// The eigenvalues of `B A` [k, k]: the non-zero eigenvalues of `A B` plus zeros
    /// (`B A v = λ v` gives `A B (A v) = λ (A v)`). This is TransformerLens's
    /// `FactoredMatrix.eigenvalues`. Requires `A B` square.
    pub fn eigenvalues(&self) -> Result<Vec<Complex<f64>>> {
        if self.nrows() != self.ncols() {
            return Err(Error::Argument(format!(
                "eigenvalues of a non-square {}x{} matrix",
                self.nrows(),
                self.ncols()
            )));
        }
        eigenvalues(&(&self.b * &self.a))
    }
}

/// Eigenvalues of a small real square matrix (complex in general), by faer's
/// Hessenberg-QR eigenvalue solver. Order: as faer returns them (not sorted).
pub fn eigenvalues(m: &DMatrix<f64>) -> Result<Vec<Complex<f64>>> {
    assert!(m.is_square(), "eigenvalues: non-square matrix");
    let n = m.nrows();
    if n == 0 {
        return Ok(Vec::new());
    }
    if m.iter().any(|v| !v.is_finite()) {
        return Err(Error::Argument(
            "eigenvalues of a matrix with non-finite entries".into(),
        ));
    }
    faer::MatRef::from_column_major_slice(m.as_slice(), n, n)
        .eigenvalues()
        .map_err(|e| {
            Error::Unsupported(format!(
                "the eigenvalue iteration did not converge for a {n}x{n} matrix ({e:?})"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mat(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64) -> DMatrix<f64> {
        DMatrix::from_fn(rows, cols, f)
    }

    /// A deterministic pseudo-random matrix (no RNG needed in these tests).
    fn pseudo(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
        mat(rows, cols, |i, j| {
            let x = ((i * 7919 + j * 104_729) as u64 ^ seed.wrapping_mul(0x9E37_79B9)) as f64;
            (x * 0.618_033_988_7).sin() * 2.0
        })
    }

    #[test]
    fn norms_from_factors_equal_dense_norms() {
        let a = pseudo(40, 3, 1);
        let b = pseudo(3, 30, 2);
        let lr = LowRank::new(a, b);
        let dense = lr.dense();
        assert!((lr.frobenius_norm() - dense.norm()).abs() < 1e-9 * dense.norm());
        assert!((lr.transpose().frobenius_norm() - dense.norm()).abs() < 1e-9 * dense.norm());

        let other = LowRank::new(pseudo(30, 2, 3), pseudo(2, 25, 4));
        let prod = &dense * other.dense();
        assert!((lr.product_norm(&other) - prod.norm()).abs() < 1e-9 * prod.norm());
        assert!((lr.then(&other).frobenius_norm() - prod.norm()).abs() < 1e-9 * prod.norm());
    }

    #[test]
    fn wide_factors_still_give_exact_norms() {
        // Inner dimension larger than the outer ones: R factors are wide.
        let lr = LowRank::new(pseudo(3, 8, 5), pseudo(8, 4, 6));
        let d = lr.dense();
        assert!((lr.frobenius_norm() - d.norm()).abs() < 1e-9 * d.norm());
    }

    fn sort_key(z: &Complex<f64>) -> (i64, i64) {
        ((z.re * 1e6).round() as i64, (z.im * 1e6).round() as i64)
    }

    #[test]
    fn eigenvalues_of_known_matrices() {
        // Rotation by 90 degrees: ±i.
        let r = DMatrix::from_row_slice(2, 2, &[0.0, -1.0, 1.0, 0.0]);
        let mut e = eigenvalues(&r).unwrap();
        e.sort_by_key(sort_key);
        assert!((e[0] - Complex::new(0.0, -1.0)).norm() < 1e-12);
        assert!((e[1] - Complex::new(0.0, 1.0)).norm() < 1e-12);

        // Cyclic permutation of 5 (a classic stall for unshifted Francis): the 5th roots of 1.
        let p = mat(5, 5, |i, j| if (i + 1) % 5 == j { 1.0 } else { 0.0 });
        let e = eigenvalues(&p).unwrap();
        assert_eq!(e.len(), 5);
        for z in &e {
            assert!((z.norm() - 1.0).abs() < 1e-9, "{z}");
            assert!((z.powu(5) - Complex::new(1.0, 0.0)).norm() < 1e-8, "{z}");
        }
        let sum: Complex<f64> = e.iter().sum();
        assert!(sum.norm() < 1e-9);

        // Triangular: the diagonal.
        let t = DMatrix::from_row_slice(3, 3, &[2.0, 5.0, 1.0, 0.0, -3.0, 4.0, 0.0, 0.0, 0.5]);
        let mut e: Vec<f64> = eigenvalues(&t).unwrap().iter().map(|z| z.re).collect();
        e.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert!(
            (e[0] + 3.0).abs() < 1e-12 && (e[1] - 0.5).abs() < 1e-12 && (e[2] - 2.0).abs() < 1e-12
        );

        assert_eq!(
            eigenvalues(&DMatrix::zeros(3, 3)).unwrap(),
            vec![Complex::new(0.0, 0.0); 3]
        );
    }

    #[test]
    fn small_product_eigenvalues_equal_large_product_eigenvalues() {
        // A [12, 3], B [3, 12]: the 12x12 product has the 3 eigenvalues of B A plus 9 zeros.
        for seed in 0..5 {
            let lr = LowRank::new(pseudo(12, 3, 10 + seed), pseudo(3, 12, 20 + seed));
            let small = lr.eigenvalues().unwrap();
            assert_eq!(small.len(), 3);
            let big = eigenvalues(&lr.dense()).unwrap();
            assert_eq!(big.len(), 12);
            let scale = big.iter().map(|z| z.norm()).fold(0.0, f64::max);
            let mut used = [false; 12];
            for z in &small {
                let (best, dist) = big
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !used[*i])
                    .map(|(i, w)| (i, (w - z).norm()))
                    .min_by(|x, y| x.1.partial_cmp(&y.1).unwrap())
                    .unwrap();
                assert!(
                    dist < 1e-8 * scale.max(1.0),
                    "seed {seed}: {z} vs {}",
                    big[best]
                );
                used[best] = true;
            }
            for (i, w) in big.iter().enumerate() {
                if !used[i] {
                    assert!(w.norm() < 1e-8 * scale.max(1.0), "seed {seed}: extra {w}");
                }
            }
        }
    }
}
