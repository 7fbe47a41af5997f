//! Board-independent logic of the tinylens example firmware.
//!
//! Everything here is generic over the `embedded-hal` 1.0 traits and the core's trace
//! [`Sink`], so the QEMU example (`qemu` binary) and the board example (`board`
//! binary) share it, and it builds for `thumbv7em-none-eabihf` (Cortex-M4F/M7) and
//! `thumbv6m-none-eabi` (Cortex-M0/M0+, no FPU: soft-float, same bits).
//!
//! - [`MODEL_BLOB`]: the model blob chosen at build time (see `build.rs`), in flash,
//!   16-byte aligned; [`CONFIG`] is its config, read at compile time, and
//!   [`WORKSPACE_WORDS`] / [`FRAME_BUFFER_LEN`] the exact sizes of the two `static`
//!   buffers a binary declares for it.
//! - [`Settings`]: prompt, generation length, probe set and run id, compiled-in
//!   defaults that `key=value` arguments override ([`Settings::apply`]).
//! - [`run`]: processes the prompt, generates greedily with the KV cache, records
//!   the probes as trace frames to the sink and logs progress with defmt.
//! - [`run_with_ring`]: [`run`] with the trace ring drained by the main loop (the
//!   board examples' loop); [`Notify`]: a sink that signals a draining interrupt.
//! - [`Stepper`]: wraps each model step with the busy pin, a clock reading and the
//!   instruction-count markers (see `scripts/qemu/icount.c`).
#![no_std]

pub use embedded_hal;
pub use tinylens_core;

use core::cell::{Cell, RefCell};
use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use embedded_hal::{delay::DelayNs, digital::OutputPin};
use tinylens_core::kernels::Portable;
use tinylens_core::probe::ProbeSet;
use tinylens_core::trace::{self, Recorder, Sink, Summary};
use tinylens_core::{sample, Config, Error, KvStorage, Model, Session, SessionOptions};

// ---------------------------------------------------------------------------
// The embedded model and the sizes it implies

/// The model blob as a `const`, for compile-time parsing of its config. Not aligned
/// and not meant for run time: use [`MODEL_BLOB`].
pub const MODEL_BYTES: &[u8] = include_bytes!(env!("TINYLENS_FW_MODEL_PATH"));

/// The model blob embedded in flash, 16-byte aligned (`include_bytes!` alone promises
/// no alignment, and the DSP kernel needs 4: `Model::from_bytes` refuses a misaligned
/// blob in DSP builds).
pub static MODEL_BLOB: &[u8] = tinylens_core::include_blob!(env!("TINYLENS_FW_MODEL_PATH"));

/// File name of the embedded blob (for the log).
pub const MODEL_NAME: &str = env!("TINYLENS_FW_MODEL_NAME");

/// The embedded model's config, read from the blob at compile time: a file that is
/// not a valid blob fails the build here.
pub const CONFIG: Config = match tinylens_core::blob::peek_config(MODEL_BYTES) {
    Ok(c) => c,
    Err(_) => panic!("the embedded model (TINYLENS_MODEL) is not a valid tinylens blob"),
};

/// Working memory of a session of the embedded model, in `f32` words
/// ([`Config::workspace_len`]): the size of the binaries' `static` workspace.
pub const WORKSPACE_WORDS: usize = CONFIG.workspace_len();

/// Size of the trace frame buffer for the embedded model ([`trace::frame_buffer_len`]).
pub const FRAME_BUFFER_LEN: usize = trace::frame_buffer_len(&CONFIG);

/// The embedded model's context length: the most positions a run can have.
pub const N_CTX: usize = CONFIG.n_ctx as usize;

/// Token ids of a prompt or of a generation, at most [`N_CTX`].
pub type Tokens = heapless::Vec<u32, N_CTX>;

// ---------------------------------------------------------------------------
// Settings: compiled-in defaults, overridable by `key=value` arguments

/// Default prompt: `<bos>` (0 in the demo vocabulary), seven tokens, then the first
/// three again, so that an induction model continues the repeat when generating. All
/// ids are below 50 and prompt + generation fit 24 positions: it suits the demo model
/// and every test fixture.
pub const DEFAULT_PROMPT: &[u32] = &[0, 5, 12, 33, 7, 21, 40, 9, 5, 12, 33];
/// Default number of tokens generated after the prompt.
pub const DEFAULT_GENERATE: usize = 8;
/// Default probe set, as `tinylens run --probe` patterns: every attention pattern,
/// every head's result (as f16) and the logits.
pub const DEFAULT_PROBES: &[&str] = &[
    "blocks.*.attn.hook_pattern",
    "blocks.*.attn.hook_result:f16",
    "logits",
];
/// Default run id written in every trace frame.
pub const DEFAULT_RUN_ID: u32 = 1;

/// What a run does: prompt, generation length, what it records.
#[derive(Debug, Clone)]
pub struct Settings {
    pub prompt: Tokens,
    pub generate: usize,
    pub probes: ProbeSet,
    /// `false`: no recorder at all (the steps run with `NoHooks`; nothing is written
    /// to the trace channel), to measure the cost of inference alone.
    pub record: bool,
    /// `record=pieces`: no recorder, but an instruction-count marker at every hook
    /// point ([`Pieces`]), for a per-piece profile of the step.
    pub pieces: bool,
    pub run_id: u32,
    /// How the KV cache is stored (`kv=f32|f16|int8`; the static workspace is sized for
    /// f32, the largest).
    pub kv: KvStorage,
    /// Whether `probe=` arguments have replaced the default probe set yet.
    probes_given: bool,
}

/// A `key=value` argument the firmware cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgError<'a> {
    pub key: &'a str,
    pub value: &'a str,
    pub why: &'static str,
}

impl fmt::Display for ArgError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad argument `{}={}`: {}",
            self.key, self.value, self.why
        )
    }
}

impl Settings {
    /// The compiled-in defaults ([`DEFAULT_PROMPT`], [`DEFAULT_GENERATE`],
    /// [`DEFAULT_PROBES`], [`DEFAULT_RUN_ID`]).
    pub fn defaults() -> Self {
        let mut prompt = Tokens::new();
        // Checked at compile time below: the default prompt fits any context it runs in.
        let _ = prompt.extend_from_slice(&DEFAULT_PROMPT[..DEFAULT_PROMPT.len().min(N_CTX)]);
        let mut probes = ProbeSet::new();
        for p in DEFAULT_PROBES {
            // The patterns are valid names and fit the set (checked by the host tests).
            let _ = probes.add_pattern(p);
        }
        Settings {
            prompt,
            generate: DEFAULT_GENERATE,
            probes,
            record: true,
            pieces: false,
            run_id: DEFAULT_RUN_ID,
            kv: KvStorage::F32,
            probes_given: false,
        }
    }

    /// Applies one argument. Keys: `tokens=1,2,3` (the prompt), `generate=N`,
    /// `probe=PATTERN` (repeatable; the first replaces the default set; `probe=none`
    /// records no hook, only header, token and end frames), `run=ID`, `record=0|1`
    /// (or `record=pieces`: no recorder, a marker at every hook point, see [`Pieces`]),
    /// `kv=f32|f16|int8`.
    /// Returns `Ok(false)` for a key it does not know (the binary may know it).
    pub fn apply<'a>(&mut self, key: &'a str, value: &'a str) -> Result<bool, ArgError<'a>> {
        let bad = |why| ArgError { key, value, why };
        match key {
            "tokens" => {
                self.prompt.clear();
                for t in value.split(',') {
                    let t = t
                        .parse()
                        .map_err(|_| bad("expected token ids like 0,5,7"))?;
                    self.prompt
                        .push(t)
                        .map_err(|_| bad("more tokens than the model's context (n_ctx)"))?;
                }
            }
            "generate" => {
                self.generate = value.parse().map_err(|_| bad("expected a number"))?;
            }
            "probe" => {
                if !self.probes_given {
                    self.probes = ProbeSet::new();
                    self.probes_given = true;
                }
                if value != "none" {
                    self.probes.add_pattern(value).map_err(|e| match e {
                        Error::TooManyProbes { .. } => bad("too many probes for the set's capacity"),
                        _ => bad("not a hook name pattern (e.g. blocks.*.attn.hook_pattern, blocks.0.attn.hook_z[1]@2..5:f16, logits)"),
                    })?;
                }
            }
            "run" => {
                self.run_id = value.parse().map_err(|_| bad("expected a number"))?;
            }
            "kv" => {
                self.kv = KvStorage::from_name(value).ok_or(bad("expected f32, f16 or int8"))?;
            }
            "record" => {
                (self.record, self.pieces) = match value {
                    "1" | "on" => (true, false),
                    "0" | "off" => (false, false),
                    "pieces" => (false, true),
                    _ => return Err(bad("expected 0, 1 or pieces")),
                };
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

const _: () = assert!(
    DEFAULT_PROMPT.len() <= N_CTX,
    "the default prompt does not fit the embedded model's context"
);

// ---------------------------------------------------------------------------
// The run

/// What stopped a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunError {
    /// The embedded blob does not load (`Model::from_bytes`).
    Model(Error),
    /// The working memory does not fit the model (`Session::new`).
    Workspace(Error),
    /// The prompt is empty.
    EmptyPrompt,
    /// Prompt and generation need more positions than the model's context.
    TooLong {
        prompt: usize,
        generate: usize,
        n_ctx: u32,
    },
    /// A prompt token is not below `d_vocab`.
    Token { token: u32, d_vocab: u32 },
    /// The probe set names a layer, head, position or hook the model does not have.
    Probes(Error),
    /// Writing the trace failed (the first error; the run itself went on).
    Trace(Error),
    /// A model step failed.
    Step { pos: usize, error: Error },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Model(e) => write!(f, "the embedded model does not load: {e}"),
            RunError::Workspace(e) => write!(f, "working memory: {e}"),
            RunError::EmptyPrompt => write!(f, "empty prompt"),
            RunError::TooLong {
                prompt,
                generate,
                n_ctx,
            } => write!(
                f,
                "{prompt} prompt tokens + {generate} generated exceed the model's context of {n_ctx} positions"
            ),
            RunError::Token { token, d_vocab } => {
                write!(f, "token {token} is out of range (d_vocab = {d_vocab})")
            }
            RunError::Probes(e) => write!(f, "probe set: {e}"),
            RunError::Trace(e) => write!(f, "trace channel: {e}"),
            RunError::Step { pos, error } => write!(f, "step at position {pos}: {error}"),
        }
    }
}

impl defmt::Format for RunError {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{}", defmt::Display2Format(self))
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Positions processed (prompt + generated).
    pub positions: usize,
    /// The generated tokens (each was fed back as the next input).
    pub generated: Tokens,
    /// The recorder's summary (`None` without recording).
    pub summary: Option<Summary>,
    /// Clock ticks spent inside the steps, all positions.
    pub step_ticks: u64,
}

/// Runs the model in `blob`: loads it, lays a session out in `workspace`, starts a
/// trace run on `sink` (unless `settings.record` is off), processes the prompt and
/// generates `settings.generate` tokens greedily with the KV cache, one
/// [`Stepper::step`] per position, then writes the trace's end frame.
///
/// Exactly what `tinylens run MODEL --tokens .. --probe .. --generate N --run-id ID`
/// does on the host, so the two traces are equal byte for byte.
///
/// `between_steps` runs after every step, outside the measured region, and once after
/// the end frame: the place to drain a trace ring ([`tinylens_core::trace::FrameRing`])
/// to the transport when nothing drains it from an interrupt (`|| {}` otherwise).
///
/// A sink that drops frames when it is full ([`tinylens_core::trace::DropWhenFull`])
/// is not a failure: the dropped frames are counted in [`Outcome::summary`] and in the
/// trace's end frame.
pub fn run<P: OutputPin, D: DelayNs, C: Clock, S: Sink>(
    blob: &[u8],
    workspace: &mut [f32],
    frame_buf: &mut [u8],
    settings: &Settings,
    stepper: &mut Stepper<P, D, C>,
    sink: S,
    mut between_steps: impl FnMut(),
) -> Result<Outcome, RunError> {
    let model = Model::from_bytes(blob).map_err(RunError::Model)?;
    let cfg = *model.config();
    let (prompt, generate) = (&settings.prompt[..], settings.generate);
    if prompt.is_empty() {
        return Err(RunError::EmptyPrompt);
    }
    if prompt.len() + generate > cfg.n_ctx as usize {
        return Err(RunError::TooLong {
            prompt: prompt.len(),
            generate,
            n_ctx: cfg.n_ctx,
        });
    }
    if let Some(&token) = prompt.iter().find(|&&t| t >= cfg.d_vocab) {
        return Err(RunError::Token {
            token,
            d_vocab: cfg.d_vocab,
        });
    }
    settings.probes.validate(&cfg).map_err(RunError::Probes)?;
    let workspace_len = workspace.len();
    let options = SessionOptions {
        block: 1,
        kv: settings.kv,
    };
    let mut session =
        Session::with_options(&model, workspace, options, Portable).map_err(RunError::Workspace)?;
    defmt::info!(
        "model {=str}: {=usize} bytes, crc {=u32:08x}; {=u32} layers x {=u32} heads, d_model {=u32}, d_vocab {=u32}, n_ctx {=u32}",
        MODEL_NAME,
        blob.len(),
        model.checksum(),
        cfg.n_layers,
        cfg.n_heads,
        cfg.d_model,
        cfg.d_vocab,
        cfg.n_ctx
    );
    defmt::info!(
        "memory: workspace {=usize} f32 ({=usize} needed), frame buffer {=usize} bytes",
        workspace_len,
        cfg.workspace_len(),
        frame_buf.len()
    );
    defmt::info!(
        "run {=u32}: prompt {=[?]}, generate {=usize}, {=usize} probes{=str}",
        settings.run_id,
        prompt,
        generate,
        settings.probes.len(),
        if settings.record {
            ""
        } else {
            ", recording off"
        }
    );

    let mut recorder = if settings.record {
        Some(
            Recorder::begin_run(&model, &settings.probes, sink, frame_buf, settings.run_id)
                .map_err(RunError::Trace)?,
        )
    } else {
        None
    };
    let mut generated = Tokens::new();
    let mut next = 0;
    let mut step_ticks = 0u64;
    for pos in 0..prompt.len() + generate {
        let (token, kind) = match prompt.get(pos) {
            Some(&t) => (t, "prompt"),
            None => {
                // Fits: prompt + generate <= n_ctx = capacity.
                let _ = generated.push(next);
                (next, "generated")
            }
        };
        let (result, ticks) = stepper.step(|| {
            let logits = match recorder.as_mut() {
                Some(r) => session.step_with(token, r)?,
                None if settings.pieces => session.step_with(token, &mut Pieces)?,
                None => session.step(token)?,
            };
            Ok::<_, Error>(sample::greedy(logits))
        });
        next = result.map_err(|error| RunError::Step { pos, error })?;
        step_ticks += ticks as u64;
        between_steps();
        if settings.pieces {
            defmt::info!("pieces {=[u8]}", Pieces::take(&mut [0; PIECES_MAX]));
        }
        defmt::info!(
            "pos {=usize} {=str} token {=u32} -> {=u32}: {=u32} ticks ({=u32} us), marks {=u32}",
            pos,
            kind,
            token,
            next,
            ticks,
            stepper.micros(ticks),
            icount_marks()
        );
    }
    let summary = match recorder {
        Some(r) => {
            let (summary, _) = r.finish();
            between_steps();
            defmt::info!(
                "trace: {=u32} frames, {=u32} records, {=u32} dropped",
                summary.frames,
                summary.records,
                summary.dropped
            );
            match summary.error {
                // Frames a full ring dropped by the caller's policy: counted, not fatal.
                None | Some(Error::SinkFull) => {}
                Some(e) => return Err(RunError::Trace(e)),
            }
            Some(summary)
        }
        None => None,
    };
    defmt::info!(
        "done: {=usize} positions, generated {=[?]}, {=u64} ticks in steps",
        prompt.len() + generate,
        &generated[..],
        step_ticks
    );
    Ok(Outcome {
        positions: prompt.len() + generate,
        generated,
        summary,
        step_ticks,
    })
}

// ---------------------------------------------------------------------------
// The board examples' loop: the trace ring drained by the main loop

/// [`run`] with the trace in `ring`, drained by the main loop: the recorder writes
/// frames into the ring during each step, and between steps (and whenever a step finds
/// the ring full: policy *block*) `send` gets everything committed, as contiguous
/// slices of whole frames (a frame may span two slices at the ring's wrap), to write
/// all of it to the transport (a UART's `write_all`, an RTT channel). The rest goes
/// after the run. A transport error loses the bytes of that slice (later ones are still
/// sent) and makes the run [`RunError::Trace`]`(`[`Error::SinkFailed`]`)`.
///
/// The loop the board examples share (`rp2040`, `stm32f4` with `DRAIN_FROM_INTERRUPT`
/// off); for a drain from an interrupt, see [`Notify`].
pub fn run_with_ring<const N: usize, P: OutputPin, D: DelayNs, C: Clock, E>(
    ring: &mut trace::FrameRing<N>,
    blob: &[u8],
    workspace: &mut [f32],
    frame_buf: &mut [u8],
    settings: &Settings,
    stepper: &mut Stepper<P, D, C>,
    send: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<Outcome, RunError> {
    let (writer, reader) = ring.split();
    // The drain between steps and the wait of a step that found the ring full share
    // the reader and the transport; they never run at the same time.
    let reader = RefCell::new(reader);
    let send = RefCell::new(send);
    let failed = Cell::new(false);
    let drain = || {
        let mut send = send.borrow_mut();
        let mut reader = reader.borrow_mut();
        while !reader.is_empty() {
            if reader.drain_all(|bytes| (*send)(bytes)).is_err() {
                // Skip what failed, so that a broken transport cannot hang the run.
                let n = reader.readable().len();
                reader.release(n);
                failed.set(true);
            }
        }
    };
    let result = run(
        blob,
        workspace,
        frame_buf,
        settings,
        stepper,
        writer.blocking(drain),
        drain,
    );
    drain();
    match result {
        Ok(_) if failed.get() => Err(RunError::Trace(Error::SinkFailed)),
        r => r,
    }
}

/// A sink that runs `notify` after every frame it has taken: to start an
/// interrupt-driven drain (pend the transmit interrupt, enable the transmit-empty
/// interrupt, start a DMA transfer) as soon as there is something to send. The
/// handler owns the ring's reader (see `tinylens_core::trace::FrameRing`, "Draining
/// from an interrupt or by DMA").
pub struct Notify<S, F> {
    pub sink: S,
    pub notify: F,
}

impl<S: Sink, F: FnMut()> Sink for Notify<S, F> {
    #[inline]
    fn write_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        let r = self.sink.write_frame(frame);
        (self.notify)();
        r
    }
    fn write_last_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        let r = self.sink.write_last_frame(frame);
        (self.notify)();
        r
    }
    #[inline(always)]
    fn lend(&mut self, max: usize) -> Result<Option<&mut [u8]>, Error> {
        self.sink.lend(max)
    }
    #[inline(always)]
    fn commit(&mut self, len: usize) -> Result<(), Error> {
        let r = self.sink.commit(len);
        (self.notify)();
        r
    }
}

// ---------------------------------------------------------------------------
// The ring sink, either policy

/// A trace ring's writer with the policy chosen at run time (one type for both, so
/// that a binary calls [`run`] once).
pub enum RingSink<'a, const N: usize, F> {
    /// Drop whole frames that do not fit (counted in the end frame).
    Drop(trace::DropWhenFull<'a, N>),
    /// Wait (run `F`) until the drain made room.
    Block(trace::BlockWhenFull<'a, N, F>),
}

impl<const N: usize, F: FnMut()> Sink for RingSink<'_, N, F> {
    #[inline]
    fn write_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        match self {
            RingSink::Drop(s) => s.write_frame(frame),
            RingSink::Block(s) => s.write_frame(frame),
        }
    }
    fn write_last_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        match self {
            RingSink::Drop(s) => s.write_last_frame(frame),
            RingSink::Block(s) => s.write_last_frame(frame),
        }
    }
    #[inline(always)]
    fn lend(&mut self, max: usize) -> Result<Option<&mut [u8]>, Error> {
        match self {
            RingSink::Drop(s) => s.lend(max),
            RingSink::Block(s) => s.lend(max),
        }
    }
    #[inline(always)]
    fn commit(&mut self, len: usize) -> Result<(), Error> {
        match self {
            RingSink::Drop(s) => s.commit(len),
            RingSink::Block(s) => s.commit(len),
        }
    }
}

/// A trace ring ([`RingSink`]) or a direct sink `D` (a closure that writes each frame
/// to the transport from inside the step), chosen at run time: one sink type, so that
/// a firmware that offers both holds one copy of the traced forward pass.
pub enum TraceSink<R, D> {
    Ring(R),
    Direct(D),
}

impl<R: Sink, D: Sink> Sink for TraceSink<R, D> {
    #[inline]
    fn write_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        match self {
            TraceSink::Ring(s) => s.write_frame(frame),
            TraceSink::Direct(s) => s.write_frame(frame),
        }
    }
    fn write_last_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        match self {
            TraceSink::Ring(s) => s.write_last_frame(frame),
            TraceSink::Direct(s) => s.write_last_frame(frame),
        }
    }
    #[inline(always)]
    fn lend(&mut self, max: usize) -> Result<Option<&mut [u8]>, Error> {
        match self {
            TraceSink::Ring(s) => s.lend(max),
            TraceSink::Direct(s) => s.lend(max),
        }
    }
    #[inline(always)]
    fn commit(&mut self, len: usize) -> Result<(), Error> {
        match self {
            TraceSink::Ring(s) => s.commit(len),
            TraceSink::Direct(s) => s.commit(len),
        }
    }
}

// ---------------------------------------------------------------------------
// Instruction-count markers

/// Marker id written before a step.
pub const MARK_STEP_BEGIN: u32 = 1;
/// Marker id written after a step.
pub const MARK_STEP_END: u32 = 2;

/// Number of times [`tinylens_icount_mark`] ran.
static MARKS: AtomicU32 = AtomicU32::new(0);
/// Id passed to the latest [`tinylens_icount_mark`] call (for a debugger).
static LAST_MARK: AtomicU32 = AtomicU32::new(0);

/// Instruction-count marker. The QEMU plugin `scripts/qemu/icount.c`, given this
/// function's address (`run-qemu.sh --icount` looks the symbol up in the ELF, hence
/// the unmangled name), records the running count of executed guest instructions each
/// time it is entered. On a real board it costs a few cycles. The body touches its own
/// statics so that LLVM cannot merge it with another function (a merged copy would
/// fire the plugin from elsewhere). Plain load and store: ARMv6-M has no atomic
/// read-modify-write, and the firmware is single-threaded.
#[inline(never)]
#[no_mangle]
pub extern "C" fn tinylens_icount_mark(id: u32) {
    MARKS.store(
        MARKS.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
    LAST_MARK.store(id, Ordering::Relaxed);
}

/// How many markers have run so far.
pub fn icount_marks() -> u32 {
    MARKS.load(Ordering::Relaxed)
}

/// Most hook points one step passes (the log line of [`Pieces`] holds this many).
pub const PIECES_MAX: usize = 160;

/// Hook points a [`Pieces`] step passed, in order, and how many.
static PIECE_POINTS: [AtomicU8; PIECES_MAX] = [const { AtomicU8::new(0) }; PIECES_MAX];
static PIECE_COUNT: AtomicU32 = AtomicU32::new(0);

/// Hooks that want nothing but mark every hook point the forward pass passes
/// ([`tinylens_icount_mark`] with id `100 + point`) and note the point: the
/// instructions between two consecutive marks are the piece of the step between those
/// hook points (e.g. `Pattern` to `Z`: the weighted sum of one head), which
/// `scripts/bench_firmware.sh` adds up per piece. The hook checks themselves are those
/// of any recorder (`wants` is asked, `hook` never called).
pub struct Pieces;

impl Pieces {
    /// The points noted since the last call (at most [`PIECES_MAX`]), into `buf`.
    pub fn take(buf: &mut [u8; PIECES_MAX]) -> &[u8] {
        // Load and store, not `swap`: ARMv6-M has no atomic read-modify-write (the
        // firmware is single-threaded).
        let n = (PIECE_COUNT.load(Ordering::Relaxed) as usize).min(PIECES_MAX);
        PIECE_COUNT.store(0, Ordering::Relaxed);
        for (b, p) in buf.iter_mut().zip(&PIECE_POINTS[..n]) {
            *b = p.load(Ordering::Relaxed);
        }
        &buf[..n]
    }
}

impl tinylens_core::Hooks for Pieces {
    #[inline(never)]
    fn wants(&self, point: tinylens_core::HookPoint) -> bool {
        tinylens_icount_mark(100 + point as u32);
        let n = PIECE_COUNT.load(Ordering::Relaxed);
        if let Some(slot) = PIECE_POINTS.get(n as usize) {
            slot.store(point as u8, Ordering::Relaxed);
        }
        PIECE_COUNT.store(n.wrapping_add(1), Ordering::Relaxed);
        false
    }

    fn hook(&mut self, _site: tinylens_core::Site, _value: &mut [f32]) {}
}

// ---------------------------------------------------------------------------
// Per-step instrumentation

/// A free-running counter for step timings (a cycle counter on a board, SysTick in
/// QEMU), read just inside the busy pulse.
pub trait Clock {
    /// The current count.
    fn now(&mut self) -> u32;
    /// Ticks from reading `start` to reading `end` (wrapping).
    fn elapsed(&self, start: u32, end: u32) -> u32 {
        end.wrapping_sub(start)
    }
    /// Ticks per second (0: unknown).
    fn hz(&self) -> u32;
}

/// No clock: every step takes 0 ticks.
pub struct NoClock;

impl Clock for NoClock {
    fn now(&mut self) -> u32 {
        0
    }
    fn hz(&self) -> u32 {
        0
    }
}

/// Runs model steps with a busy pin high during each step (for a logic analyser or
/// scope: the pulse width is the step's latency), a clock reading and
/// instruction-count markers just inside the pulse, then an optional pause.
pub struct Stepper<P, D, C> {
    busy: P,
    delay: D,
    clock: C,
    gap_us: u32,
    steps: u32,
}

impl<P: OutputPin, D: DelayNs, C: Clock> Stepper<P, D, C> {
    /// `busy` is driven low now; `gap_us` microseconds of `delay` follow each step.
    pub fn new(mut busy: P, delay: D, clock: C, gap_us: u32) -> Self {
        // GPIO writes are infallible on the HALs in use; a failing pin only loses timing.
        let _ = busy.set_low();
        Self {
            busy,
            delay,
            clock,
            gap_us,
            steps: 0,
        }
    }

    /// Runs `step` (e.g. `|| session.step(token)`) between the busy-pin edges, the
    /// clock readings and the instruction-count markers; returns what it returned and
    /// the clock ticks it took. Log nothing inside `step`: everything in it counts.
    #[inline(always)]
    pub fn step<T, E>(&mut self, step: impl FnOnce() -> Result<T, E>) -> (Result<T, E>, u32) {
        let _ = self.busy.set_high();
        let start = self.clock.now();
        tinylens_icount_mark(MARK_STEP_BEGIN);
        let out = step();
        tinylens_icount_mark(MARK_STEP_END);
        let end = self.clock.now();
        let _ = self.busy.set_low();
        self.steps = self.steps.wrapping_add(1);
        if self.gap_us > 0 {
            self.delay.delay_us(self.gap_us);
        }
        (out, self.clock.elapsed(start, end))
    }

    /// `ticks` of the clock in microseconds (0 when its rate is unknown).
    pub fn micros(&self, ticks: u32) -> u32 {
        match self.clock.hz() {
            0 => 0,
            hz => (ticks as u64 * 1_000_000 / hz as u64) as u32,
        }
    }

    /// Steps run so far.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// Gives the pin, the delay and the clock back.
    pub fn release(self) -> (P, D, C) {
        (self.busy, self.delay, self.clock)
    }
}

/// An `OutputPin` that goes nowhere (QEMU, or a board without a spare pin).
pub struct NoPin;

impl embedded_hal::digital::ErrorType for NoPin {
    type Error = core::convert::Infallible;
}

impl OutputPin for NoPin {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A `DelayNs` that does nothing (QEMU: pauses only add instructions).
pub struct NoDelay;

impl DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}
