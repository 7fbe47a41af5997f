//! Shared helpers of the cross-crate tests: fixture paths, TransformerLens reference
//! tensors, and blobs converted from the fixtures' TransformerLens weights.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tinylens_core::StorageKind;
use tinylens_host::{convert, quantize, tl};

pub mod fuzz_targets;

/// The fixture models written by `scripts/make_fixtures.py` (TransformerLens 3.9).
pub const FIXTURES: [&str; 3] = ["attn2_standard_noln", "attn2_shortformer_ln", "attn1_ln"];

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// A reference tensor: shape and row-major values (integers converted to f32).
#[derive(Debug, Clone)]
pub struct RefTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl RefTensor {
    /// Row `i` of the leading dimension.
    pub fn row(&self, i: usize) -> &[f32] {
        let n: usize = self.shape[1..].iter().product();
        &self.data[i * n..(i + 1) * n]
    }
}

/// Every tensor of a reference safetensors file.
pub fn load_reference(name: &str, file: &str) -> BTreeMap<String, RefTensor> {
    load_reference_file(&fixture(name).join(file))
}

/// Every tensor of a TransformerLens reference safetensors file at `path`.
pub fn load_reference_file(path: &std::path::Path) -> BTreeMap<String, RefTensor> {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("fixture {} missing: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("reference is safetensors");
    let mut out = BTreeMap::new();
    for (k, v) in st.tensors() {
        let data: Vec<f32> = match v.dtype() {
            safetensors::Dtype::F32 => v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            safetensors::Dtype::I32 => v
                .data()
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
                .collect(),
            safetensors::Dtype::I64 => v
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            d => panic!("unexpected dtype {d:?} for {k}"),
        };
        out.insert(
            k.to_string(),
            RefTensor {
                shape: v.shape().to_vec(),
                data,
            },
        );
    }
    out
}

/// The fixture's prompts as token lists.
pub fn prompts(reference: &BTreeMap<String, RefTensor>) -> Vec<Vec<u32>> {
    let t = &reference["tokens"];
    (0..t.shape[0])
        .map(|i| t.row(i).iter().map(|v| *v as u32).collect())
        .collect()
}

/// Converts a fixture's TransformerLens weights (with `processing`) to a blob.
pub fn blob_with(name: &str, kind: StorageKind, processing: tl::Processing) -> Vec<u8> {
    let dir = fixture(name);
    let mut w = tl::load_files(&dir.join("model.safetensors"), &dir.join("config.json"))
        .expect("fixture loads");
    let p = tl::process(&mut w, processing).expect("processing");
    convert::write_blob(&w, convert::QuantPlan::for_kind(kind), p, None)
        .expect("blob")
        .0
}

/// Seed of the calibration set the tests use (`--calibrate repeated`, seed 0): random
/// tokens, drawn independently of the fixtures' TransformerLens prompts.
pub const CALIBRATION_SEED: u64 = 0;

/// Unprocessed blob of a fixture with GPTQ-calibrated rounding (`tinylens convert
/// --quant KIND --calibrate repeated`).
pub fn calibrated_blob(name: &str, kind: StorageKind) -> Vec<u8> {
    let dir = fixture(name);
    let w = tl::load_files(&dir.join("model.safetensors"), &dir.join("config.json"))
        .expect("fixture loads");
    let cfg = convert::core_config(&w.cfg).unwrap();
    let prompts = quantize::calibration::repeated(
        &cfg,
        None,
        CALIBRATION_SEED,
        quantize::calibration::REPEATED_SEQUENCES,
    )
    .unwrap();
    let kinds = quantize::kinds_for(&w, convert::QuantPlan::for_kind(kind)).unwrap();
    quantize::quantize(&w, tl::Processing::NONE, None, &kinds, Some(&prompts))
        .expect("calibrated blob")
        .blob
}

/// A blob for `cfg` with every tensor in `kind` and uniform random values in
/// [-1, 1) from `seed` (for models larger than the fixtures, e.g. to exercise the
/// host's SIMD kernels and row-block threads).
pub fn random_blob(cfg: &tinylens_core::Config, kind: StorageKind, seed: u64) -> Vec<u8> {
    use tinylens_core::blob::{self, write};
    let n = blob::tensor_count(cfg);
    let data_start = (blob::HEADER_LEN + n * blob::ENTRY_LEN).next_multiple_of(blob::ALIGN);
    let version = write::version_for([kind]);
    let header = write::header(cfg, tinylens_core::Processing::default(), n as u16, version);
    let mut out = header.to_vec();
    let mut data = Vec::new();
    let mut rng = tinylens_core::sample::Rng::new(seed);
    for t in 0..n {
        let slot = blob::slot(cfg, t).expect("slot");
        let (rows, cols) = (slot.rows as usize, slot.cols as usize);
        let src: Vec<f32> = (0..rows * cols)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect();
        let mut bytes = vec![0u8; kind.data_len(rows, cols).expect("size")];
        assert!(tinylens_core::quant::quantize(
            kind, rows, cols, &src, &mut bytes
        ));
        data.resize(data.len().next_multiple_of(blob::ALIGN), 0);
        let offset = (data_start + data.len()) as u32;
        out.extend(write::entry(
            &slot,
            kind,
            offset,
            bytes.len() as u32,
            version,
        ));
        data.extend(bytes);
    }
    out.resize(data_start, 0);
    out.extend(data);
    write::finish(&mut out);
    out
}

/// Unprocessed blob of a fixture.
pub fn blob(name: &str, kind: StorageKind) -> Vec<u8> {
    blob_with(name, kind, tl::Processing::NONE)
}

/// log-softmax of one row of logits, in f64.
pub fn log_softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
    let lse = x.iter().map(|v| (*v as f64 - m).exp()).sum::<f64>().ln() + m;
    x.iter().map(|v| *v as f64 - lse).collect()
}

/// KL(p || q) of two rows of logits.
pub fn kl(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p_logits), log_softmax(q_logits));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}

pub fn argmax(x: &[f32]) -> usize {
    tinylens_core::sample::greedy(x) as usize
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() })
        .fold(0.0, f32::max)
}

/// A fresh, empty directory under the system temp dir for one test.
pub fn temp_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tinylens-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// The demo model's TransformerLens files (`models/demo/`).
pub fn demo_dir() -> PathBuf {
    repo_root().join("models/demo")
}

/// What a child process left: exit status (None when killed by a signal), stdout, stderr.
pub struct Output {
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Runs `cmd` (stdin closed), collecting stdout and stderr; kills it after `limit`.
pub fn run_with_watchdog(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).map(|_| v)
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        err.read_to_end(&mut v).map(|_| v)
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {limit:?}: killed (hang)");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status: status.code(),
        stdout: t_out.join().unwrap().unwrap(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap().unwrap()).into_owned(),
    }
}

/// Helpers of the tests that run firmware in QEMU.
pub mod firmware {
    use std::path::PathBuf;
    use std::process::{Command, Stdio};

    pub fn examples() -> PathBuf {
        super::repo_root().join("firmware-examples")
    }

    /// Whether this is a CI run (`CI=true`): there, a missing tool or build is a failure.
    pub fn ci() -> bool {
        std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
    }

    /// The release ELF of binary `bin` of firmware package `package` for `triple`; built
    /// when missing, except under CI, where scripts/test.sh must have built it.
    /// `CPU/TRIPLE` (e.g. `cortex-m55/thumbv8m.main-none-eabihf`) is TRIPLE built with
    /// `-C target-cpu=CPU` in the target directory `target/CPU` (`cargo build-m55`).
    pub fn elf(package: &str, bin: &str, triple: &str) -> PathBuf {
        let elf = examples()
            .join("target")
            .join(triple)
            .join("release")
            .join(bin);
        if elf.is_file() {
            return elf;
        }
        let how = format!(
            "cd firmware-examples && cargo build --release -p {package} --target {triple} \
             (scripts/test.sh does this before the tests)"
        );
        assert!(
            !ci(),
            "firmware ELF {} is missing; build it first: {how}",
            elf.display()
        );
        eprintln!("building the firmware: {how}");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        match triple.split_once('/') {
            Some((cpu, t)) => cmd.args([
                "build",
                "--release",
                "-p",
                package,
                "--target",
                t,
                "--target-dir",
                &format!("target/{cpu}"),
                "--config",
                &format!("target.{t}.rustflags=['-C', 'target-cpu={cpu}']"),
            ]),
            None => cmd.args(["build", "--release", "-p", package, "--target", triple]),
        };
        let status = cmd
            .current_dir(examples())
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("RUSTFLAGS")
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo: {e}; build the firmware by hand: {how}"));
        assert!(
            status.success() && elf.is_file(),
            "building the firmware failed; needs `rustup target add {triple}`; {how}"
        );
        elf
    }

    /// QEMU and readelf (run-qemu.sh picks the machine and the marks with it).
    pub fn require_tools() {
        for tool in ["qemu-system-arm", "readelf"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                found,
                "{tool} not found: apt-get install qemu-system-arm binutils (scripts/test.sh installs them)"
            );
        }
    }
}
