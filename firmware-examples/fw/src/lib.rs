//! Board-independent pieces of the tinylens example firmware.
//!
//! Everything here is generic over the `embedded-hal` 1.0 traits, so the QEMU
//! example (`qemu` binary) and the board example (`board` binary) share it, and it
//! builds for both `thumbv7em-none-eabihf` (Cortex-M4F/M7) and `thumbv6m-none-eabi`
//! (Cortex-M0/M0+, no FPU).
//!
//! What the model-running firmware slots in:
//! - [`MODEL_BLOB`]: the model blob chosen at build time (`TINYLENS_MODEL=path`),
//!   16-byte aligned, `&'static [u8]` as `tinylens_core::Model::from_bytes` wants it;
//!   [`MODEL_BYTES`] is the same bytes as a `const` for compile-time parsing.
//! - [`WORKSPACE_WORDS`]: size of the static `f32` workspace.
//! - [`Stepper`]: wraps each model step with the busy pin and the instruction-count
//!   markers (see `scripts/qemu/icount.c`).
//! - [`TraceSink`]: where trace bytes go (semihosting stdout in QEMU, a UART on a board).
#![no_std]

pub use embedded_hal;
pub use tinylens_core;

use core::ptr::{addr_of, addr_of_mut};
use embedded_hal::{delay::DelayNs, digital::OutputPin};

/// Wrapper that raises the alignment of its contents (model blobs hold `f32`/`f16`
/// tensors that the core may view in place).
#[repr(C, align(16))]
pub struct Aligned<T: ?Sized>(pub T);

/// The model blob as a `const` (for `const fn` parsing of the config at compile time,
/// e.g. the workspace size). Not aligned: at run time use [`MODEL_BLOB`].
pub const MODEL_BYTES: &[u8] = include_bytes!(env!("TINYLENS_FW_MODEL_PATH"));

static MODEL_ALIGNED: Aligned<[u8; MODEL_BYTES.len()]> =
    Aligned(*include_bytes!(env!("TINYLENS_FW_MODEL_PATH")));

/// The model blob embedded in flash, 16-byte aligned. Empty when the firmware was
/// built without `TINYLENS_MODEL`.
pub static MODEL_BLOB: &[u8] = &MODEL_ALIGNED.0;

/// Size of the inference workspace in `f32` words.
///
/// Placeholder until the core exposes its `const fn` sizing; then this becomes
/// `tinylens_core::<workspace size fn>(MODEL_BYTES)` so that a model that does not fit
/// fails at compile time. Kept small enough for a 16 KiB-RAM Cortex-M0 (QEMU microbit).
pub const WORKSPACE_WORDS: usize = 1024;

/// A byte channel for trace frames (COBS frames from the core's tracer).
///
/// Implemented by each binary for its channel; once the core's sink trait lands,
/// the binaries implement that one on the same types.
pub trait TraceSink {
    /// Writes all of `bytes` or reports that the channel is gone.
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), SinkError>;
}

/// The trace channel failed (host closed it, UART error...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, defmt::Format)]
pub struct SinkError;

// ---------------------------------------------------------------------------
// Instruction-count markers

/// Marker id written before a step.
pub const MARK_STEP_BEGIN: u32 = 1;
/// Marker id written after a step.
pub const MARK_STEP_END: u32 = 2;

/// Number of times [`tinylens_icount_mark`] ran. Its own address also keeps the
/// marker function unique, so that LLVM cannot merge it with another function.
#[no_mangle]
static mut TINYLENS_ICOUNT_MARKS: u32 = 0;
/// Id passed to the latest [`tinylens_icount_mark`] call (for a debugger).
#[no_mangle]
static mut TINYLENS_ICOUNT_LAST_MARK: u32 = 0;

/// Instruction-count marker. The QEMU plugin `scripts/qemu/icount.c`, given this
/// function's address (`run-qemu.sh --icount` looks it up in the ELF), records the
/// running count of executed guest instructions each time it is entered. On a real
/// board it costs a few cycles. `id` is for the reader of the disassembly and a
/// debugger; the plugin numbers the marks in order.
#[inline(never)]
#[no_mangle]
pub extern "C" fn tinylens_icount_mark(id: u32) {
    // SAFETY: single-core firmware; volatile accesses to plain `u32` statics.
    unsafe {
        let n = addr_of!(TINYLENS_ICOUNT_MARKS).read_volatile();
        addr_of_mut!(TINYLENS_ICOUNT_MARKS).write_volatile(n.wrapping_add(1));
        addr_of_mut!(TINYLENS_ICOUNT_LAST_MARK).write_volatile(id);
    }
}

/// How many markers have run so far.
pub fn icount_marks() -> u32 {
    // SAFETY: see `tinylens_icount_mark`.
    unsafe { addr_of!(TINYLENS_ICOUNT_MARKS).read_volatile() }
}

// ---------------------------------------------------------------------------
// Per-step instrumentation

/// Runs model steps with a busy pin high during each step (for a logic analyser or
/// scope: the pulse width is the step's latency) and instruction-count markers just
/// inside the pulse, then an optional pause between steps.
pub struct Stepper<P, D> {
    busy: P,
    delay: D,
    gap_us: u32,
    steps: u32,
}

impl<P: OutputPin, D: DelayNs> Stepper<P, D> {
    /// `busy` is driven low now; `gap_us` microseconds of `delay` follow each step.
    pub fn new(mut busy: P, delay: D, gap_us: u32) -> Self {
        // GPIO writes are infallible on the HALs in use; a failing pin only loses timing.
        let _ = busy.set_low();
        Self {
            busy,
            delay,
            gap_us,
            steps: 0,
        }
    }

    /// Runs `step` (e.g. `|| session.step(token)`) between the busy-pin edges and the
    /// instruction-count markers, and returns what it returned.
    #[inline(always)]
    pub fn step<T, E>(&mut self, step: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let _ = self.busy.set_high();
        tinylens_icount_mark(MARK_STEP_BEGIN);
        let out = step();
        tinylens_icount_mark(MARK_STEP_END);
        let _ = self.busy.set_low();
        self.steps = self.steps.wrapping_add(1);
        if self.gap_us > 0 {
            self.delay.delay_us(self.gap_us);
        }
        out
    }

    /// Steps run so far.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// Gives the pin and the delay back.
    pub fn release(self) -> (P, D) {
        (self.busy, self.delay)
    }
}

/// An `OutputPin` that goes nowhere (QEMU, or a board without a spare pin).
pub struct NoPin;

impl embedded_hal::digital::ErrorType for NoPin {
    type Error = core::convert::Infallible;
}

impl OutputPin for NoPin {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A `DelayNs` that does nothing (QEMU: pauses only add instructions).
pub struct NoDelay;

impl DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}

// ---------------------------------------------------------------------------
// Placeholder run (until the core's session API is in)

/// The skeleton run both binaries share: logs the blob and workspace sizes, writes
/// every byte value 0x00..=0xFF once to the trace channel (the host checks that the
/// channel is binary-clean), then runs `steps` placeholder steps through `stepper`.
///
/// The model firmware replaces the body with, roughly:
/// ```ignore
/// let model = tinylens_core::Model::from_bytes(MODEL_BLOB)?;
/// let mut session = tinylens_core::Session::new(&model, ws)?;
/// for &token in tokens {
///     let logits = stepper.step(|| session.step(token))?;
///     // trace frames go to `trace` through the core's sink trait
/// }
/// ```
pub fn run_demo<P: OutputPin, D: DelayNs, S: TraceSink>(
    stepper: &mut Stepper<P, D>,
    ws: &mut [f32],
    trace: &mut S,
    steps: usize,
) -> Result<(), SinkError> {
    defmt::info!(
        "tinylens firmware: model blob {=usize} bytes, workspace {=usize} f32",
        MODEL_BLOB.len(),
        ws.len()
    );
    let mut pattern = [0u8; 256];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = i as u8;
    }
    trace.write_all(&pattern)?;

    let mut token = 1u32;
    for i in 0..steps {
        let out = stepper.step(|| Ok::<_, core::convert::Infallible>(placeholder_step(ws, token)));
        let Ok(out) = out;
        defmt::info!("step {=usize}: token {=u32} -> {=f32}", i, token, out);
        token = token.wrapping_mul(31).wrapping_add(7) % 1000;
    }
    defmt::info!(
        "done: {=u32} steps, {=u32} icount marks",
        stepper.steps(),
        icount_marks()
    );
    Ok(())
}

/// Stand-in for `session.step(token)` (see [`run_demo`]): a fixed amount of float work over the workspace that depends on `token` and on the
/// previous steps (like a KV cache would), returning a checksum of the "logits".
/// Its instruction count grows linearly with `ws.len()`, which the QEMU run uses to
/// check the instruction counter.
pub fn placeholder_step(ws: &mut [f32], token: u32) -> f32 {
    let t = (token % 97) as f32 * (1.0 / 97.0);
    let mut acc = 0.0f32;
    for (i, w) in ws.iter_mut().enumerate() {
        let x = (i % 31) as f32 * (1.0 / 31.0);
        *w = *w * 0.5 + x * t;
        acc += *w * x;
    }
    acc
}
