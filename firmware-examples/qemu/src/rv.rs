//! The RISC-V side of the QEMU example (`riscv32imac-unknown-none-elf`, QEMU `virt`
//! with `-bios none`): what cortex-m-rt, cortex-m and cortex-m-semihosting give the
//! Cortex-M builds, in the few lines a single-hart machine-mode program needs:
//!
//! - `_start` (the ELF entry, where QEMU jumps): the stack pointer, .bss cleared, the
//!   trap vector, then [`main`]. QEMU loads the ELF's segments where they are linked
//!   (code and data in RAM, `link-riscv32-virt.x`), so .data needs no copy;
//! - the semihosting trap: `slli x0, x0, 0x1f; ebreak; srai x0, x0, 7`, uncompressed
//!   (the RISC-V semihosting spec), with the Arm semihosting call numbers;
//! - a trap handler that reports `mcause`/`mepc` and ends QEMU with failure (as the
//!   Cortex-M HardFault handler does);
//! - the clock: the `time` CSR, at the `virt` machine's 10 MHz timebase;
//! - `critical-section` for the logger: one hart and no interrupt ever enabled, so
//!   nothing can preempt a section; acquire and release are compiler fences.
//!
//! Inline assembly is `unsafe`; each block says what it touches.

use core::arch::{asm, global_asm};
use core::fmt::Write as _;
use core::sync::atomic::{compiler_fence, Ordering};

use tinylens_fw::Clock;

use crate::semihost::HostFile;

/// The `virt` machine's timebase (its device tree's `timebase-frequency`).
pub const TIMEBASE_HZ: u32 = 10_000_000;

/// Semihosting operation numbers (the Arm semihosting spec, shared by RISC-V).
pub mod nr {
    pub const OPEN: usize = 0x01;
    pub const WRITE: usize = 0x05;
    pub const GET_CMDLINE: usize = 0x15;
    pub const REPORT_EXCEPTION: usize = 0x18;
    /// `fopen` modes of `SYS_OPEN`.
    pub mod open {
        pub const W_TRUNC: usize = 4;
        pub const W_TRUNC_BINARY: usize = 5;
        pub const W_APPEND: usize = 8;
    }
}

global_asm!(
    ".section .text.start, \"ax\"",
    ".global _start",
    "_start:",
    ".option push",
    ".option norelax",
    "la sp, _stack_top",
    ".option pop",
    "la t0, _sbss",
    "la t1, _ebss",
    "1:",
    "bgeu t0, t1, 2f",
    "sw zero, 0(t0)",
    "addi t0, t0, 4",
    "j 1b",
    "2:",
    "la t0, tinylens_trap_entry",
    "csrw mtvec, t0",
    "call {main}",
    "3:",
    "j 3b",
    main = sym main,
);

global_asm!(
    ".section .text.trap, \"ax\"",
    ".balign 4",
    ".global tinylens_trap_entry",
    "tinylens_trap_entry:",
    "csrr a0, mcause",
    "csrr a1, mepc",
    "j {handler}",
    handler = sym trap_handler,
);

/// Called once by `_start`: hands the run its memory.
extern "C" fn main() -> ! {
    static mut MEMORY: crate::Memory = crate::Memory::new();
    // SAFETY: `_start` calls `main` once and nothing else names MEMORY, so this is
    // the only reference ever made to it.
    let memory = unsafe { &mut *core::ptr::addr_of_mut!(MEMORY) };
    crate::run(memory)
}

/// Any trap (this firmware enables no interrupt, so an exception: an illegal
/// instruction, a misaligned or faulting access).
extern "C" fn trap_handler(mcause: u32, mepc: u32) -> ! {
    if let Some(mut err) = HostFile::stderr() {
        let _ = writeln!(
            err,
            "firmware trap: mcause={mcause:#010x} mepc={mepc:#010x}"
        );
    }
    crate::semihost::exit(false)
}

/// Semihosting call `op` with `arg` (a parameter block's address, or a value).
///
/// # Safety
/// `arg` must be what the call expects (see `semihost.rs`).
pub unsafe fn syscall1(op: usize, arg: usize) -> usize {
    let mut r = op;
    // SAFETY: the host reads and writes only what the block describes (the caller's
    // guarantee); the three instructions must be uncompressed and adjacent.
    unsafe {
        asm!(
            ".balign 16",
            ".option push",
            ".option norvc",
            "slli x0, x0, 0x1f",
            "ebreak",
            "srai x0, x0, 7",
            ".option pop",
            inout("a0") r,
            in("a1") arg,
            options(nostack),
        );
    }
    r
}

/// The stack pointer now.
pub fn stack_pointer() -> u32 {
    let sp: u32;
    // SAFETY: reads a register.
    unsafe { asm!("mv {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    sp
}

/// Stops the hart for good.
pub fn halt() -> ! {
    loop {
        // SAFETY: waits for an interrupt that never comes (none is enabled).
        unsafe { asm!("wfi", options(nomem, nostack)) };
    }
}

/// The low 32 bits of the `time` CSR (a free-running counter at [`TIMEBASE_HZ`]).
pub struct TimeClock;

impl Clock for TimeClock {
    fn now(&mut self) -> u32 {
        let t: u32;
        // SAFETY: reads a CSR.
        unsafe { asm!("rdtime {}", out(reg) t, options(nomem, nostack)) };
        t
    }
    fn elapsed(&self, start: u32, end: u32) -> u32 {
        end.wrapping_sub(start)
    }
    fn hz(&self) -> u32 {
        TIMEBASE_HZ
    }
}

struct SingleHart;
critical_section::set_impl!(SingleHart);

// SAFETY: one hart, and this firmware never enables an interrupt: no code can run
// between acquire and release but the section's own. The fences keep the compiler from
// moving the section's memory accesses out of it.
unsafe impl critical_section::Impl for SingleHart {
    unsafe fn acquire() -> critical_section::RawRestoreState {
        compiler_fence(Ordering::SeqCst);
    }
    unsafe fn release(_: critical_section::RawRestoreState) {
        compiler_fence(Ordering::SeqCst);
    }
}
