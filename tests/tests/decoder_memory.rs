//! The trace decoder's memory bound (README, "What is guaranteed for malformed input"),
//! measured with a counting allocator: the peak of live heap bytes while decoding and
//! exporting, for the crafted bombs of issue #11 and for streams of the smallest frames
//! (the most bookkeeping per input byte). Its own test binary, so that no other test's
//! allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use tinylens_core::probe::Probe;
use tinylens_core::{Config, HookPoint, Normalization, Positional};
use tinylens_host::export::{self, Arrays};
use tinylens_host::trace::{decode_stream, Decoder, Keep};
use tinylens_tests::fuzz_targets::craft;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Relaxed);
    }
}

#[global_allocator]
static A: Counting = Counting;

/// One measurement at a time (the tests of this binary share the counters).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Peak heap bytes that `f` allocates above what was live when it started.
fn peak_of<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let r = f();
    (PEAK.load(Relaxed) - base, r)
}

fn config(n_layers: u32, n_ctx: u32) -> Config {
    Config {
        n_layers,
        n_heads: 1,
        d_model: 64,
        d_head: 1,
        d_vocab: 200,
        d_vocab_out: 200,
        n_ctx,
        normalization: Normalization::None,
        positional: Positional::Standard,
        eps: 0.0,
        attn_scale: 1.0,
    }
}

#[test]
fn the_54_byte_bomb_decodes_and_exports_in_little_memory() {
    let _g = serial();
    let bomb = craft::resid_bomb();
    let (peak, ()) = peak_of(|| {
        let mut d = Decoder::new(Keep::Only(0));
        d.push(&bomb, &mut |_, _| {});
        let (runs, _) = d.finish();
        assert_eq!(runs[0].loss.missing_count, 255 * 16384);
        // Export of the first array (of 255) as safetensors: [16384, 64] NaN.
        let view = runs[0].cache_view(false);
        let mut n = 0usize;
        view.emit(0, &mut |p| {
            n += p.len();
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 16384 * 64);
    });
    eprintln!("54-byte trace: peak {peak} heap bytes (decoding, loss, one array exported)");
    assert!(peak < 8 << 20, "{peak} bytes");
    // Eight of them, all runs kept (what `decode_stream` does).
    let eight: Vec<u8> = (0..8).flat_map(|_| craft::resid_bomb()).collect();
    let (peak, runs) = peak_of(|| decode_stream(&eight).0);
    assert_eq!(runs.len(), 8);
    eprintln!("8 x 54-byte traces: peak {peak} heap bytes");
    assert!(peak < 16 << 20, "{peak} bytes");
}

#[test]
fn exporting_streams_without_a_copy_of_the_cache() {
    let _g = serial();
    // A real-sized cache: 8 layers x 1024 positions x 64 of resid_pre, NaN (2 MiB f32).
    let cfg = config(8, 1024);
    let trace = [
        craft::header(1, 0, cfg, &[Probe::all(HookPoint::ResidPre)]),
        craft::end(1, 1, 1024, 0),
    ]
    .concat();
    let (runs, _) = decode_stream(&trace);
    let view = runs[0].cache_view(true);
    for format in ["json", "safetensors"] {
        let (peak, bytes) = peak_of(|| {
            let mut sink = CountingSink(0);
            match format {
                "json" => export::write_json(&view, &mut sink).unwrap(),
                _ => export::write_safetensors(&view, &mut sink).unwrap(),
            }
            sink.0
        });
        eprintln!("{format}: {bytes} bytes written, peak {peak} heap bytes");
        assert!(bytes > 2 << 20);
        assert!(
            peak < 256 << 10,
            "{format}: {peak} bytes for a {bytes}-byte export"
        );
    }
    let list = view.list();
    assert_eq!(list.len(), 9);
}

struct CountingSink(usize);

impl std::io::Write for CountingSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Streams of the smallest frames: many headers (a run each), many tokens, many
/// one-value records. What is kept grows with the input, by a bounded factor.
#[test]
fn memory_grows_with_the_input_by_a_bounded_factor() {
    let _g = serial();
    let cfg = Config {
        d_model: 1,
        ..config(2, 4096)
    };
    let headers: Vec<u8> = (0..20_000u32)
        .flat_map(|id| craft::header(id, 0, cfg, &[Probe::all(HookPoint::Embed)]))
        .collect();
    let mut records = craft::header(1, 0, cfg, &[Probe::all(HookPoint::ResidPre)]);
    let mut seq = 1;
    for pos in 0..4096u16 {
        records.extend(craft::token(1, seq, pos, 3));
        seq += 1;
        for layer in 0..2 {
            records.extend(craft::record_f32(
                1,
                seq,
                (HookPoint::ResidPre, layer, None, pos),
                &[1.5],
            ));
            seq += 1;
        }
    }
    for (name, stream) in [("headers", headers), ("tokens and records", records)] {
        let (peak, runs) = peak_of(|| decode_stream(&stream).0);
        assert!(!runs.is_empty());
        let per_byte = peak as f64 / stream.len() as f64;
        eprintln!(
            "{name}: {} input bytes, peak {peak} heap bytes ({per_byte:.1} per input byte)",
            stream.len()
        );
        assert!(
            per_byte < 32.0,
            "{name}: {per_byte:.1} bytes per input byte"
        );
    }
}
