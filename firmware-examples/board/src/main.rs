//! tinylens example firmware for a real board: nRF52840-DK (Cortex-M4F, 64 MHz).
//!
//! Runs the embedded model with the compiled-in settings (`tinylens_fw::Settings::
//! defaults`: prompt, greedy generation with the KV cache, probe set) once after reset:
//!
//! - busy pin: P0.03 (DK header), high during each model step: a logic analyser or
//!   scope on it measures the per-token latency; the defmt log also gives each step's
//!   cycle count (DWT cycle counter);
//! - trace (binary COBS frames): UARTE0 TX on P0.06 at 1 Mbaud, 8N1 (the DK's
//!   J-Link virtual COM port; `/dev/ttyACM0` on the host), decoded by `tinylens decode`;
//! - defmt log: RTT, read by `probe-rs run` (see `.cargo/config.toml`);
//! - panic: message over defmt, then a HardFault `probe-rs run` reports and exits on.
//!
//! The logic itself lives in `tinylens-fw` and only sees the embedded-hal 1.0
//! `OutputPin` and `DelayNs` traits, a `Clock` and the core's trace `Sink`; porting to
//! another board means replacing the few lines that make those from the HAL.
#![no_std]
#![no_main]

use cortex_m::peripheral::DWT;
use cortex_m_rt::entry;
use defmt_rtt as _;
use nrf52840_hal::{
    clocks::Clocks,
    gpio::{p0, Level},
    pac,
    uarte::{self, Baudrate, Parity, Uarte},
    Delay,
};
use tinylens_core::{trace::Sink, Error};
use tinylens_fw::{Clock, Settings, Stepper, FRAME_BUFFER_LEN, MODEL_BLOB, WORKSPACE_WORDS};

/// Pause between steps, so that the busy pulses are easy to tell apart.
const GAP_US: u32 = 100;
/// Core clock (HFCLK).
const CORE_HZ: u32 = 64_000_000;

/// Trace sink on a UARTE. EasyDMA reads only RAM, so bytes (which may be in flash)
/// go through a small RAM buffer.
struct UarteSink<T: uarte::Instance> {
    uarte: Uarte<T>,
    buf: [u8; 64],
}

impl<T: uarte::Instance> Sink for UarteSink<T> {
    fn write_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        for chunk in frame.chunks(self.buf.len()) {
            let buf = &mut self.buf[..chunk.len()];
            buf.copy_from_slice(chunk);
            self.uarte.write(buf).map_err(|_| Error::SinkFailed)?;
        }
        Ok(())
    }
}

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

#[entry]
fn main() -> ! {
    // cortex-m-rt turns `static mut` in the entry function into `&'static mut`
    // (in .bss, sized for the embedded model at compile time): no `unsafe` needed.
    static mut WORKSPACE: [f32; WORKSPACE_WORDS] = [0.0; WORKSPACE_WORDS];
    static mut FRAME_BUF: [u8; FRAME_BUFFER_LEN] = [0; FRAME_BUFFER_LEN];

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
    let trace = UarteSink {
        uarte: Uarte::new(p.UARTE0, pins, Parity::EXCLUDED, Baudrate::BAUD1M),
        buf: [0; 64],
    };
    let mut stepper = Stepper::new(busy, Delay::new(core.SYST), CycleClock, GAP_US);

    let settings = Settings::defaults();
    let ok = match tinylens_fw::run(
        MODEL_BLOB,
        WORKSPACE,
        FRAME_BUF,
        &settings,
        &mut stepper,
        trace,
        || {},
    ) {
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
