//! The forward pass, with a KV cache, in caller-provided memory.
//!
//! The pass processes a *block* of consecutive positions at once: every weight matrix
//! multiplies the whole block ([`kernels::MatMul`]), so each weight is fetched once
//! per block instead of once per position. Stepping one token is the block of one,
//! and any block gives the same bits as stepping its positions one by one: each
//! matrix product keeps the sums of the matrix-vector kernel, position `p` attends to
//! the cached keys and values of positions `0..=p` (TransformerLens's causal attention
//! over the whole prompt), and int8 activations are quantized per position as
//! stepping does. A device with slow flash can prefill a block too, as far as its
//! RAM allows ([`Config::block_workspace_len`]).
//!
//! Hooks see every value per [`Site`] (layer, head, position) as before; a block hands
//! them over point by point (every position of the block at that point, through
//! [`Hooks::hook_rows`]), which is the same set of values, each at its own site, each
//! handed over before anything that uses it is computed.

use crate::blob::{LayerTensors, Model};
use crate::config::{Config, Normalization, Positional};
use crate::hooks::{HookPoint, Hooks, NoHooks, Site};
use crate::kernels::{self, Block, MatMul, Portable};
use crate::kv::{KvCache, KvStorage};
use crate::quant::Tensor;
use crate::Error;

/// A model with its working memory: KV caches, residual streams and scratch for a
/// block of positions, all carved from one caller-provided `&mut [f32]` of at least
/// [`Config::block_workspace_len`] words (`Config::workspace_len` for one position).
/// `K` is the matrix-product implementation ([`Portable`] unless a host plugs in its
/// own, which must give the same bits).
pub struct Session<'m, 'w, K: MatMul = Portable> {
    model: Model<'m>,
    kernels: K,
    pos: usize,
    block: usize,
    /// Positions of the last block processed (its logits are `logits[..last_n]`).
    last_n: usize,
    kv: KvStorage,
    k_cache: KvCache<'w>,
    v_cache: KvCache<'w>,
    /// With a quantized cache: the block's keys and values as f32 (`[2][pos][head][d_head]`)
    /// until the hooks have seen them, and one head vector read back. Empty for f32.
    kv_stage: &'w mut [f32],
    kv_row: &'w mut [f32],
    resid: &'w mut [f32],
    normed: &'w mut [f32],
    pos_embed: &'w mut [f32],
    q: &'w mut [f32],
    scores: &'w mut [f32],
    z: &'w mut [f32],
    result: &'w mut [f32],
    attn_out: &'w mut [f32],
    logits: &'w mut [f32],
    /// The int8 scale of each position's quantized activations.
    scales: &'w mut [f32],
    xq: &'w mut [i8],
    /// `xq` laid out for the DSP int8 kernel ([`kernels::arrange_pairs`]).
    pairs: &'w mut [u32],
}

fn take<'w>(buf: &mut &'w mut [f32], n: usize) -> &'w mut [f32] {
    let (head, tail) = core::mem::take(buf).split_at_mut(n);
    *buf = tail;
    head
}

impl<'m, 'w> Session<'m, 'w, Portable> {
    /// Lays a one-position session out in `workspace`; a buffer shorter than
    /// [`Config::workspace_len`] is [`Error::BufferTooSmall`].
    pub fn new(model: &Model<'m>, workspace: &'w mut [f32]) -> Result<Self, Error> {
        Self::with_block(model, workspace, 1)
    }

    /// A session that processes up to `block` positions at once (at least one), in
    /// [`Config::block_workspace_len`]`(block)` words.
    pub fn with_block(
        model: &Model<'m>,
        workspace: &'w mut [f32],
        block: usize,
    ) -> Result<Self, Error> {
        Session::with_kernels(model, workspace, block, Portable)
    }
}

/// How a session is laid out: the positions one [`Session::forward`] takes, and the
/// KV cache's storage. Its working memory is [`Config::session_workspace_len`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// Most positions processed at once (at least one).
    pub block: usize,
    pub kv: KvStorage,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            block: 1,
            kv: KvStorage::F32,
        }
    }
}

impl<'m, 'w, K: MatMul> Session<'m, 'w, K> {
    /// [`Session::with_block`] with other matrix-product kernels.
    pub fn with_kernels(
        model: &Model<'m>,
        workspace: &'w mut [f32],
        block: usize,
        kernels: K,
    ) -> Result<Self, Error> {
        let options = SessionOptions {
            block,
            ..SessionOptions::default()
        };
        Session::with_options(model, workspace, options, kernels)
    }

    /// A session laid out as `options` say, in
    /// [`Config::session_workspace_len`]`(options.block, options.kv)` words.
    pub fn with_options(
        model: &Model<'m>,
        workspace: &'w mut [f32],
        options: SessionOptions,
        kernels: K,
    ) -> Result<Self, Error> {
        let cfg = *model.config();
        let n = options.block.max(1);
        let kv = options.kv;
        let needed = cfg.session_workspace_len(n, kv);
        if workspace.len() < needed {
            return Err(Error::BufferTooSmall {
                needed,
                provided: workspace.len(),
            });
        }
        let mut buf = &mut workspace[..needed];
        let (d_model, qkv, d_head) = (cfg.d_model as usize, cfg.qkv_len(), cfg.d_head as usize);
        let shortformer = if cfg.positional == Positional::Shortformer {
            d_model
        } else {
            0
        };
        let values = cfg.kv_cache_len();
        let words = kv.cache_words(values as u64, d_head as u64) as usize;
        let stage = match kv {
            KvStorage::F32 => 0,
            _ => 2 * n * qkv,
        };
        let row = if kv == KvStorage::F32 { 0 } else { d_head };
        let mut s = Session {
            model: *model,
            kernels,
            pos: 0,
            block: n,
            last_n: 0,
            kv,
            k_cache: KvCache::new(kv, take(&mut buf, words), values, d_head),
            v_cache: KvCache::new(kv, take(&mut buf, words), values, d_head),
            kv_stage: take(&mut buf, stage),
            kv_row: take(&mut buf, row),
            resid: take(&mut buf, n * d_model),
            normed: take(&mut buf, n * d_model),
            pos_embed: take(&mut buf, n * shortformer),
            q: take(&mut buf, n * qkv),
            scores: take(&mut buf, cfg.n_ctx as usize),
            z: take(&mut buf, n * d_head),
            result: take(&mut buf, n * d_model),
            attn_out: take(&mut buf, n * d_model),
            logits: take(&mut buf, n * cfg.d_vocab_out as usize),
            scales: take(&mut buf, n),
            xq: &mut [],
            pairs: &mut [],
        };
        // The int8 activations share the f32 region, four to a word, followed by their
        // DSP layout, two 16-bit lanes to a word (see `Config::workspace_len`).
        let q_words = (n * cfg.quantized_input_len()).div_ceil(4);
        let (q, pairs) = buf.split_at_mut(q_words.min(buf.len()));
        s.xq = bytemuck::cast_slice_mut::<f32, i8>(q);
        s.pairs = bytemuck::cast_slice_mut::<f32, u32>(pairs);
        Ok(s)
    }

    pub fn model(&self) -> &Model<'m> {
        &self.model
    }

    pub fn config(&self) -> &Config {
        self.model.config()
    }

    /// Number of positions processed so far (the next token's position).
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// How the KV cache is stored.
    pub fn kv_storage(&self) -> KvStorage {
        self.kv
    }

    /// Most positions one [`Session::forward`] call takes.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Forgets all positions; the next token is position 0.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.last_n = 0;
    }

    /// The logits of the last processed position.
    pub fn logits(&self) -> &[f32] {
        let v = self.model.config().d_vocab_out as usize;
        let at = self.last_n.saturating_sub(1) * v;
        &self.logits[at..at + v]
    }

    /// The logits of every position of the last block, `[positions][d_vocab_out]`.
    pub fn block_logits(&self) -> &[f32] {
        &self.logits[..self.last_n * self.model.config().d_vocab_out as usize]
    }

    /// Processes one token at the next position; returns the logits for the position after it.
    pub fn step(&mut self, token: u32) -> Result<&[f32], Error> {
        self.step_with(token, &mut NoHooks)
    }

    /// Processes `tokens` from the current position, a block at a time; returns the
    /// last position's logits.
    pub fn prefill<H: Hooks>(&mut self, tokens: &[u32], hooks: &mut H) -> Result<&[f32], Error> {
        for chunk in tokens.chunks(self.block) {
            self.forward(chunk, hooks)?;
        }
        Ok(self.logits())
    }

    /// [`Session::step`] with hooks: every hook point is handed to `hooks` as it is
    /// produced, and what a hook leaves in the value is what the pass goes on with.
    ///
    /// On error nothing of this position is kept: the position does not advance.
    pub fn step_with<H: Hooks>(&mut self, token: u32, hooks: &mut H) -> Result<&[f32], Error> {
        self.forward(&[token], hooks)?;
        Ok(self.logits())
    }

    /// Processes a block of `tokens` (at most [`Session::block`]) at the next
    /// positions; returns their logits, `[tokens.len()][d_vocab_out]`. The values, and
    /// what the hooks see and change, are those of stepping the tokens one by one.
    ///
    /// A token out of range or a block past the context is refused before anything is
    /// computed. Non-finite logits at a position end the block there: the positions
    /// before it are kept (as stepping would have kept them), it and those after are not.
    pub fn forward<H: Hooks>(&mut self, tokens: &[u32], hooks: &mut H) -> Result<&[f32], Error> {
        let cfg = *self.model.config();
        let n = tokens.len();
        if n > self.block {
            return Err(Error::BufferTooSmall {
                needed: cfg.session_workspace_len(n, self.kv),
                provided: cfg.session_workspace_len(self.block, self.kv),
            });
        }
        if let Some(&token) = tokens.iter().find(|&&t| t >= cfg.d_vocab) {
            return Err(Error::TokenOutOfRange {
                token,
                d_vocab: cfg.d_vocab,
            });
        }
        if self.pos + n > cfg.n_ctx as usize {
            return Err(Error::ContextFull { n_ctx: cfg.n_ctx });
        }
        if n == 0 {
            return Ok(&[]);
        }
        let p0 = self.pos;
        let d_model = cfg.d_model as usize;
        if HOOKS_COMPILED {
            for (i, &t) in tokens.iter().enumerate() {
                hooks.token((p0 + i) as u16, t);
            }
        }
        let site = |point, layer: usize| Site {
            point,
            layer: layer as u16,
            head: None,
            pos: p0 as u16,
        };

        for (i, &t) in tokens.iter().enumerate() {
            self.model
                .w_e()
                .dequantize_row(t as usize, &mut self.resid[i * d_model..(i + 1) * d_model]);
        }
        emit(hooks, site(HookPoint::Embed, 0), n, d_model, self.resid);
        let pos_buf: &mut [f32] = match cfg.positional {
            Positional::Standard => self.normed,
            Positional::Shortformer => self.pos_embed,
        };
        for i in 0..n {
            self.model
                .w_pos()
                .dequantize_row(p0 + i, &mut pos_buf[i * d_model..(i + 1) * d_model]);
        }
        emit(hooks, site(HookPoint::PosEmbed, 0), n, d_model, pos_buf);
        if cfg.positional == Positional::Standard {
            kernels::add_assign(&mut self.resid[..n * d_model], &self.normed[..n * d_model]);
        }

        for layer in 0..cfg.n_layers as usize {
            let lt = self.model.layer(layer);
            emit(
                hooks,
                site(HookPoint::ResidPre, layer),
                n,
                d_model,
                self.resid,
            );
            layer_norm(
                &cfg,
                &self.resid[..n * d_model],
                self.normed,
                lt.ln1_w.zip(lt.ln1_b),
                hooks,
                (HookPoint::Ln1Scale, HookPoint::Ln1Normalized),
                site(HookPoint::Ln1Scale, layer),
            );
            self.attention(&cfg, &lt, layer, n, hooks);
            let attn_out = &mut self.attn_out[..n * d_model];
            for row in attn_out.chunks_exact_mut(d_model) {
                add_bias(&lt.b_o, 0, row);
            }
            emit(hooks, site(HookPoint::AttnOut, layer), n, d_model, attn_out);
            kernels::add_assign(
                &mut self.resid[..n * d_model],
                &self.attn_out[..n * d_model],
            );
            emit(
                hooks,
                site(HookPoint::ResidPost, layer),
                n,
                d_model,
                self.resid,
            );
        }

        layer_norm(
            &cfg,
            &self.resid[..n * d_model],
            self.normed,
            self.model.ln_final(),
            hooks,
            (HookPoint::LnFinalScale, HookPoint::LnFinalNormalized),
            site(HookPoint::LnFinalScale, 0),
        );
        let w_u = self.model.w_u();
        let v = cfg.d_vocab_out as usize;
        let x = quantize_rows(
            n,
            d_model,
            self.normed,
            self.xq,
            self.scales,
            self.pairs,
            kernels::needs_quantized_input(w_u.kind),
        );
        let logits = &mut self.logits[..n * v];
        self.kernels.matmul(&w_u, &x, logits);
        for row in logits.chunks_exact_mut(v) {
            add_bias(&self.model.b_u(), 0, row);
        }
        emit(hooks, site(HookPoint::Logits, 0), n, v, logits);
        if let Some(bad) = logits
            .chunks_exact(v)
            .position(|row| !row.iter().all(|x| x.is_finite()))
        {
            self.pos = p0 + bad;
            self.last_n = bad;
            return Err(Error::NonFiniteLogits {
                pos: (p0 + bad) as u32,
            });
        }
        self.pos = p0 + n;
        self.last_n = n;
        Ok(&self.logits[..n * v])
    }

    /// One attention layer for the block: fills the caches' rows for its positions,
    /// and leaves `sum_h result_h` (without `b_O`) in `attn_out`.
    fn attention<H: Hooks>(
        &mut self,
        cfg: &Config,
        lt: &LayerTensors<'_>,
        layer: usize,
        n: usize,
        hooks: &mut H,
    ) {
        let p0 = self.pos;
        let (n_heads, d_head, d_model) = (
            cfg.n_heads as usize,
            cfg.d_head as usize,
            cfg.d_model as usize,
        );
        let qkv = n_heads * d_head;
        let n_ctx = cfg.n_ctx as usize;
        // Head vector `(layer, h, position j)` of a cache, and where its values start.
        let row = |h: usize, j: usize| (layer * n_heads + h) * n_ctx + j;
        let slot = |h: usize, j: usize| row(h, j) * d_head;
        let site = |point, head: usize, pos: usize| Site {
            point,
            layer: layer as u16,
            head: Some(head as u16),
            pos: pos as u16,
        };
        let quantized = |t: &Tensor<'_>| kernels::needs_quantized_input(t.kind);

        // Values read the normalized residual; with shortformer positions, queries and
        // keys read it plus W_pos, so V is computed first and W_pos added in place after.
        // All heads in one product (each row's sum is the same however the rows are
        // grouped), into `q` (free until W_Q's turn), then into each head's cache rows.
        let normed = &mut self.normed[..n * d_model];
        let x = quantize_rows(
            n,
            d_model,
            normed,
            self.xq,
            self.scales,
            self.pairs,
            quantized(&lt.w_v),
        );
        self.kernels.matmul(&lt.w_v, &x, &mut self.q[..n * qkv]);
        // Keys and values go straight into an f32 cache (where the hooks then see and
        // change them); a quantized cache stores them only after the hooks, so they
        // wait, with their biases, in `kv_stage`.
        let (k_stage, v_stage) = self.kv_stage.split_at_mut(self.kv_stage.len() / 2);
        let to_cache = |cache: &mut KvCache<'_>, stage: &mut [f32], q: &[f32], b: &Tensor<'_>| {
            for (i, r) in q.chunks_exact(qkv).enumerate() {
                for h in 0..n_heads {
                    let out = match cache.as_f32_mut() {
                        Some(c) => &mut c[slot(h, p0 + i)..slot(h, p0 + i) + d_head],
                        None => &mut stage[i * qkv + h * d_head..i * qkv + (h + 1) * d_head],
                    };
                    out.copy_from_slice(&r[h * d_head..(h + 1) * d_head]);
                    add_bias(b, h * d_head, out);
                }
            }
        };
        to_cache(&mut self.v_cache, v_stage, &self.q[..n * qkv], &lt.b_v);
        let mut quantized_now = quantized(&lt.w_v);
        if cfg.positional == Positional::Shortformer {
            for (x, e) in self.normed[..n * d_model]
                .iter_mut()
                .zip(self.pos_embed.iter())
            {
                *x += e;
            }
            quantized_now = false;
        }
        let need_q = quantized(&lt.w_q) || quantized(&lt.w_k);
        let x = quantize_rows(
            n,
            d_model,
            &self.normed[..n * d_model],
            self.xq,
            self.scales,
            self.pairs,
            need_q && !quantized_now,
        );
        // K first, through `q` as V went, then Q itself.
        self.kernels.matmul(&lt.w_k, &x, &mut self.q[..n * qkv]);
        to_cache(&mut self.k_cache, k_stage, &self.q[..n * qkv], &lt.b_k);
        self.kernels.matmul(&lt.w_q, &x, &mut self.q[..n * qkv]);
        for row in self.q[..n * qkv].chunks_exact_mut(qkv) {
            add_bias(&lt.b_q, 0, row);
        }
        for point in [HookPoint::Q, HookPoint::K, HookPoint::V] {
            if !active(hooks, point) {
                continue;
            }
            for h in 0..n_heads {
                // Q and the staged keys and values are `[pos][head][d_head]`; a head's
                // rows of an f32 cache are consecutive.
                let (values, stride) = match point {
                    HookPoint::Q => (&mut self.q[h * d_head..n * qkv], qkv),
                    HookPoint::K => match self.k_cache.as_f32_mut() {
                        Some(c) => (&mut c[slot(h, p0)..slot(h, p0 + n)], d_head),
                        None => (&mut k_stage[h * d_head..n * qkv], qkv),
                    },
                    _ => match self.v_cache.as_f32_mut() {
                        Some(c) => (&mut c[slot(h, p0)..slot(h, p0 + n)], d_head),
                        None => (&mut v_stage[h * d_head..n * qkv], qkv),
                    },
                };
                hooks.hook_rows(site(point, h, p0), n, d_head, stride, values);
            }
        }
        if self.kv != KvStorage::F32 {
            for i in 0..n {
                for h in 0..n_heads {
                    let at = i * qkv + h * d_head;
                    self.k_cache
                        .store(row(h, p0 + i), &k_stage[at..at + d_head]);
                    self.v_cache
                        .store(row(h, p0 + i), &v_stage[at..at + d_head]);
                }
            }
        }

        let quantize_z = quantized(&lt.w_o);
        for h in 0..n_heads {
            for i in 0..n {
                let p = p0 + i;
                let q = &self.q[i * qkv + h * d_head..i * qkv + (h + 1) * d_head];
                let scores = &mut self.scores[..=p];
                match self.k_cache.as_f32() {
                    Some(k) => {
                        let keys = &k[slot(h, 0)..slot(h, p + 1)];
                        kernels::scores(q, keys, cfg.attn_scale, scores);
                    }
                    None => {
                        for (j, s) in scores.iter_mut().enumerate() {
                            self.k_cache.load(row(h, j), self.kv_row);
                            *s = kernels::dot(q, self.kv_row) / cfg.attn_scale;
                        }
                    }
                }
                if active(hooks, HookPoint::AttnScores) {
                    hooks.hook(site(HookPoint::AttnScores, h, p), scores);
                }
                softmax(scores);
                if active(hooks, HookPoint::Pattern) {
                    hooks.hook(site(HookPoint::Pattern, h, p), scores);
                }
                let z = &mut self.z[i * d_head..(i + 1) * d_head];
                match self.v_cache.as_f32() {
                    Some(v) => kernels::weighted_sum(scores, &v[slot(h, 0)..slot(h, p + 1)], z),
                    None => {
                        // Each element summed from 0.0 in key order, as `kernels::weighted_sum`
                        // does, over the values read back from the cache.
                        z.fill(0.0);
                        for (j, &w) in scores.iter().enumerate() {
                            self.v_cache.load(row(h, j), self.kv_row);
                            for (zk, &vk) in z.iter_mut().zip(self.kv_row.iter()) {
                                *zk += w * vk;
                            }
                        }
                    }
                }
            }
            let z = &mut self.z[..n * d_head];
            emit(hooks, site(HookPoint::Z, h, p0), n, d_head, z);
            let x = quantize_rows(n, d_head, z, self.xq, self.scales, self.pairs, quantize_z);
            let result = &mut self.result[..n * d_model];
            self.kernels
                .matmul(&lt.w_o.rows(h * d_model, d_model), &x, result);
            emit(hooks, site(HookPoint::Result, h, p0), n, d_model, result);
            if h == 0 {
                self.attn_out[..n * d_model].copy_from_slice(result);
            } else {
                kernels::add_assign(&mut self.attn_out[..n * d_model], result);
            }
        }
    }
}

/// Hands the `n` rows of `width` values in `values` (one per position from `site.pos`)
/// to the hooks, if they want the point.
#[inline(always)]
fn emit<H: Hooks>(hooks: &mut H, site: Site, n: usize, width: usize, values: &mut [f32]) {
    if active(hooks, site.point) {
        hooks.hook_rows(site, n, width, width, &mut values[..n * width]);
    }
}

/// The block of `n` rows of `cols` values in `x` as a matrix product's input; when a
/// quantized weight will read it (`quantize`), each row is quantized to int8 with its
/// own scale first, as stepping quantizes each position's vector (and, with the DSP
/// kernel, laid out in pairs too). Without `quantize`, what `xq` and `scales` already
/// hold is kept (the previous product's quantization of the same values).
fn quantize_rows<'x>(
    n: usize,
    cols: usize,
    x: &'x [f32],
    xq: &'x mut [i8],
    scales: &'x mut [f32],
    pairs: &'x mut [u32],
    quantize: bool,
) -> Block<'x> {
    let pl = kernels::pairs_len(cols);
    if quantize {
        for t in 0..n {
            let q = &mut xq[t * cols..(t + 1) * cols];
            let end = ((t + 1) * pl).min(pairs.len());
            let p = &mut pairs[(t * pl).min(end)..end];
            scales[t] = kernels::quantize_with_pairs(&x[t * cols..(t + 1) * cols], q, p);
        }
    }
    let pairs_end = (n * pl).min(pairs.len());
    Block {
        n,
        cols,
        x: &x[..n * cols],
        q: &xq[..n * cols],
        scales: &scales[..n],
        pairs: &pairs[..pairs_end],
    }
}

/// `false` only in the benchmark build with feature `strip-hooks`, which compiles every
/// hook call out: the figure that shows [`NoHooks`] costs nothing is measured against it.
/// Public so that a benchmark can say which build it measured.
pub const HOOKS_COMPILED: bool = !cfg!(feature = "strip-hooks");

#[inline(always)]
fn active<H: Hooks>(hooks: &H, point: HookPoint) -> bool {
    HOOKS_COMPILED && hooks.wants(point)
}

/// The first `bytes` bytes of an f32 vector (a bias or LayerNorm weight), if it is one.
#[inline]
fn f32_row<'a>(t: &Tensor<'a>, bytes: usize) -> Option<&'a [u8]> {
    if t.kind == crate::StorageKind::F32 {
        t.values.get(..bytes)
    } else {
        None
    }
}

/// `out += b[start..start + out.len()]`: the stored f32 bias directly, any other kind
/// through [`Tensor::add_range_to`] (the same values).
#[inline]
fn add_bias(b: &Tensor<'_>, start: usize, out: &mut [f32]) {
    let end = start.saturating_add(out.len());
    match f32_row(b, end.saturating_mul(4)) {
        Some(bytes) if end <= b.cols => kernels::add_assign_le(out, &bytes[start * 4..]),
        _ => b.add_range_to(start, out),
    }
}

/// TransformerLens's LayerNorm / LayerNormPre (or a copy for `normalization = None`):
/// centre, divide by `sqrt(mean(x^2) + eps)` (`hook_scale`), hook (`hook_normalized`),
/// then `* w + b` for LN. The scale is handed
/// to the hooks before it is used, so a frozen scale takes effect.
fn layer_norm<H: Hooks>(
    cfg: &Config,
    x: &[f32],
    out: &mut [f32],
    wb: Option<(Tensor<'_>, Tensor<'_>)>,
    hooks: &mut H,
    points: (HookPoint, HookPoint),
    site: Site,
) {
    // One row per position of the block (`x` holds exactly the block's rows).
    let d = cfg.d_model as usize;
    let n = x.len() / d.max(1);
    let out = &mut out[..n * d];
    out.copy_from_slice(x);
    if cfg.normalization == Normalization::None {
        return;
    }
    for (i, row) in out.chunks_exact_mut(d).enumerate() {
        let var = kernels::center(row);
        let mut scale = [libm::sqrtf(var + cfg.eps)];
        if active(hooks, points.0) {
            let pos = site.pos.wrapping_add(i as u16);
            hooks.hook(Site { pos, ..site }, &mut scale);
        }
        kernels::div_assign(row, scale[0]);
    }
    // TransformerLens hooks the normalized value before the LayerNorm weight and bias.
    let normalized = Site {
        point: points.1,
        ..site
    };
    emit(hooks, normalized, n, d, out);
    if let Some((w, b)) = wb {
        let bytes = d * 4;
        match (f32_row(&w, bytes), f32_row(&b, bytes)) {
            (Some(wv), Some(bv)) => {
                for row in out.chunks_exact_mut(d) {
                    kernels::mul_add_le(row, wv, bv);
                }
            }
            _ => {
                for row in out.chunks_exact_mut(d) {
                    w.zip_row(0, row, |o, wv| *o *= wv);
                    b.add_row_to(0, row);
                }
            }
        }
    }
}

/// Softmax in place, with the maximum subtracted first.
fn softmax(x: &mut [f32]) {
    // The maximum, NaN ignored (as `f32::max` does); a plain comparison rather than
    // `f32::max`, which is a library call on Cortex-M. Only `v - m` uses `m`, where
    // the sign of a zero maximum cannot change a result.
    let m = x
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    if m == f32::NEG_INFINITY {
        // Every key masked (possible only when a hook masks them): TransformerLens turns
        // the resulting NaNs into zeros.
        x.fill(0.0);
        return;
    }
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = kernels::expf(*v - m);
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}
