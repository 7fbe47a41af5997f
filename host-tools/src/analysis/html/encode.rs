//! Byte encodings that keep the embedded data small: attention patterns as one byte per
//! causal entry, circuit maps as one signed byte per entry, both base64 in the JSON.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use nalgebra::DMatrix;
use serde::Serialize;

/// The lower triangles of every head's pattern, layer-major, head-major, query-major,
/// `round(255 a)` per entry, base64. With `pool > 1` the positions are grouped in blocks
/// of `pool` and each block entry is the attention from the query block to the key
/// block, averaged over the block's queries (so that each pooled row still sums to 1).
pub fn encode_patterns(patterns: &[Vec<DMatrix<f32>>], pool: usize) -> String {
    let pool = pool.max(1);
    let mut bytes = Vec::new();
    for layer in patterns {
        for a in layer {
            let n = a.nrows();
            let m = n.div_ceil(pool);
            for qb in 0..m {
                let q_range = qb * pool..((qb + 1) * pool).min(n);
                let nq = q_range.len() as f32;
                for kb in 0..=qb {
                    let k_range = kb * pool..((kb + 1) * pool).min(n);
                    let mut sum = 0.0f32;
                    for q in q_range.clone() {
                        for k in k_range.clone() {
                            if k <= q {
                                sum += a[(q, k)];
                            }
                        }
                    }
                    bytes.push((sum / nq * 255.0).round().clamp(0.0, 255.0) as u8);
                }
            }
        }
    }
    STANDARD.encode(bytes)
}

/// A token × token map of a circuit: the tokens shown (rows and columns alike), the
/// largest |entry| and the entries as `round(127 v / scale) + 128`, row-major, base64.
#[derive(Clone, Debug, Serialize)]
pub struct CircuitMap {
    pub tokens: Vec<u32>,
    pub scale: f64,
    pub data: String,
}

impl CircuitMap {
    pub fn new(tokens: Vec<u32>, m: &DMatrix<f64>) -> Self {
        let scale = m.iter().fold(0.0f64, |a, v| a.max(v.abs())).max(1e-30);
        let mut bytes = Vec::with_capacity(m.nrows() * m.ncols());
        for i in 0..m.nrows() {
            for j in 0..m.ncols() {
                bytes.push(((m[(i, j)] / scale * 127.0).round() + 128.0).clamp(1.0, 255.0) as u8);
            }
        }
        CircuitMap {
            tokens,
            scale,
            data: STANDARD.encode(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_rows_still_sum_to_one() {
        let n = 5;
        let a = DMatrix::from_fn(n, n, |q, k| if k <= q { 1.0 / (q + 1) as f32 } else { 0.0 });
        let exact = STANDARD
            .decode(encode_patterns(&[vec![a.clone()]], 1))
            .unwrap();
        assert_eq!(exact.len(), n * (n + 1) / 2);
        assert_eq!(exact[0], 255);
        let pooled = STANDARD.decode(encode_patterns(&[vec![a]], 2)).unwrap();
        // 3 blocks: 6 lower-triangle entries; each block row sums to 255 (± rounding).
        assert_eq!(pooled.len(), 6);
        let rows = [&pooled[0..1], &pooled[1..3], &pooled[3..6]];
        for r in rows {
            let s: u32 = r.iter().map(|b| u32::from(*b)).sum();
            assert!((253..=257).contains(&s), "{r:?}");
        }
    }

    #[test]
    fn circuit_map_is_signed_around_128() {
        let m = DMatrix::from_row_slice(1, 3, &[-2.0, 0.0, 2.0]);
        let c = CircuitMap::new(vec![0], &m);
        assert_eq!(STANDARD.decode(&c.data).unwrap(), vec![1, 128, 255]);
        assert_eq!(c.scale, 2.0);
    }
}
