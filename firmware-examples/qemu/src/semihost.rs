//! Semihosting I/O for the QEMU example: host files and the console, the command
//! line QEMU passes (`-semihosting-config ...,arg=...`), and exit.
//!
//! Only what `cortex_m_semihosting::hio` lacks: it opens the console (`:tt`) but not
//! host files, and has no `SYS_GET_CMDLINE`.

use core::fmt;
use cortex_m_semihosting::{debug, nr, syscall, syscall1};

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
        let fd = unsafe { syscall!(OPEN, name.as_ptr(), mode, path.len()) } as isize;
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
            let left = unsafe { syscall!(WRITE, self.fd, bytes.as_ptr(), bytes.len()) };
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

/// Ends the QEMU run: status 0 when `success`, 1 otherwise.
pub fn exit(success: bool) -> ! {
    debug::exit(if success {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    // Only reached without a semihosting host (e.g. a debugger that ignores it).
    cortex_m::asm::udf()
}
