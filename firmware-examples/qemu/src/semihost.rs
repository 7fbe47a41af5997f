//! Semihosting I/O for the QEMU example: host files and the console, the command
//! line QEMU passes (`-semihosting-config ...,arg=...`), and exit.
//!
//! Only what `cortex_m_semihosting::hio` lacks: it opens the console (`:tt`) but not
//! host files, and has no `SYS_GET_CMDLINE`. The calls are the Arm semihosting ones on
//! both architectures; only the trap differs (`BKPT 0xAB` on Cortex-M, through
//! `cortex_m_semihosting`; the `slli`/`ebreak`/`srai` sequence on RISC-V, `rv.rs`).

use core::fmt;

#[cfg(target_arch = "riscv32")]
use crate::rv::{nr, syscall1};
#[cfg(target_arch = "arm")]
use cortex_m_semihosting::{nr, syscall1};

/// Semihosting call `op` with a parameter block of `args`.
///
/// # Safety
/// `args` must be the parameter block the call expects; pointers in it must be valid
/// for the host's reads and writes.
unsafe fn call(op: usize, args: &[usize]) -> usize {
    // SAFETY: as the caller guarantees.
    unsafe { syscall1(op, args.as_ptr() as usize) }
}

/// An open semihosting file handle (a host file, or the console).
#[derive(Clone, Copy)]
pub struct HostFile {
    fd: usize,
}

impl HostFile {
    /// Opens `path` on the host with an `fopen`-style `mode` (see
    /// `cortex_m_semihosting::nr::open`). `:tt` is the console: write mode gives the
    /// host's stdout, append mode its stderr (QEMU's `SH_EXT_STDOUT_STDERR`).
    pub fn open(path: &str, mode: usize) -> Option<Self> {
        // SYS_OPEN wants a NUL-terminated name and its length without the NUL.
        let mut name = heapless::Vec::<u8, 256>::new();
        name.extend_from_slice(path.as_bytes()).ok()?;
        name.push(0).ok()?;
        // SAFETY: the parameter block points at a live, NUL-terminated buffer.
        let fd = unsafe { call(nr::OPEN, &[name.as_ptr() as usize, mode, path.len()]) } as isize;
        (fd >= 0).then_some(Self { fd: fd as usize })
    }

    /// Creates (truncates) a host file for binary writing.
    pub fn create(path: &str) -> Option<Self> {
        Self::open(path, nr::open::W_TRUNC_BINARY)
    }

    /// The host's stdout.
    pub fn stdout() -> Option<Self> {
        Self::open(":tt", nr::open::W_TRUNC)
    }

    /// The host's stderr.
    pub fn stderr() -> Option<Self> {
        Self::open(":tt", nr::open::W_APPEND)
    }

    /// Writes all of `bytes`.
    pub fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), ()> {
        while !bytes.is_empty() {
            // SYS_WRITE returns the number of bytes NOT written.
            // SAFETY: the parameter block points at `bytes`, alive for the call.
            let left = unsafe { call(nr::WRITE, &[self.fd, bytes.as_ptr() as usize, bytes.len()]) };
            if left == 0 {
                return Ok(());
            }
            if left > bytes.len() {
                return Err(());
            }
            bytes = &bytes[bytes.len() - left..];
        }
        Ok(())
    }
}

impl fmt::Write for HostFile {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_all(s.as_bytes()).map_err(|_| fmt::Error)
    }
}

/// The semihosting command line: QEMU's `-semihosting-config arg=...` values joined
/// by spaces (or, without `arg=`, the `-kernel` path and `-append` string).
pub fn cmdline(buf: &mut [u8]) -> Option<&str> {
    if buf.is_empty() {
        return None;
    }
    let mut block = [buf.as_mut_ptr() as usize, buf.len()];
    // SAFETY: the block describes `buf`; the host writes at most `buf.len()` bytes
    // and the new length into `block[1]`. The asm has no `nomem`, so the compiler
    // rereads `block` after it.
    let r = unsafe { syscall1(nr::GET_CMDLINE, block.as_mut_ptr() as usize) };
    let len = block[1];
    if r != 0 || len > buf.len() {
        return None;
    }
    core::str::from_utf8(&buf[..len]).ok()
}

/// Ends the QEMU run: status 0 when `success`, 1 otherwise (`SYS_EXIT` with the
/// reason `ADP_Stopped_ApplicationExit`, or `ADP_Stopped_RunTimeErrorUnknown`).
pub fn exit(success: bool) -> ! {
    let reason = if success { 0x2_0026 } else { 0x2_0023 };
    // SAFETY: on 32-bit targets SYS_EXIT takes the reason itself, not a block.
    unsafe { syscall1(nr::REPORT_EXCEPTION, reason) };
    // Only reached without a semihosting host (e.g. a debugger that ignores it).
    crate::halt()
}
