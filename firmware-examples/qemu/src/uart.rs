//! Polled transmit-only drivers for the real UART of each emulated machine, so that the
//! trace can leave through the same registers as on hardware (QEMU captures them with
//! `-serial file:PATH` or `-serial pty`):
//!
//! - `mps2-an386` (Cortex-M4F): CMSDK APB UART0 at `0x4000_4000`
//!   (`DATA` +0x00, `STATE` +0x04 with `TXFULL` = bit 0, `CTRL` +0x08 with `TX_EN` = bit 0,
//!   `BAUDDIV` +0x10, at least 16);
//! - `netduinoplus2` (STM32F405): USART1 at `0x4001_1000` (`SR` +0x00 with `TXE` = bit 7,
//!   `DR` +0x04, `BRR` +0x08, `CR1` +0x0C with `UE` = bit 13, `TE` = bit 3);
//! - `microbit` (nRF51822, Cortex-M0): UART0 at `0x4000_2000` (`TASKS_STARTTX` +0x008,
//!   `EVENTS_TXDRDY` +0x11C, `ENABLE` +0x500 = 4, `PSELTXD` +0x50C, `TXD` +0x51C,
//!   `BAUDRATE` +0x524);
//! - `virt` (RISC-V): the NS16550A at `0x1000_0000` (byte registers: `THR` +0, `LSR` +5
//!   with `THRE` = bit 5); QEMU's needs no set-up (8N1 after reset).
//!
//! QEMU's UARTs have no baud timing: a byte is "sent" as soon as it is written. The
//! register sequences are those of the reference manuals, so the same code runs on
//! the silicon (at the baud rate the divisor gives).
//!
//! This is the firmware's driver module: register access through raw pointers is
//! `unsafe`; every access is a volatile read or write of a register of the machine this
//! build is for (the build script sets the cfg), with no other side effects.

use core::ptr::{read_volatile, write_volatile};

/// A memory-mapped 32-bit register at `base + offset`.
#[derive(Clone, Copy)]
#[cfg_attr(riscv_virt, allow(dead_code))]
struct Reg(usize);

#[cfg_attr(riscv_virt, allow(dead_code))]
impl Reg {
    fn read(self) -> u32 {
        // SAFETY: `self.0` is a register address of this machine's UART (see above),
        // word-aligned; reading it has no side effect the driver does not expect.
        unsafe { read_volatile(self.0 as *const u32) }
    }
    fn write(self, v: u32) {
        // SAFETY: as for `read`; the driver owns the UART (one `Uart` per program).
        unsafe { write_volatile(self.0 as *mut u32, v) }
    }
}

/// The machine's trace UART, transmit only.
pub struct Uart {
    _private: (),
}

#[cfg(not(any(microbit, netduinoplus2, riscv_virt)))]
mod regs {
    //! CMSDK APB UART0 of the MPS2 FPGA images.
    use super::Reg;
    const BASE: usize = 0x4000_4000;
    pub const DATA: Reg = Reg(BASE);
    pub const STATE: Reg = Reg(BASE + 0x04);
    pub const CTRL: Reg = Reg(BASE + 0x08);
    pub const BAUDDIV: Reg = Reg(BASE + 0x10);
    pub const TXFULL: u32 = 1 << 0;
    pub const TX_EN: u32 = 1 << 0;
}

#[cfg(netduinoplus2)]
mod regs {
    //! STM32F405 USART1 (RM0090 section 30.6).
    use super::Reg;
    const BASE: usize = 0x4001_1000;
    pub const SR: Reg = Reg(BASE);
    pub const DR: Reg = Reg(BASE + 0x04);
    pub const BRR: Reg = Reg(BASE + 0x08);
    pub const CR1: Reg = Reg(BASE + 0x0C);
    pub const TXE: u32 = 1 << 7;
    pub const UE: u32 = 1 << 13;
    pub const TE: u32 = 1 << 3;
}

#[cfg(riscv_virt)]
mod regs {
    //! NS16550A of QEMU's RISC-V `virt` machine (byte-wide registers).
    const BASE: usize = 0x1000_0000;
    pub const THR: *mut u8 = BASE as *mut u8;
    pub const LSR: *const u8 = (BASE + 5) as *const u8;
    pub const THRE: u8 = 1 << 5;
}

#[cfg(microbit)]
mod regs {
    //! nRF51 UART0 (nRF51 Series Reference Manual, chapter 29).
    use super::Reg;
    const BASE: usize = 0x4000_2000;
    pub const TASKS_STARTTX: Reg = Reg(BASE + 0x008);
    pub const EVENTS_TXDRDY: Reg = Reg(BASE + 0x11C);
    pub const ENABLE: Reg = Reg(BASE + 0x500);
    pub const PSELTXD: Reg = Reg(BASE + 0x50C);
    pub const TXD: Reg = Reg(BASE + 0x51C);
    pub const BAUDRATE: Reg = Reg(BASE + 0x524);
    /// micro:bit edge connector / interface chip TX pin.
    pub const TX_PIN: u32 = 24;
    /// 1 Mbaud.
    pub const BAUD1M: u32 = 0x1000_0000;
}

impl Uart {
    /// Enables the transmitter (8N1). Call once.
    #[cfg(not(any(microbit, netduinoplus2, riscv_virt)))]
    pub fn take() -> Self {
        use regs::*;
        BAUDDIV.write(16); // the smallest divisor: 25 MHz / 16
        CTRL.write(TX_EN);
        Uart { _private: () }
    }

    #[cfg(netduinoplus2)]
    pub fn take() -> Self {
        use regs::*;
        // 16 MHz HSI after reset, oversampling by 16: BRR = 16 MHz / 1 Mbaud.
        BRR.write(0x10);
        CR1.write(UE | TE);
        Uart { _private: () }
    }

    #[cfg(riscv_virt)]
    pub fn take() -> Self {
        Uart { _private: () }
    }

    #[cfg(microbit)]
    pub fn take() -> Self {
        use regs::*;
        PSELTXD.write(TX_PIN);
        BAUDRATE.write(BAUD1M);
        ENABLE.write(4);
        TASKS_STARTTX.write(1);
        // The first byte needs no wait; each later one waits for the previous one.
        EVENTS_TXDRDY.write(1);
        Uart { _private: () }
    }

    /// Sends one byte, waiting for room in the transmitter.
    #[inline]
    pub fn write_byte(&mut self, b: u8) {
        use regs::*;
        #[cfg(riscv_virt)]
        // SAFETY: byte registers of this machine's UART (see `regs`), which the driver
        // owns; volatile accesses with no other side effect.
        unsafe {
            while read_volatile(LSR) & THRE == 0 {}
            write_volatile(THR, b);
        }
        #[cfg(not(any(microbit, netduinoplus2, riscv_virt)))]
        {
            while STATE.read() & TXFULL != 0 {}
            DATA.write(b as u32);
        }
        #[cfg(netduinoplus2)]
        {
            while SR.read() & TXE == 0 {}
            DR.write(b as u32);
        }
        #[cfg(microbit)]
        {
            while EVENTS_TXDRDY.read() == 0 {}
            EVENTS_TXDRDY.write(0);
            TXD.write(b as u32);
        }
    }

    /// Sends all of `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_byte(b);
        }
    }
}

impl embedded_io::ErrorType for Uart {
    type Error = core::convert::Infallible;
}

/// The UART as an embedded-io 0.7 writer (what `tinylens_core::trace::IoSink` takes).
impl embedded_io::Write for Uart {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}
