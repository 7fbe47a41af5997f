//! tinylens example firmware for QEMU. Run it with `../run-qemu.sh`. The build script
//! picks the machine from the target (or `TINYLENS_QEMU_MACHINE`):
//!
//! | target | machine | core | memory |
//! |---|---|---|---|
//! | `thumbv7em-none-eabihf` | `mps2-an386` | Cortex-M4F | 4 MiB code at 0, 4 MiB RAM at 0x2000_0000 |
//! | `thumbv7em-none-eabi` | `netduinoplus2` | STM32F405 (M4, soft-float ABI) | 1 MiB flash at 0x0800_0000, 128 KiB SRAM |
//! | `thumbv6m-none-eabi` | `microbit` | nRF51822 (Cortex-M0) | 256 KiB flash, 16 KiB RAM |
//! | `thumbv8m.main-none-eabihf` | `mps2-an505` | Cortex-M33 (Secure) | 4 MiB SSRAM1 at 0x1000_0000, 4 MiB SSRAM2/3 at 0x3800_0000 |
//! | `thumbv8m.main-none-eabihf`, `target-cpu=cortex-m55` | `mps3-an547` | Cortex-M55 + Helium (Secure) | 512 KiB ITCM at 0x1000_0000, 512 KiB DTCM at 0x3000_0000 |
//!
//! The `thumbv7em-none-eabihf` build also runs on `mps2-an500` (Cortex-M7, the same
//! memory map and UART): `run-qemu.sh --machine mps2-an500`.
//!
//! Runs the embedded model (see `tinylens_fw`): the prompt, then greedy generation
//! with the KV cache, recording the probe set as trace frames. The recorder writes
//! into a [`FrameRing`] (`sink=ring`, the default), which the main loop drains to the
//! transport between steps (`drain=steps`), only after the run (`drain=end`), or from
//! the SysTick interrupt (`drain=tick`: every [`TICK_PERIOD`] core cycles the handler
//! moves at most [`BYTES_PER_TICK`] bytes, like a UART at a fixed baud rate, while the
//! model runs; under `-icount shift=0` the interrupts land at the same instructions
//! every run, in the middle of frames being encoded); when the ring is full the step
//! waits for the drain (`overflow=block`, the default; `wfi` with `drain=tick`) or
//! drops whole frames and counts them in the end frame (`overflow=drop`).
//! `sink=direct` writes every frame to the transport from inside the step instead.
//!
//! Channels (semihosting, `-semihosting-config enable=on,target=native`, unless said):
//! - **trace** (binary COBS frames from the core's recorder): with `transport=uart`, the
//!   machine's UART (see `uart.rs`; QEMU's `-serial file:PATH`); otherwise the host's
//!   **stdout** (`:tt` opened for writing), or the host file given as `trace=PATH`.
//!   QEMU writes these bytes unchanged, 0x00..=0xFF included.
//! - **defmt log** (binary defmt frames: progress, per-step timings): the host file
//!   given as `defmt=PATH` (`run-qemu.sh` passes a FIFO read by `defmt-print`), else
//!   stderr.
//! - **errors, panic and fault text** (human-readable): the host's **stderr**.
//!
//! Arguments come as `key=value` words on the semihosting command line
//! (`-semihosting-config enable=on,target=native,arg=qemu,arg=tokens=0,,1,,2`; the
//! first word is the program name): `tokens=1,2,3`, `generate=N`, `probe=PATTERN`
//! (repeatable), `run=ID`, `record=0` (see `tinylens_fw::Settings::apply`), and
//! `defmt=PATH`, `trace=PATH`, `transport=semihosting|uart`, `sink=ring|direct`,
//! `overflow=block|drop`, `drain=steps|end|tick`.
//!
//! Exit status: 0 after a normal run; 1 after a bad argument, a model that does not
//! fit, a panic, a HardFault or an unexpected interrupt (semihosting `SYS_EXIT`, so
//! QEMU never hangs on a failure).
#![no_std]
#![no_main]

mod logger;
#[cfg(target_arch = "riscv32")]
mod rv;
mod semihost;
mod uart;

use core::cell::{Cell, RefCell};
use core::fmt::{self, Write as _};
use core::sync::atomic::{AtomicU32, Ordering};

#[cfg(target_arch = "arm")]
use cortex_m::peripheral::{syst::SystClkSource, SYST};
#[cfg(target_arch = "arm")]
use cortex_m_rt::{entry, exception, ExceptionFrame};
use critical_section::Mutex;
use semihost::HostFile;
use tinylens_core::trace::{FrameRing, RingReader};
use tinylens_core::Error;
#[cfg(target_arch = "arm")]
use tinylens_fw::Clock;
use tinylens_fw::{
    NoDelay, NoPin, RingSink, Settings, Stepper, TraceSink, FRAME_BUFFER_LEN, MODEL_BLOB,
    WORKSPACE_WORDS,
};
use uart::Uart;

/// RAM of the emulated machine (see the memory-*.x files) and where it starts.
const RAM_BYTES: usize = if cfg!(microbit) {
    16 * 1024
} else if cfg!(netduinoplus2) {
    128 * 1024
} else if cfg!(mps3_an547) {
    512 * 1024
} else {
    4 * 1024 * 1024
};
const RAM_START: u32 = if cfg!(riscv_virt) {
    0x8040_0000
} else if cfg!(mps3_an547) {
    0x3000_0000
} else if cfg!(mps2_an505) {
    0x3800_0000
} else {
    0x2000_0000
};
/// Bytes of the trace ring: a few steps of the default probes (about 2 KB a step with
/// the demo model), so that `overflow=drop` with `drain=steps` never drops.
const TRACE_RING: usize = if cfg!(microbit) { 2048 } else { 8192 };
/// RAM left for the stack, the logger and the other statics.
const STACK_RESERVE: usize = 6 * 1024;
const _: () = assert!(
    WORKSPACE_WORDS * 4 + FRAME_BUFFER_LEN + TRACE_RING + STACK_RESERVE <= RAM_BYTES,
    "the embedded model needs more working memory than this machine's RAM \
     (see `tinylens info MODEL`; pick a smaller model with TINYLENS_MODEL)"
);
/// `drain=tick`: SysTick period in core cycles (under `-icount shift=0`, instructions)
/// and the most bytes its handler moves to the transport a tick: 16 bytes every 2048
/// cycles, about 1.3 KB over a step of the demo model, less than the ~2 KB its default
/// probes write, so that steps also wait for the drain.
#[cfg_attr(target_arch = "riscv32", allow(dead_code))]
const TICK_PERIOD: u32 = 2048;
#[cfg_attr(target_arch = "riscv32", allow(dead_code))]
const BYTES_PER_TICK: usize = 16;
/// Longest semihosting command line.
const CMDLINE_LEN: usize = 1024;
/// Core clock of the emulated machine (QEMU: mps2 25 MHz, nRF51 16 MHz). Under
/// `-icount shift=0` one instruction takes 1 ns of emulated time, so these "µs" are
/// about a thousandth of the instruction count, not a hardware latency.
#[cfg(target_arch = "arm")]
const CORE_HZ: u32 = if cfg!(microbit) {
    16_000_000
} else if cfg!(netduinoplus2) {
    168_000_000
} else if cfg!(mps2_an505) {
    20_000_000
} else if cfg!(mps3_an547) {
    32_000_000
} else {
    25_000_000
};

/// Where trace bytes leave the chip.
enum Transport {
    Semihosting(HostFile),
    Uart(Uart),
}

impl Transport {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Error> {
        match self {
            Transport::Semihosting(f) => f.write_all(bytes).map_err(|_| Error::SinkFailed),
            Transport::Uart(u) => {
                u.write_all(bytes);
                Ok(())
            }
        }
    }
}

/// How frames reach the transport (`sink=`, `overflow=`, `drain=` arguments).
#[derive(Clone, Copy, PartialEq)]
struct Path {
    ring: bool,
    drop_when_full: bool,
    drain: Drain,
}

/// When the ring is drained to the transport (`drain=`).
#[derive(Clone, Copy, PartialEq)]
enum Drain {
    /// By the main loop after every step (and when a step finds the ring full).
    Steps,
    /// By the main loop after the run only.
    End,
    /// By the SysTick handler, [`BYTES_PER_TICK`] at most a tick, during the steps.
    Tick,
}

/// What the SysTick handler drains with `drain=tick`: the ring's reader and the
/// transport, moved here (out of `main`) before the interrupt is enabled; only the
/// handler touches them afterwards.
#[cfg_attr(target_arch = "riscv32", allow(dead_code))]
struct TickDrain {
    reader: RingReader<'static, TRACE_RING>,
    transport: Transport,
}

static TICK_DRAIN: Mutex<RefCell<Option<TickDrain>>> = Mutex::new(RefCell::new(None));
/// SysTick interrupts so far (`drain=tick`; the clock counts on from them). Plain load
/// and store: only the handler writes it, and ARMv6-M has no atomic read-modify-write.
static TICKS: AtomicU32 = AtomicU32::new(0);

#[cfg(target_arch = "arm")]
#[exception]
fn SysTick() {
    TICKS.store(
        TICKS.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
    critical_section::with(|cs| {
        if let Some(TickDrain { reader, transport }) = TICK_DRAIN.borrow_ref_mut(cs).as_mut() {
            let mut budget = BYTES_PER_TICK;
            reader.drain(|bytes| {
                let n = bytes.len().min(budget);
                if transport.write_all(&bytes[..n]).is_err() {
                    return 0;
                }
                budget -= n;
                n
            });
        }
    });
}

/// Whether the SysTick handler has sent everything committed so far.
fn tick_drain_empty() -> bool {
    critical_section::with(|cs| {
        TICK_DRAIN
            .borrow_ref(cs)
            .as_ref()
            .is_none_or(|d| d.reader.is_empty())
    })
}

/// The working memory of a run (in .bss, never on the stack).
struct Memory {
    workspace: [f32; WORKSPACE_WORDS],
    frame_buf: [u8; FRAME_BUFFER_LEN],
    ring: FrameRing<TRACE_RING>,
}

impl Memory {
    const fn new() -> Self {
        Memory {
            workspace: [0.0; WORKSPACE_WORDS],
            frame_buf: [0; FRAME_BUFFER_LEN],
            ring: FrameRing::new(),
        }
    }
}

#[cfg(target_arch = "arm")]
#[entry]
fn main() -> ! {
    // cortex-m-rt turns `static mut` in the entry function into `&'static mut`
    // (in .bss, never on the stack): no `unsafe` needed.
    static mut MEMORY: Memory = Memory::new();
    run(MEMORY)
}

/// Reads the arguments, runs the model and ends QEMU with its status.
fn run(memory: &'static mut Memory) -> ! {
    let Memory {
        workspace,
        frame_buf,
        ring,
    } = memory;

    let mut line = [0u8; CMDLINE_LEN];
    let Some(args) = semihost::cmdline(&mut line) else {
        fail(format_args!(
            "cannot read the semihosting command line (longer than {CMDLINE_LEN} bytes?)"
        ))
    };
    // The first word is the program name.
    let words = || args.split(' ').filter(|w| !w.is_empty()).skip(1);
    let value =
        |key: &str| words().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')));

    let log = match value("defmt") {
        Some(path) => HostFile::create(path),
        None => HostFile::stderr(),
    };
    if let Some(log) = log {
        logger::init(log);
    }
    let mut path = Path {
        ring: true,
        drop_when_full: false,
        drain: Drain::Steps,
    };
    let mut uart = false;
    let mut settings = Settings::defaults();
    for word in words() {
        let Some((key, val)) = word.split_once('=') else {
            fail(format_args!(
                "bad argument `{word}`: expected key=value (tokens=, generate=, probe=, run=, record=, kv=, trace=, defmt=, transport=, sink=, overflow=, drain=)"
            ))
        };
        let choice = |a: &str, b: &str| {
            if val == a {
                true
            } else if val == b {
                false
            } else {
                fail(format_args!(
                    "bad argument `{word}`: expected {key}={a} or {key}={b}"
                ))
            }
        };
        match key {
            "defmt" | "trace" => {}
            "transport" => uart = !choice("semihosting", "uart"),
            "sink" => path.ring = choice("ring", "direct"),
            "overflow" => path.drop_when_full = !choice("block", "drop"),
            "drain" => {
                path.drain = match val {
                    "steps" => Drain::Steps,
                    "end" => Drain::End,
                    "tick" => Drain::Tick,
                    _ => fail(format_args!(
                        "bad argument `{word}`: expected drain=steps, drain=end or drain=tick"
                    )),
                }
            }
            _ => match settings.apply(key, val) {
                Ok(true) => {}
                Ok(false) => fail(format_args!(
                    "unknown argument `{word}` (known: tokens=, generate=, probe=, run=, record=, kv=, trace=, defmt=, transport=, sink=, overflow=, drain=)"
                )),
                Err(e) => fail(e),
            },
        }
    }

    let tick = path.drain == Drain::Tick;
    if tick && !path.ring {
        fail("drain=tick drains the ring: it does not go with sink=direct");
    }
    if tick && cfg!(target_arch = "riscv32") {
        fail("drain=tick drains the ring from SysTick: Cortex-M only");
    }

    demo_failure();

    let transport = if uart {
        Transport::Uart(Uart::take())
    } else {
        Transport::Semihosting(
            match value("trace") {
                Some(path) => HostFile::create(path),
                None => HostFile::stdout(),
            }
            .unwrap_or_else(|| fail("cannot open the trace channel")),
        )
    };

    // The lowest stack pointer seen at a frame write (the deepest point of a step)
    // goes to the log.
    let low_sp = Cell::new(u32::MAX);
    let see_sp = || low_sp.set(low_sp.get().min(stack_pointer()));
    let (writer, reader) = ring.split();
    let (mut reader, mut transport) = (Some(reader), Some(transport));
    if tick {
        // The handler owns reader and transport from here on (taken before the
        // interrupt can fire).
        let d = TickDrain {
            reader: reader.take().unwrap_or_else(|| fail("no reader")),
            transport: transport.take().unwrap_or_else(|| fail("no transport")),
        };
        critical_section::with(|cs| TICK_DRAIN.borrow(cs).replace(Some(d)));
    }
    #[cfg(target_arch = "arm")]
    let clock = {
        let mut core = cortex_m::Peripherals::take().unwrap_or_else(|| fail("peripherals taken"));
        SysTickClock::start(&mut core.SYST, tick)
    };
    #[cfg(target_arch = "riscv32")]
    let clock = rv::TimeClock;
    let mut stepper = Stepper::new(NoPin, NoDelay, clock, 0);
    // Otherwise the reader is shared by the drain between steps and, with
    // `overflow=block`, the wait of a step that found the ring full: never at the
    // same time.
    let reader = RefCell::new(reader);
    let transport = RefCell::new(transport);
    let drain = || {
        if let (Some(r), Some(t)) = (&mut *reader.borrow_mut(), &mut *transport.borrow_mut()) {
            let _ = r.drain_all(|bytes| t.write_all(bytes));
        }
    };
    // With `drain=tick`, how often a step waited for the handler.
    let waits = Cell::new(0u32);
    // One sink type for every path, so that the firmware holds one copy of the traced
    // forward pass (two copies would each inline less of it).
    let sink = if !path.ring {
        // Every trace frame is one write to the transport, inside the step.
        TraceSink::Direct(|frame: &[u8]| {
            see_sp();
            match &mut *transport.borrow_mut() {
                Some(t) => t.write_all(frame),
                None => Err(Error::SinkFailed),
            }
        })
    } else if path.drop_when_full {
        TraceSink::Ring(RingSink::Drop(writer.dropping()))
    } else {
        TraceSink::Ring(RingSink::Block(writer.blocking(|| {
            see_sp();
            if tick {
                // Sleeps until the next SysTick has drained some bytes.
                waits.set(waits.get() + 1);
                wait_for_interrupt();
            } else {
                drain()
            }
        })))
    };
    let result = tinylens_fw::run(
        MODEL_BLOB,
        workspace,
        frame_buf,
        &settings,
        &mut stepper,
        sink,
        || {
            if path.drain == Drain::Steps {
                drain()
            }
        },
    );
    // `drain=end`: everything left goes now (and a failed run's frames too);
    // `drain=tick`: the handler sends the rest.
    drain();
    if tick {
        while !tick_drain_empty() {
            wait_for_interrupt();
        }
        defmt::info!(
            "drain=tick: {=u32} SysTick interrupts, steps waited {=u32} times for the drain",
            TICKS.load(Ordering::Relaxed),
            waits.get()
        );
    }
    match result {
        Ok(_) => {
            if low_sp.get() != u32::MAX {
                let top = RAM_START + RAM_BYTES as u32;
                defmt::info!(
                    "stack: at least {=u32} bytes used (lowest sp {=u32:#010x}); RAM {=usize} bytes",
                    top - low_sp.get(),
                    low_sp.get(),
                    RAM_BYTES
                );
            }
            semihost::exit(true)
        }
        Err(e) => fail(e),
    }
}

/// The stack pointer now.
#[cfg(target_arch = "arm")]
fn stack_pointer() -> u32 {
    cortex_m::register::msp::read()
}
#[cfg(target_arch = "riscv32")]
use rv::stack_pointer;

/// Stops the core for good (after a semihosting exit that returned).
#[cfg(target_arch = "arm")]
fn halt() -> ! {
    cortex_m::asm::udf()
}
#[cfg(target_arch = "riscv32")]
use rv::halt;

/// Sleeps until an interrupt (`drain=tick`, Cortex-M only).
fn wait_for_interrupt() {
    #[cfg(target_arch = "arm")]
    cortex_m::asm::wfi();
    #[cfg(target_arch = "riscv32")]
    core::hint::spin_loop();
}

/// SysTick at the core clock: a free-running 24-bit down-counter (no interrupt), or
/// with `drain=tick` an interrupt every [`TICK_PERIOD`] cycles, counted in [`TICKS`].
#[cfg(target_arch = "arm")]
struct SysTickClock {
    tick: bool,
}

#[cfg(target_arch = "arm")]
impl SysTickClock {
    fn start(syst: &mut SYST, tick: bool) -> Self {
        syst.set_clock_source(SystClkSource::Core);
        syst.set_reload(if tick { TICK_PERIOD - 1 } else { 0x00FF_FFFF });
        syst.clear_current();
        if tick {
            syst.enable_interrupt();
        }
        syst.enable_counter();
        SysTickClock { tick }
    }
}

#[cfg(target_arch = "arm")]
impl Clock for SysTickClock {
    fn now(&mut self) -> u32 {
        if !self.tick {
            return SYST::get_current();
        }
        // Cycles since start: ticks counted so far, plus the current count. A tick
        // between the two readings shows as a changed count: read again.
        loop {
            let ticks = TICKS.load(Ordering::Relaxed);
            let current = SYST::get_current();
            if TICKS.load(Ordering::Relaxed) == ticks {
                return ticks
                    .wrapping_mul(TICK_PERIOD)
                    .wrapping_add(TICK_PERIOD - 1 - current);
            }
        }
    }
    fn elapsed(&self, start: u32, end: u32) -> u32 {
        if self.tick {
            end.wrapping_sub(start)
        } else {
            start.wrapping_sub(end) & 0x00FF_FFFF
        }
    }
    fn hz(&self) -> u32 {
        CORE_HZ
    }
}

/// Reports `msg` on the host's stderr (and the defmt log) and ends QEMU with failure.
fn fail(msg: impl fmt::Display) -> ! {
    defmt::error!("{}", defmt::Display2Format(&msg));
    if let Some(mut err) = HostFile::stderr() {
        let _ = writeln!(err, "firmware error: {msg}");
    }
    semihost::exit(false)
}

/// Deliberate failures, to check the failure paths (features `demo-panic`,
/// `demo-hardfault`); does nothing in a normal build.
fn demo_failure() {
    #[cfg(feature = "demo-panic")]
    panic!("demo-panic: deliberate panic");
    #[cfg(feature = "demo-hardfault")]
    halt();
}

/// Prints the panic message on the host's stderr (stdout carries the trace, the
/// defmt file the log) and ends QEMU with failure.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    #[cfg(target_arch = "arm")]
    cortex_m::interrupt::disable();
    if let Some(mut err) = HostFile::stderr() {
        let _ = writeln!(err, "firmware {info}");
    }
    semihost::exit(false)
}

// cortex-m-rt requires exception handlers to be `unsafe fn`.
#[cfg(target_arch = "arm")]
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

#[cfg(target_arch = "arm")]
#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    if let Some(mut err) = HostFile::stderr() {
        let _ = writeln!(err, "firmware: unexpected exception/interrupt {irqn}");
    }
    semihost::exit(false)
}
