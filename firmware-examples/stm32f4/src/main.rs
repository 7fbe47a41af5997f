//! tinylens example firmware for an STM32F4 board: Nucleo-F411RE (Cortex-M4F,
//! 100 MHz from the 16 MHz HSI), with `stm32f4xx-hal`.
//!
//! Runs the embedded model with the compiled-in settings (`tinylens_fw::Settings::
//! defaults`) once after reset:
//!
//! - busy pin: PA5 (the Nucleo's green LED LD2, also on the Arduino header D13), high
//!   during each model step; the defmt log gives each step's DWT cycle count;
//! - trace: frames are encoded into a 16 KiB `FrameRing` during the step and leave
//!   through USART2 TX (PA2) at 1 Mbaud 8N1, which the Nucleo routes to the ST-LINK
//!   virtual COM port (`/dev/ttyACM0`). With `DRAIN_FROM_INTERRUPT` (the default) the
//!   USART2 transmit-empty interrupt drains the ring while the model runs: every frame
//!   the recorder commits pends the interrupt (`tinylens_fw::Notify`), the handler
//!   writes bytes while the data register is empty and keeps the TXE interrupt on
//!   until the ring is empty; a step that finds the ring full sleeps (`wfi`) until the
//!   handler made room. Without it, the main loop drains the ring between steps
//!   (`tinylens_fw::run_with_ring`, the RP2040 example's loop) through the HAL's
//!   embedded-io 0.6 `Tx` writer;
//! - defmt log: RTT up-channel 0 (rtt-target), read by `probe-rs run`.
//!
//! The same trace as `tinylens run` on the host, bit for bit (the QEMU netduinoplus2
//! test runs this core's code on the STM32F405 memory map).
#![no_std]
#![no_main]

use core::cell::RefCell;

use cortex_m::peripheral::{DWT, NVIC};
use cortex_m_rt::entry;
use critical_section::Mutex;
use rtt_target::{rtt_init, ChannelMode};
use stm32f4xx_hal::{
    pac::{self, interrupt, Interrupt},
    prelude::*,
    rcc::Config,
    serial::{Tx, TxListen},
};
use tinylens_core::trace::{FrameRing, RingReader};
use tinylens_fw::{
    Clock, Notify, Settings, Stepper, FRAME_BUFFER_LEN, MODEL_BLOB, WORKSPACE_WORDS,
};

/// Core clock.
const CORE_HZ: u32 = 100_000_000;
/// Pause between steps, so that the busy pulses are easy to tell apart.
const GAP_US: u32 = 100;
/// Bytes of the trace ring: several steps of the default probes (~2 KB a step).
const TRACE_RING: usize = 16 * 1024;
/// `true`: the USART2 interrupt drains the ring during the steps; `false`: the main
/// loop drains it between steps.
const DRAIN_FROM_INTERRUPT: bool = true;

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

/// What the USART2 handler drains: the ring's reader and the transmitter, moved here
/// before the interrupt is unmasked; only the handler touches them afterwards.
struct IsrDrain {
    tx: Tx<pac::USART2>,
    reader: RingReader<'static, TRACE_RING>,
}

static DRAIN: Mutex<RefCell<Option<IsrDrain>>> = Mutex::new(RefCell::new(None));

/// USART2: pended after every committed frame, then raised by the transmit-empty flag
/// while there are bytes to send.
#[interrupt]
fn USART2() {
    critical_section::with(|cs| {
        if let Some(IsrDrain { tx, reader }) = DRAIN.borrow_ref_mut(cs).as_mut() {
            // Writes while the data register is empty (`write` returns 0 when not).
            reader.drain(|bytes| embedded_io_06::Write::write(tx, bytes).unwrap_or(0));
            // Transmit-empty interrupts while bytes remain; none when all is sent (the
            // next frame pends the interrupt again).
            if reader.is_empty() {
                tx.unlisten();
            } else {
                tx.listen();
            }
        }
    });
}

/// Starts the drain: runs the handler now.
fn kick() {
    NVIC::pend(Interrupt::USART2);
}

/// Whether the handler has sent everything committed so far.
fn drained() -> bool {
    critical_section::with(|cs| {
        DRAIN
            .borrow_ref(cs)
            .as_ref()
            .is_none_or(|d| d.reader.is_empty())
    })
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
    let settings = Settings::defaults();

    let result = if DRAIN_FROM_INTERRUPT {
        let (writer, reader) = RING.split();
        critical_section::with(|cs| DRAIN.borrow(cs).replace(Some(IsrDrain { tx, reader })));
        // SAFETY: unmasking can break a critical section that relies on the interrupt
        // being masked; none is in progress here, and the handler reaches its state
        // only through `DRAIN`'s critical section.
        unsafe { NVIC::unmask(Interrupt::USART2) };
        // Policy block: a step whose frames do not fit sleeps until the handler made
        // room (`writer.dropping()` drops whole frames instead, counted in the end frame).
        let sink = Notify {
            sink: writer.blocking(|| {
                kick();
                cortex_m::asm::wfi();
            }),
            notify: kick,
        };
        let result = tinylens_fw::run(
            MODEL_BLOB,
            WORKSPACE,
            FRAME_BUF,
            &settings,
            &mut stepper,
            sink,
            || {},
        );
        while !drained() {
            cortex_m::asm::wfi();
        }
        result
    } else {
        tinylens_fw::run_with_ring(
            RING,
            MODEL_BLOB,
            WORKSPACE,
            FRAME_BUF,
            &settings,
            &mut stepper,
            |bytes| embedded_io_06::Write::write_all(&mut tx, bytes),
        )
    };
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
