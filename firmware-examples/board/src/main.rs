//! tinylens example firmware for a real board: nRF52840-DK (Cortex-M4F, 64 MHz).
//!
//! Runs the embedded model with the compiled-in settings (`tinylens_fw::Settings::
//! defaults`: prompt, greedy generation with the KV cache, probe set) once after reset:
//!
//! - busy pin: P0.03 (DK header), high during each model step: a logic analyser or
//!   scope on it measures the per-token latency; the defmt log also gives each step's
//!   cycle count (DWT cycle counter);
//! - trace (binary COBS frames): the recorder writes them into a trace ring
//!   (`FrameRing`, 16 KiB of RAM) during the step, so the step never waits for the
//!   UART; between steps the main loop drains the ring to UARTE0 TX on P0.06 at
//!   1 Mbaud, 8N1 (the DK's J-Link virtual COM port; `/dev/ttyACM0` on the host), through
//!   the HAL's embedded-io 0.6 `UarteTx` (EasyDMA from its RAM buffer). With the
//!   feature `trace-rtt`, the drain writes to RTT up-channel 1 (`tinylens-trace`)
//!   instead. A step whose frames do not fit the ring waits for the drain
//!   (`overflow = block`); set `DROP_WHEN_FULL` to drop whole frames instead (counted
//!   in the end frame, listed by `tinylens decode`);
//! - defmt log: RTT up-channel 0, read by `probe-rs run` (see `.cargo/config.toml`);
//! - panic: message over defmt, then a HardFault `probe-rs run` reports and exits on.
//!
//! The logic itself lives in `tinylens-fw` and only sees the embedded-hal 1.0
//! `OutputPin` and `DelayNs` traits, a `Clock` and the core's trace `Sink`; porting to
//! another board means replacing the few lines that make those from the HAL.
#![no_std]
#![no_main]

use core::cell::RefCell;

use cortex_m::peripheral::DWT;
use cortex_m_rt::entry;
use embedded_io_06::Write as _;
use nrf52840_hal::{
    clocks::Clocks,
    gpio::{p0, Level},
    pac,
    uarte::{self, Baudrate, Parity, Uarte},
    Delay,
};
use rtt_target::{rtt_init, ChannelMode};
use tinylens_core::trace::{FrameRing, IoSink06};
use tinylens_fw::{
    Clock, RingSink, Settings, Stepper, TraceSink, FRAME_BUFFER_LEN, MODEL_BLOB, WORKSPACE_WORDS,
};

/// Pause between steps, so that the busy pulses are easy to tell apart.
const GAP_US: u32 = 100;
/// Core clock (HFCLK).
const CORE_HZ: u32 = 64_000_000;
/// Bytes of the trace ring: several steps of the default probes (~2 KB a step).
const TRACE_RING: usize = 16 * 1024;
/// Policy when a step's frames do not fit the ring: `false` waits for the drain,
/// `true` drops whole frames (the model never waits; the end frame counts them).
const DROP_WHEN_FULL: bool = false;
/// `true`: no ring; every frame is written to the UART from inside the step
/// (`IoSink06` over the HAL's embedded-io 0.6 writer), for comparison.
const DIRECT: bool = false;

/// The DWT cycle counter (32 bits at the core clock: wraps after 67 s at 64 MHz).
struct CycleClock;

impl Clock for CycleClock {
    fn now(&mut self) -> u32 {
        DWT::cycle_count()
    }
    fn hz(&self) -> u32 {
        CORE_HZ
    }
}

/// Where the drain sends trace bytes.
enum Transport {
    Uart(uarte::UarteTx<pac::UARTE0>),
    #[cfg_attr(not(feature = "trace-rtt"), allow(dead_code))]
    Rtt(rtt_target::UpChannel),
}

impl Transport {
    /// Sends all of `bytes` (waits for the UART; RTT in `BlockIfFull` mode waits for
    /// the probe).
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), tinylens_core::Error> {
        match self {
            Transport::Uart(tx) => tx
                .write_all(bytes)
                .map_err(|_| tinylens_core::Error::SinkFailed),
            Transport::Rtt(ch) => {
                let mut rest = bytes;
                while !rest.is_empty() {
                    let n = ch.write(rest);
                    rest = &rest[n..];
                }
                Ok(())
            }
        }
    }

    /// Pushes out what the UART driver still buffers.
    fn flush(&mut self) {
        if let Transport::Uart(tx) = self {
            let _ = tx.flush();
        }
    }
}

#[entry]
fn main() -> ! {
    // cortex-m-rt turns `static mut` in the entry function into `&'static mut`
    // (in .bss, sized for the embedded model at compile time): no `unsafe` needed.
    static mut WORKSPACE: [f32; WORKSPACE_WORDS] = [0.0; WORKSPACE_WORDS];
    static mut FRAME_BUF: [u8; FRAME_BUFFER_LEN] = [0; FRAME_BUFFER_LEN];
    static mut RING: FrameRing<TRACE_RING> = FrameRing::new();
    static mut UART_TX_BUF: [u8; 256] = [0; 256];
    static mut UART_RX_BUF: [u8; 1] = [0; 1];

    // RTT: defmt on channel 0, the trace on channel 1 (used with `trace-rtt`).
    let channels = rtt_init! {
        up: {
            0: { size: 1024, mode: ChannelMode::NoBlockSkip, name: "defmt" }
            1: { size: 4096, mode: ChannelMode::BlockIfFull, name: "tinylens-trace" }
        }
    };
    rtt_target::set_defmt_channel(channels.up.0);

    let mut core = pac::CorePeripherals::take().unwrap();
    let p = pac::Peripherals::take().unwrap();
    core.DCB.enable_trace();
    core.DWT.enable_cycle_counter();
    // The crystal oscillator makes the UART baud rate exact.
    let _clocks = Clocks::new(p.CLOCK).enable_ext_hfosc();
    let port0 = p0::Parts::new(p.P0);

    let busy = port0.p0_03.into_push_pull_output(Level::Low);
    let pins = uarte::Pins {
        txd: port0.p0_06.into_push_pull_output(Level::High).degrade(),
        rxd: port0.p0_08.into_floating_input().degrade(),
        cts: None,
        rts: None,
    };
    let uart = Uarte::new(p.UARTE0, pins, Parity::EXCLUDED, Baudrate::BAUD1M);
    let (tx, _rx) = uart
        .split(UART_TX_BUF, UART_RX_BUF)
        .unwrap_or_else(|_| panic!("UARTE buffers"));
    let transport = if cfg!(feature = "trace-rtt") {
        Transport::Rtt(channels.up.1)
    } else {
        Transport::Uart(tx)
    };
    let mut stepper = Stepper::new(busy, Delay::new(core.SYST), CycleClock, GAP_US);

    let (writer, reader) = RING.split();
    // The drain between steps and the wait of a step that found the ring full share
    // the reader and the transport; they never run at the same time.
    let reader = RefCell::new(reader);
    let transport = RefCell::new(transport);
    let drain = || {
        let mut t = transport.borrow_mut();
        let _ = reader.borrow_mut().drain_all(|bytes| t.write_all(bytes));
        t.flush();
    };
    let direct = |frame: &[u8]| match &mut *transport.borrow_mut() {
        Transport::Uart(tx) => {
            use tinylens_core::trace::Sink as _;
            IoSink06(tx).write_frame(frame)
        }
        t => t.write_all(frame),
    };
    let sink = if DIRECT {
        TraceSink::Direct(direct)
    } else if DROP_WHEN_FULL {
        TraceSink::Ring(RingSink::Drop(writer.dropping()))
    } else {
        TraceSink::Ring(RingSink::Block(writer.blocking(drain)))
    };

    let settings = Settings::defaults();
    let result = tinylens_fw::run(
        MODEL_BLOB,
        WORKSPACE,
        FRAME_BUF,
        &settings,
        &mut stepper,
        sink,
        drain,
    );
    drain();
    let ok = match result {
        Ok(_) => true,
        Err(e) => {
            defmt::error!("{}", e);
            false
        }
    };
    finish(ok)
}

/// Ends a run: under a debugger (probe-rs) a semihosting exit ends `probe-rs run`
/// with the status; stand-alone, the core sleeps (a semihosting call without a
/// debugger would fault).
fn finish(ok: bool) -> ! {
    if cortex_m::peripheral::DCB::is_debugger_attached() {
        use cortex_m_semihosting::debug;
        debug::exit(if ok {
            debug::EXIT_SUCCESS
        } else {
            debug::EXIT_FAILURE
        });
    }
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("{}", defmt::Display2Format(info));
    // A HardFault: probe-rs prints a backtrace and exits with failure; without a
    // debugger cortex-m-rt's default handler parks the core.
    cortex_m::asm::udf()
}
