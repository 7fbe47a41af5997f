//! tinylens example firmware for QEMU: `mps2-an386` (Cortex-M4F, thumbv7em-none-eabihf)
//! or `microbit` (Cortex-M0, thumbv6m-none-eabi). Run it with `../run-qemu.sh`.
//!
//! Channels (all semihosting, `-semihosting-config enable=on,target=native`):
//! - **trace** (binary, COBS frames from the core's tracer): the host's **stdout**
//!   (`:tt` opened for writing), or the host file given as `trace=PATH`.
//!   QEMU writes these bytes unchanged, 0x00..=0xFF included.
//! - **defmt log** (binary defmt frames): the host file given as `defmt=PATH`
//!   (`run-qemu.sh` passes a temporary file and runs `defmt-print` on it), else stderr.
//! - **panic / fault text** (human-readable): the host's **stderr**.
//!
//! Arguments come as `key=value` words on the semihosting command line
//! (`-semihosting-config enable=on,target=native,arg=qemu,arg=defmt=/tmp/x.defmt`):
//! `defmt=PATH`, `trace=PATH`, `steps=N` (placeholder steps to run, default 8).
//!
//! Exit status: 0 after a normal run; 1 after a panic, a HardFault or an unexpected
//! interrupt (semihosting `SYS_EXIT`, so QEMU never hangs on a fault).
#![no_std]
#![no_main]

mod logger;
mod semihost;

use core::fmt::Write as _;
use cortex_m_rt::{entry, exception, ExceptionFrame};
use semihost::HostFile;
use tinylens_fw::{run_demo, NoDelay, NoPin, Stepper, WORKSPACE_WORDS};

#[entry]
fn main() -> ! {
    // cortex-m-rt turns `static mut` in the entry function into a `&'static mut`
    // (placed in .bss, never on the stack).
    static mut WORKSPACE: [f32; WORKSPACE_WORDS] = [0.0; WORKSPACE_WORDS];
    let ws: &'static mut [f32; WORKSPACE_WORDS] = WORKSPACE;

    let mut line = [0u8; 512];
    let args = semihost::cmdline(&mut line).unwrap_or("");

    let log = match semihost::arg(args, "defmt") {
        Some(path) => HostFile::create(path),
        None => HostFile::stderr(),
    };
    if let Some(log) = log {
        logger::init(log);
    }
    let mut trace = match semihost::arg(args, "trace") {
        Some(path) => HostFile::create(path),
        None => HostFile::stdout(),
    }
    .unwrap_or_else(|| panic!("cannot open the trace channel"));
    let steps: usize = semihost::arg(args, "steps")
        .and_then(|n| n.parse().ok())
        .unwrap_or(8);

    demo_failure(steps);

    let mut stepper = Stepper::new(NoPin, NoDelay, 0);
    if run_demo(&mut stepper, ws, &mut trace, steps).is_err() {
        panic!("trace channel write failed");
    }
    semihost::exit(true)
}

/// Deliberate failures, to check the failure paths (features `demo-panic`,
/// `demo-hardfault`); does nothing in a normal build.
fn demo_failure(steps: usize) {
    let _ = steps;
    #[cfg(feature = "demo-panic")]
    panic!("demo-panic: deliberate panic ({} steps requested)", steps);
    #[cfg(feature = "demo-hardfault")]
    cortex_m::asm::udf();
}

/// Prints the panic message on the host's stderr (stdout carries the trace, the
/// defmt file the log) and ends QEMU with failure.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    cortex_m::interrupt::disable();
    if let Some(mut err) = HostFile::stderr() {
        let _ = writeln!(err, "firmware {info}");
    }
    semihost::exit(false)
}

#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    if let Some(mut err) = HostFile::stderr() {
        let _ = writeln!(
            err,
            "firmware HardFault: pc={:#010x} lr={:#010x} xpsr={:#010x}",
            ef.pc(),
            ef.lr(),
            ef.xpsr()
        );
    }
    semihost::exit(false)
}

#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    if let Some(mut err) = HostFile::stderr() {
        let _ = writeln!(err, "firmware: unexpected exception/interrupt {irqn}");
    }
    semihost::exit(false)
}
