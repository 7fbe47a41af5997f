//! The analysis against TransformerLens 3.9 references (`tests/fixtures/<name>/`, built
//! by `scripts/make_fixtures.py`; keys in `scripts/FIXTURES.md`): copying scores, OV
//! eigenvalues, Q/K/V composition scores and head-detector scores, each within 1e-3
//! (eigenvalues: 1e-3 relative to the largest modulus, at least 1e-3 absolute). A
//! missing fixture file fails the test and names the file; nothing passes silently.

use std::path::{Path, PathBuf};

use nalgebra::{Complex, DMatrix};
use safetensors::{Dtype, SafeTensors};

use super::circuits::{composition_scores, copying_scores, ov_eigenvalues};
use super::heads::{detect, DetectOptions, HeadKind};
use super::vocab::Vocab;
use crate::weights::Weights;

const MODELS: [&str; 3] = ["attn2_standard_noln", "attn2_shortformer_ln", "attn1_ln"];
const TOL: f64 = 1e-3;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests")
        .join("fixtures")
        .join(name)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "TL fixture file missing or unreadable: {} ({e}); generate it with \
             scripts/make_fixtures.py",
            path.display()
        )
    })
}

fn load_weights(name: &str) -> Weights {
    let dir = fixture_dir(name);
    let model = dir.join("model.safetensors");
    let config = dir.join("config.json");
    for p in [&model, &config] {
        assert!(
            p.exists(),
            "TL fixture file missing: {}; generate it with scripts/make_fixtures.py",
            p.display()
        );
    }
    crate::tl::load_files(&model, &config)
        .unwrap_or_else(|e| panic!("tl::load_files({}): {e}", model.display()))
}

/// A float32 tensor of the reference file: (shape, values in row-major order).
fn tensor(st: &SafeTensors, file: &Path, key: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st
        .tensor(key)
        .unwrap_or_else(|e| panic!("{}: missing key `{key}` ({e})", file.display()));
    let data = t.data();
    let values = match t.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::I32 => data
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
            .collect(),
        other => panic!("{}: `{key}` has dtype {other:?}", file.display()),
    };
    (t.shape().to_vec(), values)
}

struct Reference {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Reference {
    fn open(name: &str) -> Reference {
        let path = fixture_dir(name).join("reference.safetensors");
        let bytes = read(&path);
        Reference { path, bytes }
    }

    fn get(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        let st = SafeTensors::deserialize(&self.bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", self.path.display()));
        tensor(&st, &self.path, key)
    }
}

/// Asserts `|ours - tl| <= tol` and returns the difference.
fn check_close(what: &str, ours: f64, tl: f64, tol: f64) -> f64 {
    assert!(
        (ours - tl).abs() <= tol,
        "{what}: ours {ours} vs TL {tl} (|diff| {} > {tol})",
        (ours - tl).abs()
    );
    (ours - tl).abs()
}

fn dims(w: &Weights) -> (usize, usize) {
    (w.cfg.n_layers, w.cfg.n_heads)
}

#[test]
fn copying_scores_match_tl() {
    for name in MODELS {
        let w = load_weights(name);
        let (nl, nh) = dims(&w);
        let (shape, tl) = Reference::open(name).get("copying");
        assert_eq!(shape, vec![nl, nh], "{name}: copying shape");
        let ours = copying_scores(&Vocab::new(&w)).unwrap();
        let mut max = 0.0f64;
        for l in 0..nl {
            for h in 0..nh {
                max = max.max(check_close(
                    &format!("{name} copying L{l}H{h}"),
                    ours[l][h],
                    f64::from(tl[l * nh + h]),
                    TOL,
                ));
            }
        }
        eprintln!("{name}: copying max |ours - TL| = {max:.2e}");
    }
}

#[test]
fn ov_eigenvalues_match_tl() {
    for name in MODELS {
        let w = load_weights(name);
        let (nl, nh) = dims(&w);
        let d = w.cfg.d_head;
        let mut max = 0.0f64;
        let r = Reference::open(name);
        let v = Vocab::new(&w);
        let (shape, re) = r.get("ov_eigenvalues.real");
        let (_, im) = r.get("ov_eigenvalues.imag");
        assert_eq!(shape, vec![nl, nh, d], "{name}: eigenvalue shape");
        for l in 0..nl {
            for h in 0..nh {
                let ours = ov_eigenvalues(&v, l, h).unwrap();
                assert_eq!(ours.len(), d);
                let theirs: Vec<Complex<f64>> = (0..d)
                    .map(|i| {
                        let k = (l * nh + h) * d + i;
                        Complex::new(f64::from(re[k]), f64::from(im[k]))
                    })
                    .collect();
                let scale = theirs.iter().map(|z| z.norm()).fold(1.0, f64::max);
                // Match as multisets: each TL eigenvalue to the nearest unused one of ours.
                let mut used = vec![false; d];
                for z in &theirs {
                    let (best, dist) = ours
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !used[*i])
                        .map(|(i, o)| (i, (o - z).norm()))
                        .min_by(|a, b| a.1.total_cmp(&b.1))
                        .unwrap();
                    assert!(
                        dist <= TOL * scale,
                        "{name} L{l}H{h}: TL eigenvalue {z} has no match within {} \
                         (nearest {}, ours {ours:?})",
                        TOL * scale,
                        ours[best]
                    );
                    used[best] = true;
                    max = max.max(dist / scale);
                }
            }
        }
        eprintln!("{name}: OV eigenvalues max |ours - TL| / max(1, max|λ|) = {max:.2e}");
    }
}

#[test]
#[allow(clippy::needless_range_loop)] // four indices into a flat reference tensor
fn composition_scores_match_tl() {
    for name in MODELS {
        let w = load_weights(name);
        let (nl, nh) = dims(&w);
        let ours = composition_scores(&w).unwrap();
        let mut max = 0.0f64;
        let r = Reference::open(name);
        for (mode, s) in [("Q", &ours.q), ("K", &ours.k), ("V", &ours.v)] {
            let (shape, tl) = r.get(&format!("composition.{mode}"));
            assert_eq!(
                shape,
                vec![nl, nh, nl, nh],
                "{name}: composition.{mode} shape"
            );
            for l1 in 0..nl {
                for h1 in 0..nh {
                    for l2 in 0..nl {
                        for h2 in 0..nh {
                            let k = ((l1 * nh + h1) * nl + l2) * nh + h2;
                            max = max.max(check_close(
                                &format!("{name} composition.{mode} L{l1}H{h1} -> L{l2}H{h2}"),
                                s[l1][h1][l2][h2],
                                f64::from(tl[k]),
                                TOL,
                            ));
                        }
                    }
                }
            }
        }
        eprintln!("{name}: composition max |ours - TL| = {max:.2e}");
    }
}

#[test]
fn head_detector_matches_tl() {
    for name in MODELS {
        let cfg_path = fixture_dir(name).join("config.json");
        let cfg: serde_json::Value = serde_json::from_slice(&read(&cfg_path))
            .unwrap_or_else(|e| panic!("{}: {e}", cfg_path.display()));
        let nl = cfg["n_layers"].as_u64().unwrap() as usize;
        let nh = cfg["n_heads"].as_u64().unwrap() as usize;
        let r = Reference::open(name);
        let (_, tokens) = r.get("heads.tokens");
        let tokens: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
        let n = tokens.len();
        let mut max = 0.0f64;
        // TL's detect_head ran the model on `heads.tokens` (prompt 8 without its last
        // token); with causal attention that pattern is the top-left n x n block of the
        // cached pattern of the full prompt 8.
        let patterns: Vec<Vec<DMatrix<f32>>> = (0..nl)
            .map(|l| {
                let (shape, p) = r.get(&format!("cache.8.blocks.{l}.attn.hook_pattern"));
                assert_eq!(shape[0], nh);
                let s = shape[1];
                assert!(s >= n && shape[2] == s, "{name}: pattern shape {shape:?}");
                (0..nh)
                    .map(|h| DMatrix::from_fn(n, n, |q, k| p[(h * s + q) * s + k]))
                    .collect()
            })
            .collect();
        for (kind, key) in [
            (HeadKind::PreviousToken, "heads.previous_token"),
            (HeadKind::DuplicateToken, "heads.duplicate_token"),
            (HeadKind::Induction, "heads.induction"),
        ] {
            let ours = detect(&patterns, &tokens, kind, DetectOptions::default()).unwrap();
            let (shape, tl) = r.get(key);
            assert_eq!(shape, vec![nl, nh], "{name}: {key} shape");
            for l in 0..nl {
                for h in 0..nh {
                    max = max.max(check_close(
                        &format!("{name} {key} L{l}H{h}"),
                        ours[l][h],
                        f64::from(tl[l * nh + h]),
                        TOL,
                    ));
                }
            }
        }
        eprintln!("{name}: head detector max |ours - TL| = {max:.2e}");
    }
}
