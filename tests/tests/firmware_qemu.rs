//! The example firmware (`firmware-examples/qemu`) in QEMU: its trace is bit for bit the
//! host run's (`tinylens_host::run::run`, i.e. `tinylens run --trace`) for the same
//! blob, prompt, probe set, run id and generation length; it decodes with no loss; its
//! generated tokens are the host's; `tinylens decode -` reads it from the QEMU pipe;
//! bad arguments end the firmware with status 1 and a message, never a hang.
//!
//! Machines (the firmware's build script picks one per target):
//! - Cortex-M4F (`thumbv7em-none-eabihf`, QEMU `mps2-an386`, hardware float);
//! - STM32F405 (`thumbv7em-none-eabi`, QEMU `netduinoplus2`: flash at 0x0800_0000,
//!   128 KiB SRAM; soft-float ABI, DSP kernel);
//! - Cortex-M0 (`thumbv6m-none-eabi`, QEMU `microbit`, 16 KiB RAM, soft-float);
//! - Cortex-M33 (`thumbv8m.main-none-eabihf` with `target-cpu=cortex-m33`, QEMU
//!   `mps2-an505`, Secure state, DSP kernel);
//! - Cortex-M7 (QEMU `mps2-an500`, the memory map of mps2-an386): the Cortex-M4F ELF
//!   itself, as `thumbv7em-none-eabihf` is the Rust target of both cores (DSP kernel).
//!
//! - Cortex-M55 with Helium (`thumbv8m.main-none-eabihf` with `target-cpu=cortex-m55`,
//!   QEMU `mps3-an547`, Secure state, MVE kernel and DSP kernel).
//!
//! - RISC-V (`riscv32imac-unknown-none-elf`, `qemu-system-riscv32 -machine virt -bios
//!   none`: semihosting, or the NS16550A UART; no FPU, so every float is soft-float).
//!
//! A machine that runs another target's ELF is named after it: `TRIPLE@MACHINE`; a
//! build for a named CPU is `CPU/TRIPLE` (its target directory).
//!
//! Tests are named after the transport and the machine (`uart_netduinoplus2`,
//! `semihosting_mps2_an505`, ...), so that a filter runs one. The semihosting ones take
//! the trace from QEMU's stdout; the UART ones from the machine's real UART registers,
//! captured with `-serial file:...`. The firmware writes the trace into a ring that
//! the main loop drains between steps (`sink=ring`, its default) unless a test says
//! otherwise.
//!
//! The firmware ELFs are built by the test command (`scripts/test.sh`) before the
//! tests run; a missing ELF is built here with cargo, except under `CI=true`, where it
//! fails the test. Every QEMU run is under `run-qemu.sh`'s timeout (and a watchdog
//! here): a hang fails the test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tinylens_core::{KvStorage, Model};
use tinylens_host::export;
use tinylens_host::run::{run, RunOptions};
use tinylens_host::trace::{decode_stream, Run};
use tinylens_tests::firmware::{ci, examples, require_tools};
use tinylens_tests::{repo_root, run_with_watchdog, Output};

/// The QEMU firmware ELF for `triple` (`TRIPLE@MACHINE`: the ELF of TRIPLE).
fn firmware(triple: &str) -> PathBuf {
    let triple = triple.split_once('@').map_or(triple, |(t, _)| t);
    tinylens_tests::firmware::elf("tinylens-fw-qemu", "qemu", triple)
}

/// Checks that the firmware for `triple` links the int8 kernel module `module` (`dsp`,
/// `mve`) of tinylens-core: the dispatch in `kernels::matvec` is its only caller, so a
/// linked kernel is a used one (the trace tests then show it gives the host's bits).
fn assert_links_kernel(triple: &str, module: &str) {
    let elf = firmware(triple);
    let out = Command::new("readelf")
        .arg("-sW")
        .arg(&elf)
        .output()
        .unwrap();
    let symbols = String::from_utf8_lossy(&out.stdout);
    let needle = format!("7kernels{}{module}", module.len());
    assert!(
        symbols.contains(&needle),
        "{} has no tinylens_core::kernels::{module} symbol: the {module} kernel is not built in",
        elf.display()
    );
}

// The firmware's compiled-in settings (`firmware-examples/fw/src/lib.rs`: DEFAULT_*).
// A change there without a change here fails `*_defaults_*` with a header or token diff.
const DEFAULT_PROMPT: [u32; 11] = [0, 5, 12, 33, 7, 21, 40, 9, 5, 12, 33];
const DEFAULT_GENERATE: usize = 8;
const DEFAULT_PROBES: [&str; 3] = [
    "blocks.*.attn.hook_pattern",
    "blocks.*.attn.hook_result:f16",
    "logits",
];
const DEFAULT_RUN_ID: u32 = 1;

/// Seconds `run-qemu.sh` lets QEMU run (every run here takes well under a second).
const QEMU_TIMEOUT_S: u64 = 30;

const M4: &str = "thumbv7em-none-eabihf";
const M0: &str = "thumbv6m-none-eabi";
/// STM32F405 (QEMU netduinoplus2).
const STM32: &str = "thumbv7em-none-eabi";
const M33: &str = "thumbv8m.main-none-eabihf";
/// Cortex-M55 with Helium (QEMU mps3-an547): `target-cpu=cortex-m55` (`cargo build-m55`).
const M55: &str = "cortex-m55/thumbv8m.main-none-eabihf";
/// RISC-V RV32IMAC (QEMU virt).
const RV32: &str = "riscv32imac-unknown-none-elf";
/// Cortex-M7 (QEMU mps2-an500) runs the Cortex-M4F build.
const M7: &str = "thumbv7em-none-eabihf@mps2-an500";

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tinylens-fw-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        name
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the firmware for `triple` in QEMU with `args`; returns (trace, stderr, status).
/// The defmt log is kept raw in the scratch directory (not decoded), so that runs in
/// parallel never share a file.
fn qemu(triple: &str, args: &[&str]) -> Output {
    qemu_on(triple, args, false)
}

/// [`qemu`], with `uart`: the firmware sends the trace through the machine's UART
/// (`transport=uart`), captured by QEMU into a file; the capture replaces `stdout`.
fn qemu_on(triple: &str, args: &[&str], uart: bool) -> Output {
    let machine = triple.split_once('@').map(|(_, m)| m);
    qemu_elf(&firmware(triple), machine, args, uart)
}

/// [`qemu_on`] for a given firmware ELF (on `machine`, else the one run-qemu.sh picks).
fn qemu_elf(elf: &Path, machine: Option<&str>, args: &[&str], uart: bool) -> Output {
    require_tools();
    let dir = scratch("qemu");
    let capture = dir.join("uart.tlt");
    let mut cmd = Command::new(examples().join("run-qemu.sh"));
    cmd.arg("--timeout")
        .arg(QEMU_TIMEOUT_S.to_string())
        .arg("--no-decode")
        .arg("--defmt-out")
        .arg(dir.join("log.defmt"));
    if let Some(machine) = machine {
        cmd.arg("--machine").arg(machine);
    }
    if uart {
        cmd.arg("--serial").arg(&capture);
    }
    cmd.arg(elf).args(args);
    if uart {
        cmd.arg("transport=uart");
    }
    let mut out = run_with_watchdog(cmd, Duration::from_secs(QEMU_TIMEOUT_S + 15));
    if uart {
        assert!(
            out.stdout.is_empty(),
            "transport=uart wrote to semihosting stdout"
        );
        out.stdout = std::fs::read(&capture).unwrap_or_default();
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_ne!(
        out.status,
        Some(124),
        "QEMU timed out (firmware hung): {}",
        out.stderr
    );
    out
}

/// The blob the firmware embeds, found by the CRC its trace header names among the
/// blobs it may have been built with (see firmware-examples/fw/build.rs).
fn embedded_blob(model_crc: u32) -> (PathBuf, Vec<u8>) {
    let mut candidates = vec![
        repo_root().join("models/demo/demo-int8.tlm"),
        repo_root().join("models/english/english-int8.tlm"),
    ];
    if let Ok(dir) = std::fs::read_dir(examples().join("models")) {
        let mut v: Vec<PathBuf> = dir.map(|e| e.unwrap().path()).collect();
        v.sort();
        candidates.extend(v);
    }
    for path in &candidates {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        if Model::from_bytes(&bytes).is_ok_and(|m| m.checksum() == model_crc) {
            return (path.clone(), bytes);
        }
    }
    panic!(
        "the firmware embeds a model with crc {model_crc:08x}, none of {candidates:?} \
         (built with TINYLENS_MODEL? rebuild: cd firmware-examples && cargo build --release && cargo build-m0)"
    );
}

/// The single run of a device trace, checked to have arrived whole.
fn lossless_run(trace: &[u8]) -> Run {
    let (mut runs, report) = decode_stream(trace);
    assert_eq!(report.bad_frames, 0, "bad frames in the firmware trace");
    assert_eq!(
        report.orphan_frames, 0,
        "orphan frames in the firmware trace"
    );
    assert_eq!(runs.len(), 1, "expected exactly one run");
    let run = runs.pop().unwrap();
    let l = &run.loss;
    assert!(l.end_seen, "no end frame");
    assert_eq!(l.lost_frames, 0);
    assert_eq!(l.duplicate_frames, 0);
    assert_eq!(l.dropped_on_device, 0);
    assert!(
        l.missing_records.is_empty(),
        "missing: {:?}",
        l.missing_records
    );
    run
}

/// Frame `i` of a stream (without its 0x00) for diagnostics.
fn frames(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split(|b| *b == 0).filter(|f| !f.is_empty()).collect()
}

fn assert_same_bytes(device: &[u8], host: &[u8], what: &str) {
    if device == host {
        return;
    }
    let (d, h) = (frames(device), frames(host));
    let first = d.iter().zip(&h).position(|(a, b)| a != b);
    let detail = match first {
        Some(i) => {
            let mut fd = d[i].to_vec();
            let mut fh = h[i].to_vec();
            format!(
                "frame {i} differs:\n  device {:?}\n  host   {:?}",
                tinylens_core::trace::decode_frame(&mut fd),
                tinylens_core::trace::decode_frame(&mut fh)
            )
        }
        None => format!("device {} frames, host {} frames", d.len(), h.len()),
    };
    panic!(
        "{what}: device trace ({} bytes) != host trace ({} bytes); {detail}\n\
         (a stale firmware build? rebuild: cd firmware-examples && cargo build --release && cargo build-m0)",
        device.len(),
        host.len()
    );
}

struct Case<'a> {
    triple: &'a str,
    /// Trace through the machine's UART instead of semihosting.
    uart: bool,
    /// Firmware arguments (empty: the compiled-in defaults).
    args: &'a [&'a str],
    prompt: &'a [u32],
    generate: usize,
    probes: &'a [&'a str],
    run_id: u32,
}

impl Case<'_> {
    fn defaults(triple: &str) -> Case<'_> {
        Case {
            triple,
            uart: false,
            args: &[],
            prompt: &DEFAULT_PROMPT,
            generate: DEFAULT_GENERATE,
            probes: &DEFAULT_PROBES,
            run_id: DEFAULT_RUN_ID,
        }
    }

    fn host_options(&self) -> RunOptions {
        RunOptions {
            tokens: self.prompt.to_vec(),
            probes: self.probes.iter().map(|s| s.to_string()).collect(),
            trace: true,
            generate: self.generate,
            run_id: self.run_id,
            kv: self
                .args
                .iter()
                .find_map(|a| a.strip_prefix("kv="))
                .map_or(KvStorage::F32, |k| KvStorage::from_name(k).expect("kv=")),
            ..Default::default()
        }
    }

    /// Runs the firmware and the host and checks the traces are equal byte for byte;
    /// returns the trace, the blob's path and the host's generated tokens.
    fn check(&self) -> (Vec<u8>, PathBuf, Vec<u32>) {
        let start = Instant::now();
        let out = qemu_on(self.triple, self.args, self.uart);
        let elapsed = start.elapsed();
        assert_eq!(
            out.status,
            Some(0),
            "firmware {} {:?} failed: {}",
            self.triple,
            self.args,
            out.stderr
        );
        let device = lossless_run(&out.stdout);
        let (path, blob) = embedded_blob(device.model_crc);
        let model = Model::from_bytes(&blob).unwrap();
        let host = run(&model, &self.host_options()).expect("host run");
        assert_same_bytes(
            &out.stdout,
            &host.trace,
            &format!("{} {:?} with {}", self.triple, self.args, path.display()),
        );
        // Equal bytes imply equal tokens; checked separately for a readable failure.
        assert_eq!(device.run_id, self.run_id);
        let tokens: Vec<u32> = device
            .token_list()
            .into_iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(tokens, host.tokens, "prompt + generated tokens");
        assert_eq!(&tokens[self.prompt.len()..], &host.generated[..]);
        assert_eq!(host.generated.len(), self.generate);
        eprintln!(
            "{}{} {:?}: {} bytes, {} records, bit-exact with the host ({}), generated {:?}, QEMU {:?}",
            self.triple,
            if self.uart { " over the UART" } else { "" },
            self.args,
            out.stdout.len(),
            device.records.len(),
            path.display(),
            host.generated,
            elapsed
        );
        (out.stdout, path, host.generated)
    }
}

#[test]
fn semihosting_mps2_an386_defaults_prompt_and_generation_bit_exact() {
    Case::defaults(M4).check();
}

#[test]
fn semihosting_mps2_an386_all_hooks_prompt_bit_exact() {
    Case {
        triple: M4,
        uart: false,
        args: &["tokens=0,3,9,27,4,8,3,9", "generate=0", "probe=*", "run=7"],
        prompt: &[0, 3, 9, 27, 4, 8, 3, 9],
        generate: 0,
        probes: &["*"],
        run_id: 7,
    }
    .check();
}

#[test]
fn semihosting_mps2_an386_mixed_precisions_heads_positions_bit_exact() {
    Case {
        triple: M4,
        uart: false,
        args: &[
            "tokens=1,2,3,4,1,2",
            "generate=6",
            "probe=blocks.0.attn.hook_z[1]@2..5:f16",
            "probe=blocks.*.hook_resid_post:int8",
            "probe=hook_embed@0",
            "probe=logits@7..12",
            "run=4000000000",
        ],
        prompt: &[1, 2, 3, 4, 1, 2],
        generate: 6,
        probes: &[
            "blocks.0.attn.hook_z[1]@2..5:f16",
            "blocks.*.hook_resid_post:int8",
            "hook_embed@0",
            "logits@7..12",
        ],
        run_id: 4_000_000_000,
    }
    .check();
}

#[test]
fn semihosting_mps2_an386_no_probes_still_traces_tokens() {
    Case {
        triple: M4,
        uart: false,
        args: &["probe=none", "generate=3"],
        prompt: &DEFAULT_PROMPT,
        generate: 3,
        probes: &[],
        run_id: DEFAULT_RUN_ID,
    }
    .check();
}

/// A quantized KV cache is the same choice on both sides: the int8 cache (and the f16
/// one on the soft-float M0) gives the host's trace byte for byte.
#[test]
fn semihosting_mps2_an386_kv_int8_all_hooks_bit_exact() {
    kv_int8_all_hooks(M4).check();
}

/// Every hook with an int8 KV cache, 8-token prompt, 3 generated tokens, run 8.
fn kv_int8_all_hooks(triple: &str) -> Case<'_> {
    Case {
        triple,
        uart: false,
        args: &[
            "tokens=0,3,9,27,4,8,3,9",
            "generate=3",
            "probe=*",
            "run=8",
            "kv=int8",
        ],
        prompt: &[0, 3, 9, 27, 4, 8, 3, 9],
        generate: 3,
        probes: &["*"],
        run_id: 8,
    }
}

#[test]
fn semihosting_microbit_kv_f16_bit_exact() {
    Case {
        args: &["kv=f16"],
        ..Case::defaults(M0)
    }
    .check();
}

#[test]
fn semihosting_microbit_soft_float_defaults_bit_exact() {
    Case::defaults(M0).check();
}

/// Every hook as int8, a short prompt with repeats, 4 generated tokens, run 9.
fn all_hooks_int8(triple: &str, uart: bool) -> Case<'_> {
    Case {
        triple,
        uart,
        args: &["probe=*:int8", "tokens=0,7,7,7,2", "generate=4", "run=9"],
        prompt: &[0, 7, 7, 7, 2],
        generate: 4,
        probes: &["*:int8"],
        run_id: 9,
    }
}

#[test]
fn semihosting_microbit_soft_float_all_hooks_int8_bit_exact() {
    all_hooks_int8(M0, false).check();
}

#[test]
fn uart_mps2_an386() {
    Case {
        uart: true,
        ..Case::defaults(M4)
    }
    .check();
}

#[test]
fn uart_netduinoplus2() {
    Case {
        uart: true,
        ..Case::defaults(STM32)
    }
    .check();
}

#[test]
fn uart_netduinoplus2_all_hooks_int8() {
    all_hooks_int8(STM32, true).check();
}

#[test]
fn uart_microbit() {
    Case {
        uart: true,
        ..Case::defaults(M0)
    }
    .check();
}

/// `drain=tick`: the SysTick handler drains the ring to the UART, 16 bytes every 2048
/// instructions, while the model writes frames from the main loop (the interrupt lands
/// inside frames being encoded; steps wait with `wfi` when the ring is full): the
/// trace is still the host's, bit for bit.
#[test]
fn uart_mps2_an386_drain_from_systick_interrupt() {
    Case {
        uart: true,
        args: &["drain=tick"],
        ..Case::defaults(M4)
    }
    .check();
}

/// The same on the Cortex-M0 (ARMv6-M: no atomic read-modify-write; the ring needs only
/// atomic loads and stores).
#[test]
fn uart_microbit_drain_from_systick_interrupt() {
    Case {
        uart: true,
        args: &["drain=tick"],
        ..Case::defaults(M0)
    }
    .check();
}

#[test]
fn semihosting_mps2_an505() {
    assert_links_kernel(M33, "dsp");
    Case::defaults(M33).check();
}

#[test]
fn semihosting_mps2_an505_all_hooks_int8() {
    all_hooks_int8(M33, false).check();
}

/// The M0 firmware built with a GPTQ-calibrated int4 blob of the attn1_ln fixture embedded
/// (`tinylens convert --quant int4 --calibrate repeated`, by
/// `firmware-examples/build-calibrated.sh`; scripts/test.sh runs it before the tests):
/// its trace of every hook is the host's on that blob, bit for bit. The blob is checked
/// to be int4 and to differ from round-to-nearest int4 (the calibration changed the
/// stored values; the kernels did not change).
#[test]
fn semihosting_microbit_calibrated_int4_blob_bit_exact() {
    let (blob_path, elf) = calibrated_build("attn1_ln-int4-calibrated.tlm", M0);
    let blob = std::fs::read(&blob_path).unwrap();
    let model = Model::from_bytes(&blob).unwrap();
    let kinds: Vec<_> = (0..model.tensor_count())
        .map(|i| model.tensor_at(i).kind)
        .collect();
    assert!(
        kinds.contains(&tinylens_core::StorageKind::INT4),
        "not an int4 blob: {kinds:?}"
    );
    let fixture = tinylens_tests::fixture("attn1_ln");
    let w = tinylens_host::tl::load_files(
        &fixture.join("model.safetensors"),
        &fixture.join("config.json"),
    )
    .unwrap();
    let nearest = tinylens_host::convert::write_blob(
        &w,
        tinylens_host::convert::QuantPlan::for_kind(tinylens_core::StorageKind::INT4),
        tinylens_host::tl::Processing::NONE,
        None,
    )
    .unwrap()
    .0;
    assert_eq!(nearest.len(), blob.len(), "same kinds, same layout");
    assert_ne!(
        nearest, blob,
        "the calibrated blob is round-to-nearest int4"
    );

    let args = ["probe=*", "generate=4"];
    let out = qemu_elf(&elf, None, &args, false);
    assert_eq!(out.status, Some(0), "firmware failed: {}", out.stderr);
    let device = lossless_run(&out.stdout);
    assert_eq!(
        device.model_crc,
        model.checksum(),
        "the ELF embeds another blob"
    );
    let host = run(
        &model,
        &RunOptions {
            tokens: DEFAULT_PROMPT.to_vec(),
            probes: vec!["*".into()],
            trace: true,
            generate: 4,
            run_id: DEFAULT_RUN_ID,
            ..Default::default()
        },
    )
    .expect("host run");
    assert_same_bytes(&out.stdout, &host.trace, "calibrated int4 attn1_ln blob");
    eprintln!(
        "calibrated int4 attn1_ln blob ({} bytes): {} trace bytes, bit-exact, generated {:?}",
        blob.len(),
        out.stdout.len(),
        host.generated
    );
}

/// The blob and ELF `firmware-examples/build-calibrated.sh` makes for `triple` (run
/// here when missing, except under CI).
fn calibrated_build(blob: &str, triple: &str) -> (PathBuf, PathBuf) {
    let dir = examples().join("target/calibrated");
    let (blob_path, elf) = (dir.join(blob), dir.join(triple).join("release/qemu"));
    if !(blob_path.is_file() && elf.is_file()) {
        let how = "firmware-examples/build-calibrated.sh (scripts/test.sh runs it)";
        assert!(!ci(), "{} is missing: {how}", elf.display());
        let mut cmd = Command::new(examples().join("build-calibrated.sh"));
        cmd.arg(tinylens_cli())
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("RUSTFLAGS");
        let out = run_with_watchdog(cmd, Duration::from_secs(900));
        assert_eq!(out.status, Some(0), "{how} failed: {}", out.stderr);
    }
    (blob_path, elf)
}

/// The M4F firmware (DSP kernels) with a calibrated int4 blob of attn1_ln in groups of
/// 16 columns (`convert --quant int4 --int4-group 16`: blob format version 2; W_Q/W_K/
/// W_V rows of 32 columns are two groups, each one step of the DSP int4 kernel): its
/// trace of every hook is the host's on that blob, bit for bit.
#[test]
fn semihosting_mps2_an386_int4_groups_of_16_blob_bit_exact() {
    let (blob_path, elf) = calibrated_build("attn1_ln-int4-g16-calibrated.tlm", M4);
    let blob = std::fs::read(&blob_path).unwrap();
    let model = Model::from_bytes(&blob).unwrap();
    assert_eq!(model.version(), 2, "groups of 16 are format version 2");
    let g16 = tinylens_core::StorageKind::Int4 {
        group: tinylens_core::Int4Group::G16,
    };
    assert_eq!(model.layer(0).w_q.kind, g16);
    let args = ["probe=*", "generate=4"];
    let out = qemu_elf(&elf, None, &args, false);
    assert_eq!(out.status, Some(0), "firmware failed: {}", out.stderr);
    let device = lossless_run(&out.stdout);
    assert_eq!(
        device.model_crc,
        model.checksum(),
        "the ELF embeds another blob"
    );
    let host = run(
        &model,
        &RunOptions {
            tokens: DEFAULT_PROMPT.to_vec(),
            probes: vec!["*".into()],
            trace: true,
            generate: 4,
            run_id: DEFAULT_RUN_ID,
            ..Default::default()
        },
    )
    .expect("host run");
    assert_same_bytes(
        &out.stdout,
        &host.trace,
        "int4/g16 attn1_ln blob on the M4F",
    );
    eprintln!(
        "int4/g16 attn1_ln blob ({} bytes, version 2): {} trace bytes on the M4F, bit-exact, generated {:?}",
        blob.len(),
        out.stdout.len(),
        host.generated
    );
}

#[test]
fn semihosting_mps2_an500() {
    assert_links_kernel(M7, "dsp");
    Case::defaults(M7).check();
}

#[test]
fn semihosting_mps3_an547() {
    assert_links_kernel(M55, "mve");
    Case::defaults(M55).check();
}

#[test]
fn semihosting_mps3_an547_all_hooks_int8() {
    all_hooks_int8(M55, false).check();
}

#[test]
fn semihosting_riscv32_virt() {
    Case::defaults(RV32).check();
}

#[test]
fn uart_riscv32_virt_all_hooks_int8() {
    all_hooks_int8(RV32, true).check();
}

#[test]
fn semihosting_riscv32_virt_kv_int8_all_hooks() {
    kv_int8_all_hooks(RV32).check();
}

#[test]
fn uart_mps2_an500_all_hooks_int8() {
    all_hooks_int8(M7, true).check();
}

/// Frames written from inside the step (no ring) are the same bytes.
#[test]
fn semihosting_mps2_an386_direct_sink() {
    Case {
        args: &["sink=direct"],
        ..Case::defaults(M4)
    }
    .check();
}

/// `overflow=block` with a drain only after the run: every step that finds the ring
/// full waits for the drain (here: drains inline), and nothing is lost.
#[test]
fn semihosting_mps2_an386_ring_block_all_hooks() {
    Case {
        triple: M4,
        uart: false,
        args: &["probe=*", "generate=2", "drain=end", "overflow=block"],
        prompt: &DEFAULT_PROMPT,
        generate: 2,
        probes: &["*"],
        run_id: DEFAULT_RUN_ID,
    }
    .check();
}

/// `overflow=drop` with a ring far too small for the run (every hook, drained only at
/// the end): the device drops whole frames, never a torn one; the end frame still
/// arrives and counts them; the host sees exactly those frames missing and lists
/// their records; every frame that did arrive is the host's, bit for bit.
#[test]
fn uart_mps2_an386_ring_drop_reports_exactly_what_is_missing() {
    let args = ["probe=*", "generate=2", "drain=end", "overflow=drop"];
    let out = qemu_on(M4, &args, true);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    let (mut runs, report) = decode_stream(&out.stdout);
    assert_eq!(report.bad_frames, 0, "a torn or corrupt frame");
    assert_eq!(report.orphan_frames, 0);
    assert_eq!(runs.len(), 1);
    let device = runs.pop().unwrap();
    let loss = &device.loss;
    assert!(loss.end_seen, "the end frame was dropped");
    assert!(
        loss.dropped_on_device > 100,
        "expected most frames dropped, got {}",
        loss.dropped_on_device
    );
    assert_eq!(
        loss.lost_frames, loss.dropped_on_device as usize,
        "frames missing on the host = frames the device dropped"
    );
    let missing_tokens = device.token_list().iter().filter(|t| t.is_none()).count();
    assert_eq!(
        loss.missing_count as usize + missing_tokens,
        loss.dropped_on_device as usize,
        "the missing records and tokens are exactly the dropped frames"
    );

    let (_, blob) = embedded_blob(device.model_crc);
    let model = Model::from_bytes(&blob).unwrap();
    let host = run(
        &model,
        &Case {
            triple: M4,
            uart: true,
            args: &args,
            prompt: &DEFAULT_PROMPT,
            generate: 2,
            probes: &["*"],
            run_id: DEFAULT_RUN_ID,
        }
        .host_options(),
    )
    .expect("host run");
    // Every device frame but the end frame (whose counts differ) is one of the host's
    // frames, in the host's order.
    let host_frames = frames(&host.trace);
    let device_frames = frames(&out.stdout);
    let (end, written) = device_frames.split_last().unwrap();
    let mut end = end.to_vec();
    assert!(matches!(
        tinylens_core::trace::decode_frame(&mut end).map(|f| f.body),
        Ok(tinylens_core::trace::Body::End { .. })
    ));
    let mut at = 0;
    for f in written {
        let found = host_frames[at..].iter().position(|h| h == f);
        let Some(i) = found else {
            panic!("a device frame that is not the host's next frames");
        };
        at += i + 1;
    }
    let (host_runs, _) = decode_stream(&host.trace);
    let expected = &host_runs[0];
    assert_eq!(
        device.records.len() + loss.missing_count as usize,
        expected.records.len()
    );
    for (key, values) in &device.records {
        let want = &expected.records[key];
        assert!(
            values
                .iter()
                .zip(want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{key:?} differs from the host"
        );
    }
}

#[test]
fn semihosting_mps2_an386_record_off_writes_no_trace() {
    let out = qemu(M4, &["record=0"]);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "record=0 wrote to the trace channel");
}

#[test]
fn semihosting_mps2_an386_bad_arguments_fail_with_a_message() {
    let cases: [(&[&str], &str); 8] = [
        (&["generate=many"], "bad argument `generate=many`"),
        (&["tokens=1,x"], "bad argument `tokens=1,x`"),
        (&["probe=blocks.0.attn.hook_nonsense"], "not a hook name"),
        (&["probe=blocks.9.attn.hook_z"], "probe set"),
        (&["generate=1000"], "exceed the model's context"),
        (&["tokens=100000"], "out of range"),
        (&["colour=blue"], "unknown argument `colour=blue`"),
        (
            &["sink=direct", "drain=tick"],
            "does not go with sink=direct",
        ),
    ];
    for (args, message) in cases {
        let out = qemu(M4, args);
        assert_eq!(out.status, Some(1), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("firmware error: ") && out.stderr.contains(message),
            "{args:?}: expected `{message}` on stderr, got: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{args:?}: wrote a trace");
    }
}

/// The `tinylens` CLI next to this test binary (`target/<profile>/tinylens`), built
/// when missing (not under CI).
fn tinylens_cli() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/firmware_qemu-<hash>
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let cli = dir.join(format!("tinylens{}", std::env::consts::EXE_SUFFIX));
    if cli.is_file() {
        return cli;
    }
    let how = "cargo build -p tinylens-host --bin tinylens (scripts/test.sh does this)";
    assert!(!ci(), "{} is missing: {how}", cli.display());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root())
        .args(["build", "-p", "tinylens-host", "--bin", "tinylens"]);
    if dir.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    let out = run_with_watchdog(cmd, Duration::from_secs(600));
    assert!(
        out.status == Some(0) && cli.is_file(),
        "building the CLI failed ({how}): {}",
        out.stderr
    );
    cli
}

#[test]
fn semihosting_mps2_an386_decode_cli_reads_the_qemu_pipe() {
    require_tools();
    let elf = firmware(M4);
    let cli = tinylens_cli();
    let dir = scratch("decode");
    let json = dir.join("cache.json");
    let pipeline = format!(
        "set -o pipefail; '{}' --timeout {QEMU_TIMEOUT_S} --no-decode --defmt-out '{}' '{}' | '{}' decode - -o '{}'",
        examples().join("run-qemu.sh").display(),
        dir.join("log.defmt").display(),
        elf.display(),
        cli.display(),
        json.display()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &pipeline]);
    let out = run_with_watchdog(cmd, Duration::from_secs(QEMU_TIMEOUT_S + 15));
    assert_eq!(out.status, Some(0), "{pipeline}: {}", out.stderr);
    assert!(
        out.stderr.contains(
            "0 bad frames, 0 lost frames, 0 duplicates, 0 missing records, 0 dropped on device"
        ) && !out.stderr.contains("end frame missing"),
        "decode report: {}",
        out.stderr
    );
    let decoded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();

    // The same cache from the host run, through the same export.
    let (trace, _, _) = Case::defaults(M4).check();
    let run = lossless_run(&trace);
    let mut cache = run.cache();
    let tokens: Vec<f32> = run.token_list().iter().map(|t| t.unwrap() as f32).collect();
    cache.insert("tokens".into(), (vec![tokens.len()], tokens));
    // Compared as numbers: the CLI and `to_json` may spell a float differently
    // (shortest f32 vs f64 digits), never its value.
    let expected: serde_json::Value =
        serde_json::from_str(&export::to_json(&cache).to_string()).unwrap();
    let (got, want) = (decoded.as_object().unwrap(), expected.as_object().unwrap());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "arrays of `tinylens decode -` of the QEMU pipe"
    );
    let as_f32 = |v: &serde_json::Value| -> Vec<Option<u32>> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().map(|f| (f as f32).to_bits()))
            .collect()
    };
    for (key, g) in got {
        assert_eq!(g["shape"], want[key]["shape"], "{key}: shape");
        assert!(as_f32(g) == as_f32(&want[key]), "{key}: values differ");
    }
    for key in [
        "blocks.0.attn.hook_pattern",
        "blocks.0.attn.hook_result",
        "logits",
    ] {
        assert!(decoded.get(key).is_some(), "{key} missing from the decode");
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::io::stderr().flush().unwrap();
}

// ---------------------------------------------------------------------------
// The English model on the Cortex-M4: text in, text out

/// Where `scripts/test.sh` builds the M4 firmware that embeds the English model (a target
/// directory of its own, under firmware-examples/target/, so the default ELF stays), and
/// the linker's map of it.
const ENGLISH_TARGET_DIR: &str = "target/english";

/// The English firmware's ELF and link map; built when missing (not under CI) the way
/// scripts/test.sh builds them.
fn english_firmware() -> (PathBuf, PathBuf) {
    let dir = examples().join(ENGLISH_TARGET_DIR);
    let elf = dir.join(M4).join("release").join("qemu");
    let map = dir.join("qemu.map");
    if elf.is_file() && map.is_file() {
        return (elf, map);
    }
    let how = format!(
        "cd firmware-examples && TINYLENS_MODEL=../models/english/english-int8.tlm \
         CARGO_TARGET_THUMBV7EM_NONE_EABIHF_RUSTFLAGS=\"-C link-arg=-Map=$PWD/{ENGLISH_TARGET_DIR}/qemu.map\" \
         cargo build --release -p tinylens-fw-qemu --target {M4} --target-dir {ENGLISH_TARGET_DIR} \
         (scripts/test.sh does this)"
    );
    assert!(!ci(), "{} is missing: {how}", elf.display());
    eprintln!("building the English firmware: {how}");
    std::fs::create_dir_all(&dir).unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(examples())
        .args([
            "build",
            "--release",
            "-p",
            "tinylens-fw-qemu",
            "--target",
            M4,
        ])
        .args(["--target-dir", ENGLISH_TARGET_DIR])
        .env("TINYLENS_MODEL", "../models/english/english-int8.tlm")
        .env(
            "CARGO_TARGET_THUMBV7EM_NONE_EABIHF_RUSTFLAGS",
            format!("-C link-arg=-Map={}", map.display()),
        )
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS");
    let out = run_with_watchdog(cmd, Duration::from_secs(900));
    assert!(
        out.status == Some(0) && elf.is_file() && map.is_file(),
        "building the English firmware failed ({how}): {}",
        out.stderr
    );
    (elf, map)
}

/// Sizes from an lld link map (`-Map=`): of the output section `.name` (a line of 5
/// fields: VMA LMA Size Align Out), or of the input section that defines `symbol`
/// (its Size column).
struct LinkMap(String);

impl LinkMap {
    fn size_of(line: &str) -> Option<u64> {
        u64::from_str_radix(line.split_whitespace().nth(2)?, 16).ok()
    }

    fn section(&self, name: &str) -> u64 {
        self.0
            .lines()
            .find(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 5 && f[4] == name
            })
            .and_then(Self::size_of)
            .unwrap_or(0)
    }

    /// The largest input section whose symbol's name contains `part` (`MODEL_BLOB` also
    /// names the slice that points at the bytes).
    fn symbol(&self, part: &str) -> u64 {
        let lines: Vec<&str> = self.0.lines().collect();
        // A symbol's line follows its input section's, which carries the size.
        (1..lines.len())
            .filter(|&i| {
                lines[i]
                    .split_whitespace()
                    .nth(4)
                    .is_some_and(|s| s.contains(part))
            })
            .filter_map(|i| Self::size_of(lines[i - 1]))
            .max()
            .unwrap_or_else(|| panic!("{part} not in the link map"))
    }
}

/// The prompt of the English firmware case: a name, then its first word again.
const ENGLISH_PROMPT: &str = "Mr Rossum wrote the parser. The tests were written by Mr";
const ENGLISH_GENERATE: usize = 6;

#[test]
fn semihosting_mps2_an386_english_text_in_text_out_bit_exact() {
    let (elf, map) = english_firmware();
    let path = repo_root().join("models/english/english-int8.tlm");
    let file = std::fs::read(&path).unwrap();
    let model = Model::from_bytes(&file).unwrap();
    let device_len = model.as_bytes().len();
    let tok = tinylens_host::tokenizer::for_blob(&file, None)
        .unwrap()
        .expect("the English blob carries its tokenizer");

    // The flash and RAM the linker gave it: the blob without its host-only trailer (the
    // tokenizer is not linked), the workspace `Config::workspace_len` says.
    let map = LinkMap(std::fs::read_to_string(&map).unwrap());
    let blob_in_flash = map.symbol("MODEL_BLOB");
    assert_eq!(
        blob_in_flash,
        device_len.next_multiple_of(16) as u64,
        "MODEL_BLOB (16-byte aligned) is the device part of the blob"
    );
    assert!(
        (device_len as u64) < file.len() as u64,
        "the blob file has a trailer"
    );
    // The firmware's one `static` of working memory (workspace, frame buffer, trace ring).
    let workspace = model.config().workspace_len() as u64 * 4;
    let memory = map.symbol("MEMORY");
    assert!(
        memory >= workspace,
        "MEMORY {memory} B < workspace {workspace} B"
    );
    let flash: u64 = [".vector_table", ".text", ".rodata", ".data"]
        .iter()
        .map(|s| map.section(s))
        .sum();
    let ram: u64 = [".data", ".bss", ".uninit"]
        .iter()
        .map(|s| map.section(s))
        .sum();
    eprintln!(
        "English firmware (link map): flash {flash} B (blob {blob_in_flash} B of the file's {} B), \
         static RAM {ram} B (MEMORY {memory} B, of which workspace {workspace} B)",
        file.len()
    );
    assert!(flash <= 1 << 20, "flash {flash} B > 1 MiB");
    assert!(workspace <= 200 << 10, "workspace {workspace} B > 200 KiB");
    assert!(ram <= 256 << 10, "static RAM {ram} B > 256 KiB");

    // Text in: the host tokenizes, the device runs the ids.
    let prompt = tinylens_host::prompts::text_tokens(&tok, ENGLISH_PROMPT, true, &model).unwrap();
    let ids: Vec<String> = prompt.iter().map(u32::to_string).collect();
    let tokens_arg = format!("tokens={}", ids.join(","));
    let generate_arg = format!("generate={ENGLISH_GENERATE}");
    let args = [
        tokens_arg.as_str(),
        generate_arg.as_str(),
        "probe=blocks.*.attn.hook_pattern",
        "probe=logits",
        "run=13",
    ];
    let start = Instant::now();
    let out = qemu_elf(&elf, None, &args, false);
    let elapsed = start.elapsed();
    assert_eq!(
        out.status,
        Some(0),
        "English firmware failed: {}",
        out.stderr
    );
    let device = lossless_run(&out.stdout);
    assert_eq!(device.model_crc, model.checksum());
    let host = run(
        &model,
        &RunOptions {
            tokens: prompt.clone(),
            probes: vec!["blocks.*.attn.hook_pattern".into(), "logits".into()],
            trace: true,
            generate: ENGLISH_GENERATE,
            run_id: 13,
            ..Default::default()
        },
    )
    .unwrap();
    assert_same_bytes(&out.stdout, &host.trace, "English model on the M4");

    // Text out: the device's tokens, decoded on the host.
    let tokens: Vec<u32> = device
        .token_list()
        .into_iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(tokens, host.tokens);
    let text = tok.decode_text(&tokens).unwrap();
    assert!(text.starts_with(ENGLISH_PROMPT), "{text:?}");
    assert!(text.len() > ENGLISH_PROMPT.len(), "{text:?}");
    eprintln!(
        "English on the M4: {ENGLISH_PROMPT:?} -> {:?} ({} bytes of trace, QEMU {elapsed:?})",
        &text[ENGLISH_PROMPT.len()..],
        out.stdout.len()
    );
}
