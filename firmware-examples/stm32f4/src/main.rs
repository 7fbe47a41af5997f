//! tinylens example firmware for an STM32F4 board: Nucleo-F411RE (Cortex-M4F,
//! 100 MHz from the 16 MHz HSI), with `stm32f4xx-hal`.
//!
//! Runs the embedded model with the compiled-in settings (`tinylens_fw::Settings::
//! defaults`) once after reset:
//!
//! - busy pin: PA5 (the Nucleo's green LED LD2, also on the Arduino header D13), high
//!   during each model step; the defmt log gives each step's DWT cycle count;
//! - trace: frames are encoded into a 16 KiB `FrameRing` during the step; between
//!   steps the main loop drains the ring to USART2 TX (PA2) at 1 Mbaud 8N1, which the
//!   Nucleo routes to the ST-LINK virtual COM port (`/dev/ttyACM0`), through the HAL's
//!   embedded-io 0.6 `Tx` writer;
//! - defmt log: RTT up-channel 0 (rtt-target), read by `probe-rs run`.
//!
//! The same trace as `tinylens run` on the host, bit for bit (the QEMU netduinoplus2
//! test runs this core's code on the STM32F405 memory map).
#![no_std]
#![no_main]

use core::cell::RefCell;

use cortex_m::peripheral::DWT;
use cortex_m_rt::entry;
use rtt_target::{rtt_init, ChannelMode};
use stm32f4xx_hal::{pac, prelude::*, rcc::Config};
use tinylens_core::trace::FrameRing;
use tinylens_fw::{Clock, Settings, Stepper, FRAME_BUFFER_LEN, MODEL_BLOB, WORKSPACE_WORDS};

/// Core clock.
const CORE_HZ: u32 = 100_000_000;
/// Pause between steps, so that the busy pulses are easy to tell apart.
const GAP_US: u32 = 100;
/// Bytes of the trace ring: several steps of the default probes (~2 KB a step).
const TRACE_RING: usize = 16 * 1024;

/// The DWT cycle counter.
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

    let mut cp = cortex_m::Peripherals::take().unwrap();
    let dp = pac::Peripherals::take().unwrap();
    cp.DCB.enable_trace();
    cp.DWT.enable_cycle_counter();
    let mut rcc = dp.RCC.freeze(Config::hsi().sysclk(CORE_HZ.Hz()));
    let gpioa = dp.GPIOA.split(&mut rcc);
    let busy = gpioa.pa5.into_push_pull_output();
    let mut tx = dp
        .USART2
        .tx(gpioa.pa2, 1_000_000.bps(), &mut rcc)
        .unwrap_or_else(|_| panic!("USART2 configuration"));
    let delay = cp.SYST.delay(&rcc.clocks);
    let mut stepper = Stepper::new(busy, delay, CycleClock, GAP_US);

    let (writer, reader) = RING.split();
    let reader = RefCell::new(reader);
    let tx_ref = RefCell::new(&mut tx);
    // Drains the ring to the UART: between steps, and when a step finds it full.
    let drain = || {
        let mut tx = tx_ref.borrow_mut();
        let _ = reader
            .borrow_mut()
            .drain_all(|bytes| embedded_io_06::Write::write_all(&mut **tx, bytes));
        let _ = embedded_io_06::Write::flush(&mut **tx);
    };
    // Policy block: a step whose frames do not fit waits for the drain
    // (`writer.dropping()` drops whole frames instead, counted in the end frame).
    let sink = writer.blocking(drain);
    let result = tinylens_fw::run(
        MODEL_BLOB,
        WORKSPACE,
        FRAME_BUF,
        &Settings::defaults(),
        &mut stepper,
        sink,
        drain,
    );
    drain();
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
