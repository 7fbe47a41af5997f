//! tinylens example firmware for an ESP32-C3 board (ESP32-C3-DevKitM-1: RISC-V
//! RV32IMC at 160 MHz, 400 KiB SRAM, no FPU: soft-float, the same bits as every other
//! target) with `esp-hal`.
//!
//! Runs the embedded model with the compiled-in settings (`tinylens_fw::Settings::
//! defaults`) once after reset:
//!
//! - busy pin: GPIO2, high during each model step; the defmt log gives each step's
//!   time from esp-hal's 1 MHz system timer;
//! - trace: frames are encoded into a 16 KiB `FrameRing` during the step; between
//!   steps the main loop drains the ring to UART0 TX (GPIO21, the DevKit's USB-serial
//!   bridge: `/dev/ttyUSB0`) at 1 Mbaud 8N1 (`tinylens_fw::run_with_ring`, the loop of
//!   the RP2040 and STM32F4 examples). The ROM bootloader prints its banner on the same
//!   UART at 115200 baud first: `tinylens decode --follow` skips it as garbage;
//! - defmt log: RTT up-channel 0 (rtt-target), read by `probe-rs run` through the
//!   chip's USB-JTAG.
//!
//! The embedded model is chosen by `../fw/build.rs` (the demo model by default; any
//! blob with `TINYLENS_MODEL`). The core runs its portable kernels here (no DSP).
#![no_std]
#![no_main]

use esp_hal::{
    clock::CpuClock,
    gpio::{Level, Output, OutputConfig},
    main,
    time::{Duration, Instant},
    uart::{self, Uart},
};
use rtt_target::{rtt_init, ChannelMode};
use tinylens_core::trace::FrameRing;
use tinylens_fw::embedded_hal::delay::DelayNs;
use tinylens_fw::{Clock, Settings, Stepper, FRAME_BUFFER_LEN, MODEL_BLOB, WORKSPACE_WORDS};

// The application descriptor the second-stage bootloader checks before it starts us.
esp_bootloader_esp_idf::esp_app_desc!();

/// Pause between steps, so that the busy pulses are easy to tell apart.
const GAP_US: u32 = 100;
/// Bytes of the trace ring: several steps of the default probes.
const TRACE_RING: usize = 16 * 1024;

// In .bss, sized for the embedded model at compile time. (esp-hal's `#[main]` has no
// `static mut` to `&'static mut` rewrite like cortex-m-rt's `#[entry]`.)
static mut WORKSPACE: [f32; WORKSPACE_WORDS] = [0.0; WORKSPACE_WORDS];
static mut FRAME_BUF: [u8; FRAME_BUFFER_LEN] = [0; FRAME_BUFFER_LEN];
static mut RING: FrameRing<TRACE_RING> = FrameRing::new();

/// esp-hal's system timer, in microseconds.
struct TimerClock;

impl Clock for TimerClock {
    fn now(&mut self) -> u32 {
        Instant::now().duration_since_epoch().as_micros() as u32
    }
    fn hz(&self) -> u32 {
        1_000_000
    }
}

/// Busy-waits on the system timer (esp-hal's `Delay` needs its `unstable` feature).
struct TimerDelay;

impl DelayNs for TimerDelay {
    fn delay_ns(&mut self, ns: u32) {
        let start = Instant::now();
        let wait = Duration::from_micros(ns.div_ceil(1000) as u64);
        while start.elapsed() < wait {}
    }
}

#[main]
fn main() -> ! {
    let channels = rtt_init! {
        up: {
            0: { size: 1024, mode: ChannelMode::NoBlockSkip, name: "defmt" }
        }
    };
    rtt_target::set_defmt_channel(channels.up.0);

    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    let busy = Output::new(peripherals.GPIO2, Level::Low, OutputConfig::default());
    let mut uart = Uart::new(
        peripherals.UART0,
        uart::Config::default().with_baudrate(1_000_000),
    )
    .unwrap_or_else(|_| panic!("UART0 configuration"))
    .with_tx(peripherals.GPIO21);
    let mut stepper = Stepper::new(busy, TimerDelay, TimerClock, GAP_US);

    // SAFETY: `main` runs once and never returns, and nothing else names these
    // statics: these are their only references.
    let (workspace, frame_buf, ring) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(WORKSPACE),
            &mut *core::ptr::addr_of_mut!(FRAME_BUF),
            &mut *core::ptr::addr_of_mut!(RING),
        )
    };
    let result = tinylens_fw::run_with_ring(
        ring,
        MODEL_BLOB,
        workspace,
        frame_buf,
        &Settings::defaults(),
        &mut stepper,
        |mut bytes: &[u8]| {
            // esp-hal's stable `write` fills the TX FIFO (at least one byte, waiting for
            // room): the embedded-io impls need its `unstable` feature.
            while !bytes.is_empty() {
                let n = uart.write(bytes)?;
                bytes = &bytes[n..];
            }
            Ok::<_, uart::TxError>(())
        },
    );
    if let Err(e) = result {
        defmt::error!("{}", e);
    }
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("{}", defmt::Display2Format(info));
    loop {
        core::hint::spin_loop();
    }
}
