//! defmt global logger writing to a semihosting handle chosen at start-up
//! (a host file in `run-qemu.sh` runs; see main.rs for the channel layout).
//!
//! Frames are buffered and written with one `SYS_WRITE` each (a semihosting call
//! per encoded byte run would cost a QEMU exit each). Logs before [`init`] are dropped.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::semihost::HostFile;

#[defmt::global_logger]
struct Logger;

const BUF: usize = 256;

struct State {
    encoder: defmt::Encoder,
    out: Option<HostFile>,
    buf: heapless::Vec<u8, BUF>,
    restore: critical_section::RestoreState,
}

struct Shared(UnsafeCell<State>);
// SAFETY: only touched inside a critical section, guarded by TAKEN against re-entry.
unsafe impl Sync for Shared {}

static TAKEN: AtomicBool = AtomicBool::new(false);
static STATE: Shared = Shared(UnsafeCell::new(State {
    encoder: defmt::Encoder::new(),
    out: None,
    buf: heapless::Vec::new(),
    restore: critical_section::RestoreState::invalid(),
}));

/// Sends the defmt stream to `out` from now on.
pub fn init(out: HostFile) {
    critical_section::with(|_| {
        if !TAKEN.load(Ordering::Relaxed) {
            // SAFETY: in a critical section and the logger is not acquired.
            unsafe { (*STATE.0.get()).out = Some(out) };
        }
    });
}

fn emit(buf: &mut heapless::Vec<u8, BUF>, out: &mut Option<HostFile>, mut bytes: &[u8]) {
    let Some(out) = out else { return };
    while !bytes.is_empty() {
        let room = BUF - buf.len();
        if room == 0 {
            let _ = out.write_all(buf);
            buf.clear();
            continue;
        }
        let n = room.min(bytes.len());
        let _ = buf.extend_from_slice(&bytes[..n]);
        bytes = &bytes[n..];
    }
}

fn drain(st: &mut State) {
    if let Some(out) = st.out.as_mut() {
        if !st.buf.is_empty() {
            let _ = out.write_all(&st.buf);
        }
    }
    st.buf.clear();
}

// SAFETY: acquire/release bracket a critical section, TAKEN forbids re-entry.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        // SAFETY: paired with `critical_section::release` in `release`.
        let restore = unsafe { critical_section::acquire() };
        if TAKEN.load(Ordering::Relaxed) {
            panic!("defmt logger taken reentrantly");
        }
        TAKEN.store(true, Ordering::Relaxed);
        // SAFETY: exclusive access, see above.
        let st = unsafe { &mut *STATE.0.get() };
        st.restore = restore;
        st.encoder
            .start_frame(|b| emit(&mut st.buf, &mut st.out, b));
    }

    unsafe fn flush() {
        // SAFETY: called between acquire and release.
        drain(unsafe { &mut *STATE.0.get() });
    }

    unsafe fn release() {
        // SAFETY: called after acquire.
        let st = unsafe { &mut *STATE.0.get() };
        st.encoder.end_frame(|b| emit(&mut st.buf, &mut st.out, b));
        drain(st);
        TAKEN.store(false, Ordering::Relaxed);
        // SAFETY: the state saved by the matching acquire.
        unsafe { critical_section::release(st.restore) };
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: called between acquire and release.
        let st = unsafe { &mut *STATE.0.get() };
        st.encoder
            .write(bytes, |b| emit(&mut st.buf, &mut st.out, b));
    }
}
