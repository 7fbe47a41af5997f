//! tinylens example firmware for the Raspberry Pi Pico (RP2040, Cortex-M0+ at 125 MHz)
//! with `rp2040-hal`.
//!
//! Runs the embedded model with the compiled-in settings (`tinylens_fw::Settings::
//! defaults`) once after reset, on core 0:
//!
//! - busy pin: GP25 (the Pico's LED), high during each model step; the defmt log gives
//!   each step's time from the 1 MHz system timer (the M0+ has no cycle counter);
//! - trace: frames are encoded into a 16 KiB `FrameRing` during the step; between
//!   steps the main loop drains the ring to UART0 TX (GP0, Pico pin 1) at 1 Mbaud 8N1
//!   through the HAL's embedded-io 0.7 writer (a USB-serial adapter, or the Debug
//!   Probe's UART bridge, on the host side);
//! - defmt log: RTT up-channel 0 (rtt-target), read by `probe-rs run`.
//!
//! The embedded model is chosen by `../fw/build.rs` (for thumbv6m the small attn1_ln
//! fixture unless `TINYLENS_MODEL` names another: the RP2040's 264 KiB of RAM take the
//! demo model too). The same trace as `tinylens run` on the host, bit for bit (the QEMU
//! microbit tests run this core's code on a Cortex-M0, soft-float like the RP2040).
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use embedded_io::Write as _;
use rp2040_hal::{
    clocks::init_clocks_and_plls,
    fugit::RateExtU32,
    gpio::Pins,
    pac,
    sio::Sio,
    uart::{DataBits, StopBits, UartConfig, UartPeripheral},
    watchdog::Watchdog,
    Clock as _, Timer,
};
use rtt_target::{rtt_init, ChannelMode};
use tinylens_core::trace::FrameRing;
use tinylens_fw::{Clock, Settings, Stepper, FRAME_BUFFER_LEN, MODEL_BLOB, WORKSPACE_WORDS};

/// The second-stage bootloader for the Pico's W25Q080 flash, in the first 256 bytes.
#[link_section = ".boot2"]
#[used]
pub static BOOT2: [u8; 256] = rp2040_boot2::BOOT_LOADER_W25Q080;

/// The Pico's crystal.
const XOSC_HZ: u32 = 12_000_000;
/// Pause between steps, so that the busy pulses are easy to tell apart.
const GAP_US: u32 = 100;
/// Bytes of the trace ring: several steps of the default probes.
const TRACE_RING: usize = 16 * 1024;

/// The 64-bit system timer's low word, at 1 MHz.
struct TimerClock(Timer);

impl Clock for TimerClock {
    fn now(&mut self) -> u32 {
        self.0.get_counter_low()
    }
    fn hz(&self) -> u32 {
        1_000_000
    }
}

#[entry]
fn main() -> ! {
    // cortex-m-rt turns `static mut` in the entry function into `&'static mut`.
    static mut WORKSPACE: [f32; WORKSPACE_WORDS] = [0.0; WORKSPACE_WORDS];
    static mut FRAME_BUF: [u8; FRAME_BUFFER_LEN] = [0; FRAME_BUFFER_LEN];
    static mut RING: FrameRing<TRACE_RING> = FrameRing::new();

    let channels = rtt_init! {
        up: {
            0: { size: 1024, mode: ChannelMode::NoBlockSkip, name: "defmt" }
        }
    };
    rtt_target::set_defmt_channel(channels.up.0);

    let mut p = pac::Peripherals::take().unwrap();
    let mut watchdog = Watchdog::new(p.WATCHDOG);
    let clocks = init_clocks_and_plls(
        XOSC_HZ,
        p.XOSC,
        p.CLOCKS,
        p.PLL_SYS,
        p.PLL_USB,
        &mut p.RESETS,
        &mut watchdog,
    )
    .unwrap_or_else(|_| panic!("clock initialisation"));
    let sio = Sio::new(p.SIO);
    let pins = Pins::new(p.IO_BANK0, p.PADS_BANK0, sio.gpio_bank0, &mut p.RESETS);
    let busy = pins.gpio25.into_push_pull_output();
    let mut uart = UartPeripheral::new(
        p.UART0,
        (pins.gpio0.into_function(), pins.gpio1.into_function()),
        &mut p.RESETS,
    )
    .enable(
        UartConfig::new(1_000_000.Hz(), DataBits::Eight, None, StopBits::One),
        clocks.peripheral_clock.freq(),
    )
    .unwrap_or_else(|_| panic!("UART0 configuration"));
    let timer = Timer::new(p.TIMER, &mut p.RESETS, &clocks);
    let mut stepper = Stepper::new(busy, timer, TimerClock(timer), GAP_US);

    // Frames go into the ring during a step; between steps (and when a step finds it
    // full) the main loop drains it to the UART (tinylens_fw::run_with_ring).
    let result = tinylens_fw::run_with_ring(
        RING,
        MODEL_BLOB,
        WORKSPACE,
        FRAME_BUF,
        &Settings::defaults(),
        &mut stepper,
        |bytes| uart.write_all(bytes),
    );
    if let Err(e) = result {
        defmt::error!("{}", e);
    }
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("{}", defmt::Display2Format(info));
    cortex_m::asm::udf()
}
