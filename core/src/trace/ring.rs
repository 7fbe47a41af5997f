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
//!
//! # Draining from an interrupt or by DMA
//!
//! The reader may be moved into an interrupt handler (it is `Send`; keep it in a
//! `static` behind a `critical_section::Mutex<RefCell<Option<RingReader<'static, N>>>>`,
//! installed before the interrupt is enabled): the handler takes bytes from
//! [`readable`](RingReader::readable) as the transport accepts them and
//! [`release`](RingReader::release)s them, while the model keeps writing frames from the
//! main loop. The writer never waits for a lock, and a frame the handler's interrupt
//! cuts in half is not yet committed, so the handler never sees it. With
//! `blocking(|| cortex_m::asm::wfi())` a full ring waits for the handler.
//!
//! For DMA, [`readable`](RingReader::readable) is the transfer's source: the bytes it
//! returns stay where they are and unchanged until [`release`](RingReader::release)
//! passes them (the writer touches only free bytes), so a transfer may go on reading
//! them after the borrow ends. Start it on `readable()` (its pointer and length), and
//! in the transfer-complete interrupt `release(len)` and start the next one; keep the
//! reader (and so the ring) alive while a transfer runs. Each transfer is contiguous;
//! a wrap at the buffer's end takes two.
//!
//! The examples: `firmware-examples/qemu` (`drain=tick`: the SysTick handler moves a
//! bounded number of bytes a tick, checked bit for bit under QEMU) and
//! `firmware-examples/stm32f4` (the USART2 transmit-empty interrupt).
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
    /// Where the writer last left the end of the buffer unused (a frame encoded in
    /// place must be contiguous): the absolute position at which the unused bytes
    /// start. Stored only by the writer, before the `head` that covers them.
    skip_at: AtomicUsize,
    /// How many times the writer did that; the reader counts the ones it passed.
    skips: AtomicU32,
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
            skip_at: AtomicUsize::new(0),
            skips: AtomicU32::new(0),
        }
    }

    /// The one writer and the one reader of this ring.
    pub fn split(&mut self) -> (RingWriter<'_, N>, RingReader<'_, N>) {
        let ring: &Self = self;
        (
            RingWriter { ring, skip: 0 },
            RingReader {
                ring,
                skips_passed: ring.skips.load(Ordering::Acquire),
            },
        )
    }

    /// Bytes committed and not yet released (including an unused end of the buffer
    /// the writer skipped, if the reader has not passed it yet).
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
    /// Bytes at the end of the buffer the space lent by `lend` skips (0: none).
    skip: usize,
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

    /// Bytes to skip at the end of the buffer for `max` contiguous bytes, if
    /// `skip + max + keep` bytes are free.
    fn fits_contiguous(&self, max: usize, keep: usize) -> Option<usize> {
        let at = self.ring.head.load(Ordering::Relaxed) % N;
        let skip = if N - at >= max { 0 } else { N - at };
        (skip + max + keep <= self.free()).then_some(skip)
    }

    /// Lends `max` contiguous free bytes (keeping `keep` more free) to encode a frame
    /// in place, or `None` if they are not free now. [`commit`](Self::commit) the
    /// frame's length afterwards; without a commit nothing changes. When the end of
    /// the buffer is too short, the space starts at the beginning, and the end is
    /// skipped (the reader passes over it). At most half the ring can be lent, so
    /// that an emptied ring always has room (whatever its write position).
    #[inline]
    pub fn lend(&mut self, max: usize, keep: usize) -> Option<&mut [u8]> {
        if max > N / 2 {
            return None;
        }
        let skip = self.fits_contiguous(max, keep)?;
        self.skip = skip;
        let at = (self.ring.head.load(Ordering::Relaxed) + skip) % N;
        // SAFETY: `[head + skip, head + skip + max)` is free (checked above against a
        // `tail` the reader published after it was done with those bytes) and
        // contiguous (`at + max <= N`): only this writer touches it, and the `&mut`
        // borrow of the writer keeps it to one lender at a time.
        Some(unsafe { core::slice::from_raw_parts_mut(self.ring.base().add(at), max) })
    }

    /// Commits the first `len` bytes of the space [`lend`](Self::lend) gave (one whole
    /// frame).
    pub fn commit(&mut self, len: usize) {
        let head = self.ring.head.load(Ordering::Relaxed);
        if self.skip > 0 {
            self.ring.skip_at.store(head, Ordering::Relaxed);
            let n = &self.ring.skips;
            n.store(n.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
        }
        // Publishes the skip and the frame: the reader's `Acquire` load of `head`
        // sees both.
        self.ring
            .head
            .store(head.wrapping_add(self.skip + len), Ordering::Release);
        self.skip = 0;
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

    #[inline(always)]
    fn lend(&mut self, max: usize) -> Result<Option<&mut [u8]>, Error> {
        if max > N / 2 {
            return Ok(None);
        }
        if self.0.fits_contiguous(max, END_RESERVE).is_none() {
            return Err(self.0.refuse());
        }
        Ok(self.0.lend(max, END_RESERVE))
    }

    #[inline(always)]
    fn commit(&mut self, len: usize) -> Result<(), Error> {
        self.0.commit(len);
        Ok(())
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

    #[inline(always)]
    fn lend(&mut self, max: usize) -> Result<Option<&mut [u8]>, Error> {
        if max > N / 2 {
            return Ok(None);
        }
        while self.writer.fits_contiguous(max, 0).is_none() {
            (self.wait)();
        }
        Ok(self.writer.lend(max, 0))
    }

    #[inline(always)]
    fn commit(&mut self, len: usize) -> Result<(), Error> {
        self.writer.commit(len);
        Ok(())
    }
}

/// The consuming side of a [`FrameRing`]: hands committed bytes to a transport.
pub struct RingReader<'a, const N: usize> {
    ring: &'a FrameRing<N>,
    /// Skipped buffer ends passed so far (see `FrameRing::skips`).
    skips_passed: u32,
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
    pub fn readable(&mut self) -> &[u8] {
        self.pass_skip();
        let tail = self.ring.tail.load(Ordering::Relaxed);
        let head = self.ring.head.load(Ordering::Acquire);
        let at = tail % N;
        let mut len = head.wrapping_sub(tail).min(N - at);
        if let Some(skip_at) = self.pending_skip() {
            // Frame bytes end where the skipped end of the buffer starts.
            len = len.min(skip_at.wrapping_sub(tail));
        }
        // SAFETY: `[tail, tail + len)` is committed (the writer published `head` with
        // `Release` after copying) and not released: the writer does not touch it until
        // `release` moves `tail` past it, which needs `&mut self`, so not while this
        // borrow lives. It lies inside the buffer (`at + len <= N`). (A skipped end of
        // the buffer was passed above, so these are frame bytes.)
        unsafe { core::slice::from_raw_parts(self.ring.base().add(at), len) }
    }

    /// Where the end of the buffer that the writer skipped and the reader has not
    /// passed yet starts (absolute position), if there is one. At most one is pending:
    /// the writer can skip again only a lap later, when the reader is past this one.
    fn pending_skip(&self) -> Option<usize> {
        (self.ring.skips.load(Ordering::Acquire) != self.skips_passed)
            .then(|| self.ring.skip_at.load(Ordering::Relaxed))
    }

    /// Moves `tail` over the end of the buffer the writer skipped, when it is next.
    fn pass_skip(&mut self) {
        let Some(skip_at) = self.pending_skip() else {
            return;
        };
        let tail = self.ring.tail.load(Ordering::Relaxed);
        let head = self.ring.head.load(Ordering::Acquire);
        if tail != head && tail == skip_at {
            let skip = N - tail % N;
            self.ring
                .tail
                .store(tail.wrapping_add(skip), Ordering::Release);
            self.skips_passed = self.skips_passed.wrapping_add(1);
        }
    }

    /// Gives the first `n` readable bytes back to the writer (at most what is committed).
    pub fn release(&mut self, n: usize) {
        self.pass_skip();
        let tail = self.ring.tail.load(Ordering::Relaxed);
        let mut n = n.min(self.len());
        if let Some(skip_at) = self.pending_skip() {
            n = n.min(skip_at.wrapping_sub(tail));
        }
        self.ring
            .tail
            .store(tail.wrapping_add(n), Ordering::Release);
        self.pass_skip();
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

    /// Frames encoded in place (lend + commit) and copied in (try_push), mixed, with
    /// lent spaces larger than the frames and skips at the buffer's end: the reader
    /// sees exactly the frames, in order, whatever its pace.
    #[test]
    fn lent_frames_skip_the_buffer_end_and_arrive_in_order() {
        let mut ring = FrameRing::<128>::new();
        let (mut w, mut r) = ring.split();
        let mut rng = crate::sample::Rng::new(7);
        let (mut out, mut sent) = (std::vec::Vec::new(), std::vec::Vec::new());
        for i in 0..3000u32 {
            let len = 2 + (rng.next_u64() % 40) as usize;
            let f = frame(i as u8, len);
            if i % 3 == 0 {
                if w.try_push(&f, 0).is_ok() {
                    sent.extend_from_slice(&f);
                }
            } else {
                let max = len + (rng.next_u64() % 20) as usize;
                if let Some(space) = w.lend(max, 0) {
                    assert_eq!(space.len(), max);
                    space[..len].copy_from_slice(&f);
                    w.commit(len);
                    sent.extend_from_slice(&f);
                }
            }
            let pace = (rng.next_u64() % 50) as usize;
            r.drain(|b| {
                let n = b.len().min(pace);
                out.extend_from_slice(&b[..n]);
                n
            });
        }
        r.drain_all(|b| {
            out.extend_from_slice(b);
            Ok::<_, ()>(())
        })
        .unwrap();
        assert!(sent.len() > 20_000);
        let first = out.iter().zip(&sent).position(|(a, b)| a != b);
        assert_eq!(
            (first, out.len()),
            (None, sent.len()),
            "{:?} / {:?}",
            first.map(|i| &out[i.saturating_sub(5)..(i + 5).min(out.len())]),
            first.map(|i| &sent[i.saturating_sub(5)..(i + 5).min(sent.len())])
        );
        assert!(
            w.lend(65, 0).is_none(),
            "more than half the ring is never lent"
        );
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

    /// The reader on another thread, as an interrupt handler or a second core would be:
    /// whatever the interleaving, it sees exactly the committed frames, whole and in
    /// order (frames encoded in place and copied in, a blocking writer, a small ring
    /// that wraps and skips its end often).
    #[test]
    fn a_concurrent_reader_sees_only_whole_frames() {
        const FRAMES: u32 = 4_000;
        let mut ring = FrameRing::<256>::new();
        let (w, mut r) = ring.split();
        let expected: std::vec::Vec<u8> = (0..FRAMES)
            .flat_map(|i| frame(i as u8, 2 + (i as usize * 13) % 60))
            .collect();
        let out = std::thread::scope(|s| {
            let producer = s.spawn(move || {
                let mut sink = w.blocking(std::thread::yield_now);
                for i in 0..FRAMES {
                    let f = frame(i as u8, 2 + (i as usize * 13) % 60);
                    if i % 2 == 0 {
                        sink.write_frame(&f).unwrap();
                    } else {
                        let space = sink.lend(f.len() + 7).unwrap().unwrap();
                        space[..f.len()].copy_from_slice(&f);
                        sink.commit(f.len()).unwrap();
                    }
                }
            });
            let mut out = std::vec::Vec::new();
            let mut pace = 1usize;
            while out.len() < expected.len() {
                pace = pace % 37 + 1;
                let moved = r.drain(|b| {
                    let n = b.len().min(pace);
                    out.extend_from_slice(&b[..n]);
                    n
                });
                if moved == 0 {
                    std::thread::yield_now();
                }
            }
            producer.join().unwrap();
            out
        });
        assert!(
            out == expected,
            "the reader saw other bytes than the frames"
        );
        assert_eq!(r.dropped_frames(), 0);
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
