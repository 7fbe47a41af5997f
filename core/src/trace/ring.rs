//! A trace path that does not stall the model: the recorder copies each encoded frame
//! into a statically sized ring ([`FrameRing`]), and a separate drain moves the bytes
//! to the transport (a UART, USB, RTT, semihosting) from the main loop between steps,
//! from an interrupt, or by DMA.
//!
//! ```text
//!  model step ──Recorder──▶ RingWriter ──[ FrameRing<N> ]──▶ RingReader ──▶ transport
//!              (encode)     (copy, whole    (static RAM)     (readable() slice
//!                            frames only)                     for DMA, release(n))
//! ```
//!
//! - **Never a torn frame.** The writer commits a frame only once all of its bytes are
//!   in the ring (one store of the write index, after the copy), and refuses a frame
//!   that does not fit whole. The reader therefore only ever sees whole frames, and a
//!   transport that sends every byte it is given sends whole frames.
//! - **The caller's policy when the ring is full**: [`RingWriter::dropping`] drops the
//!   new frame whole and counts it (the recorder counts it in the end frame's `dropped`,
//!   and its sequence number is missing on the host, which then lists the missing
//!   records by site); [`RingWriter::blocking`] calls a wait function until the drain
//!   made room (a main-loop drain, or `wfi` while an interrupt drains). The dropping
//!   writer keeps [`END_RESERVE`] bytes for the end frame, so that a run always ends
//!   with the counts.
//! - **Single producer, single consumer, lock-free.** [`FrameRing::split`] hands out
//!   exactly one writer and one reader; they may live in different execution contexts
//!   (main loop and interrupt handler) on a single core or across cores: each side
//!   writes only its own index (atomic load/store only, so also on Armv6-M, which has
//!   no compare-and-swap).
//!
//! This module holds the crate's second `unsafe` code (see `lib.rs`): the bytes live in
//! an `UnsafeCell` that both sides reach through shared references. Its safety rests on
//! the two indices: the writer touches only the free part `[head, tail + N)`, the reader
//! only the committed part `[tail, head)`, and each publishes its index with `Release`
//! after it is done with the bytes.
#![allow(unsafe_code)]

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use super::Sink;
use crate::Error;

/// Bytes a dropping writer keeps free for the end frame: the largest end frame
/// (run, seq and three counters as 5-byte varints, variant, CRC = 30 bytes, plus COBS
/// code and delimiter).
pub const END_RESERVE: usize = 32;

/// A ring of `N` bytes (a power of two) holding whole trace frames. Put it in a
/// `static` (e.g. a `static mut` in cortex-m-rt's `#[entry]`, which becomes a
/// `&'static mut`) and [`split`](FrameRing::split) it.
pub struct FrameRing<const N: usize> {
    buf: UnsafeCell<[u8; N]>,
    /// Bytes ever committed (wrapping). Stored only by the writer.
    head: AtomicUsize,
    /// Bytes ever released (wrapping). Stored only by the reader.
    tail: AtomicUsize,
    /// Frames the writer refused (ring full, or larger than the ring).
    dropped: AtomicU32,
}

// SAFETY: the bytes are shared between exactly one `RingWriter` and one `RingReader`
// (`split` takes `&mut self`), which touch disjoint parts of them, delimited by the
// atomic indices (see the module comment).
unsafe impl<const N: usize> Sync for FrameRing<N> {}

impl<const N: usize> Default for FrameRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameRing<N> {
    const POWER_OF_TWO: () = assert!(
        N.is_power_of_two() && N > END_RESERVE,
        "FrameRing size must be a power of two larger than END_RESERVE"
    );

    /// An empty ring (usable in a `static`).
    pub const fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::POWER_OF_TWO;
        FrameRing {
            buf: UnsafeCell::new([0; N]),
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
            dropped: AtomicU32::new(0),
        }
    }

    /// The one writer and the one reader of this ring.
    pub fn split(&mut self) -> (RingWriter<'_, N>, RingReader<'_, N>) {
        let ring: &Self = self;
        (RingWriter { ring }, RingReader { ring })
    }

    /// Bytes committed and not yet released.
    pub fn len(&self) -> usize {
        self.head
            .load(Ordering::Acquire)
            .wrapping_sub(self.tail.load(Ordering::Acquire))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frames refused so far.
    pub fn dropped_frames(&self) -> u32 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn base(&self) -> *mut u8 {
        self.buf.get().cast()
    }
}

/// The producing side of a [`FrameRing`]: copies whole frames in. Use it as a trace
/// [`Sink`] through [`RingWriter::dropping`] or [`RingWriter::blocking`].
pub struct RingWriter<'a, const N: usize> {
    ring: &'a FrameRing<N>,
}

impl<'a, const N: usize> RingWriter<'a, N> {
    /// Free bytes.
    pub fn free(&self) -> usize {
        let head = self.ring.head.load(Ordering::Relaxed);
        let tail = self.ring.tail.load(Ordering::Acquire);
        N - head.wrapping_sub(tail)
    }

    /// Copies `frame` in and commits it if at least `frame.len() + keep` bytes are free;
    /// otherwise writes nothing and returns [`Error::SinkFull`].
    pub fn try_push(&mut self, frame: &[u8], keep: usize) -> Result<(), Error> {
        if frame.len().saturating_add(keep) > self.free() {
            return Err(Error::SinkFull);
        }
        let head = self.ring.head.load(Ordering::Relaxed);
        let at = head % N;
        let first = frame.len().min(N - at);
        let base = self.ring.base();
        // SAFETY: `[head, head + frame.len())` lies in the free part of the ring (checked
        // above against a `tail` the reader published with `Release` after it was done
        // with those bytes), which the reader never reads: only this writer touches it.
        // The two pieces stay inside the `N`-byte buffer (`at + first <= N`,
        // `frame.len() - first <= at`).
        unsafe {
            core::ptr::copy_nonoverlapping(frame.as_ptr(), base.add(at), first);
            core::ptr::copy_nonoverlapping(frame.as_ptr().add(first), base, frame.len() - first);
        }
        // Publishes the bytes: the reader's `Acquire` load of `head` sees them.
        self.ring
            .head
            .store(head.wrapping_add(frame.len()), Ordering::Release);
        Ok(())
    }

    fn refuse(&self) -> Error {
        let d = &self.ring.dropped;
        d.store(
            d.load(Ordering::Relaxed).saturating_add(1),
            Ordering::Relaxed,
        );
        Error::SinkFull
    }

    /// Policy *drop*: a frame that does not fit is dropped whole and counted; the model
    /// never waits. [`END_RESERVE`] bytes stay free for the run's end frame.
    pub fn dropping(self) -> DropWhenFull<'a, N> {
        DropWhenFull(self)
    }

    /// Policy *block*: while a frame does not fit, `wait` runs (drain the ring to the
    /// transport, or `wfi` until the draining interrupt made room). A frame larger than
    /// the whole ring can never fit and is refused.
    pub fn blocking<F: FnMut()>(self, wait: F) -> BlockWhenFull<'a, N, F> {
        BlockWhenFull { writer: self, wait }
    }
}

/// A [`RingWriter`] as a [`Sink`] that drops frames that do not fit.
pub struct DropWhenFull<'a, const N: usize>(pub RingWriter<'a, N>);

impl<const N: usize> Sink for DropWhenFull<'_, N> {
    fn write_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        self.0
            .try_push(frame, END_RESERVE)
            .map_err(|_| self.0.refuse())
    }

    fn write_last_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        self.0.try_push(frame, 0).map_err(|_| self.0.refuse())
    }
}

/// A [`RingWriter`] as a [`Sink`] that waits for room.
pub struct BlockWhenFull<'a, const N: usize, F> {
    writer: RingWriter<'a, N>,
    wait: F,
}

impl<const N: usize, F: FnMut()> Sink for BlockWhenFull<'_, N, F> {
    fn write_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        if frame.len() > N {
            return Err(self.writer.refuse());
        }
        while self.writer.free() < frame.len() {
            (self.wait)();
        }
        self.writer.try_push(frame, 0)
    }
}

/// The consuming side of a [`FrameRing`]: hands committed bytes to a transport.
pub struct RingReader<'a, const N: usize> {
    ring: &'a FrameRing<N>,
}

impl<const N: usize> RingReader<'_, N> {
    /// Committed bytes not yet released.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Frames the writer refused so far.
    pub fn dropped_frames(&self) -> u32 {
        self.ring.dropped_frames()
    }

    /// The oldest committed bytes, as one contiguous slice (up to the end of the
    /// buffer; the rest follows after [`release`](Self::release)): hand it to a DMA
    /// transfer or a non-blocking write, then release what was sent. Everything
    /// committed is whole frames, so sending every byte sends whole frames.
    pub fn readable(&self) -> &[u8] {
        let tail = self.ring.tail.load(Ordering::Relaxed);
        let head = self.ring.head.load(Ordering::Acquire);
        let at = tail % N;
        let len = head.wrapping_sub(tail).min(N - at);
        // SAFETY: `[tail, tail + len)` is committed (the writer published `head` with
        // `Release` after copying) and not released: the writer does not touch it until
        // `release` moves `tail` past it, which needs `&mut self`, so not while this
        // borrow lives. It lies inside the buffer (`at + len <= N`).
        unsafe { core::slice::from_raw_parts(self.ring.base().add(at), len) }
    }

    /// Gives the first `n` readable bytes back to the writer (at most what is committed).
    pub fn release(&mut self, n: usize) {
        let tail = self.ring.tail.load(Ordering::Relaxed);
        let n = n.min(self.len());
        self.ring
            .tail
            .store(tail.wrapping_add(n), Ordering::Release);
    }

    /// Moves bytes to a non-blocking transport: `send` gets the readable bytes and
    /// returns how many it took (0: none now). Stops when the ring is empty or `send`
    /// takes nothing; returns the bytes moved.
    pub fn drain(&mut self, mut send: impl FnMut(&[u8]) -> usize) -> usize {
        let mut moved = 0;
        loop {
            let bytes = self.readable();
            if bytes.is_empty() {
                return moved;
            }
            let n = send(bytes).min(bytes.len());
            if n == 0 {
                return moved;
            }
            self.release(n);
            moved += n;
        }
    }

    /// Moves everything to a blocking transport (`write_all`-like: `Err` loses nothing
    /// that was not yet sent).
    pub fn drain_all<E>(
        &mut self,
        mut write_all: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut moved = 0;
        loop {
            let bytes = self.readable();
            if bytes.is_empty() {
                return Ok(moved);
            }
            let n = bytes.len();
            write_all(bytes)?;
            self.release(n);
            moved += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u8, len: usize) -> std::vec::Vec<u8> {
        let mut f = std::vec![id.max(1); len - 1];
        f.push(0);
        f
    }

    #[test]
    fn frames_wrap_around_whole_and_in_order() {
        let mut ring = FrameRing::<64>::new();
        let (mut w, mut r) = ring.split();
        let mut out = std::vec::Vec::new();
        let mut sent = std::vec::Vec::new();
        for i in 0..200u32 {
            let f = frame(i as u8, 5 + (i as usize * 7) % 23);
            w.try_push(&f, 0).unwrap();
            sent.extend_from_slice(&f);
            // Drain a few bytes at a time, as a slow UART FIFO would.
            r.drain(|b| {
                let n = b.len().min(3 + i as usize % 5);
                out.extend_from_slice(&b[..n]);
                n
            });
        }
        r.drain_all(|b| {
            out.extend_from_slice(b);
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(out, sent);
        assert!(r.is_empty());
    }

    #[test]
    fn dropping_refuses_whole_frames_and_keeps_room_for_the_end() {
        let mut ring = FrameRing::<128>::new();
        let (w, mut r) = ring.split();
        let mut sink = w.dropping();
        // 128 - 32 reserved: three 30-byte frames fit, the fourth is dropped whole.
        for i in 0..4u8 {
            let res = sink.write_frame(&frame(i + 1, 30));
            assert_eq!(res.is_ok(), i < 3, "frame {i}");
        }
        assert_eq!(r.dropped_frames(), 1);
        // The end frame uses the reserve.
        sink.write_last_frame(&frame(9, 32)).unwrap();
        let mut out = std::vec::Vec::new();
        r.drain_all(|b| {
            out.extend_from_slice(b);
            Ok::<_, ()>(())
        })
        .unwrap();
        let frames: std::vec::Vec<&[u8]> = out.split_inclusive(|b| *b == 0).collect();
        assert_eq!(frames.len(), 4);
        assert!(frames.iter().all(|f| f.len() == 30 || f.len() == 32));
        assert_eq!(frames[3][0], 9);
    }

    #[test]
    fn blocking_waits_for_the_drain() {
        let mut ring = FrameRing::<64>::new();
        let (w, r) = ring.split();
        let r = core::cell::RefCell::new(r);
        let mut out = std::vec::Vec::new();
        let mut waits = 0;
        {
            let mut sink = w.blocking(|| {
                waits += 1;
                r.borrow_mut().drain(|b| {
                    out.extend_from_slice(&b[..1]);
                    1
                });
            });
            for i in 0..10u8 {
                sink.write_frame(&frame(i + 1, 40)).unwrap();
            }
            assert_eq!(sink.write_frame(&frame(1, 65)), Err(Error::SinkFull));
        }
        r.borrow_mut()
            .drain_all(|b| {
                out.extend_from_slice(b);
                Ok::<_, ()>(())
            })
            .unwrap();
        assert!(waits > 0);
        assert_eq!(out.len(), 400);
        assert_eq!(r.borrow().dropped_frames(), 1);
    }

    #[test]
    fn readable_is_contiguous_up_to_the_buffer_end() {
        let mut ring = FrameRing::<64>::new();
        let (mut w, mut r) = ring.split();
        w.try_push(&frame(1, 50), 0).unwrap();
        r.release(50);
        w.try_push(&frame(2, 30), 0).unwrap();
        assert_eq!(r.readable().len(), 14);
        r.release(14);
        assert_eq!(r.readable().len(), 16);
        assert_eq!(*r.readable().last().unwrap(), 0);
    }
}
