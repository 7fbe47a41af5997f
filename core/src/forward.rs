//! The forward pass: one token at a time, with a KV cache, in caller-provided memory.
//!
//! Processing a prompt is stepping through it; position `p` attends to the cached keys
//! and values of positions `0..=p`, which gives exactly TransformerLens's causal
//! attention over the whole prompt, and makes decoding and prompt processing the same
//! computation.

use crate::blob::{LayerTensors, Model};
use crate::config::{Config, Normalization, Positional};
use crate::hooks::{HookPoint, Hooks, NoHooks, Site};
use crate::kernels::{self, Input};
use crate::quant::Tensor;
use crate::Error;

/// A model with its working memory: KV caches, residual stream and scratch, all carved
/// from one caller-provided `&mut [f32]` of at least [`Config::workspace_len`] words.
pub struct Session<'m, 'w> {
    model: Model<'m>,
    pos: usize,
    k_cache: &'w mut [f32],
    v_cache: &'w mut [f32],
    resid: &'w mut [f32],
    normed: &'w mut [f32],
    pos_embed: &'w mut [f32],
    q: &'w mut [f32],
    scores: &'w mut [f32],
    z: &'w mut [f32],
    result: &'w mut [f32],
    attn_out: &'w mut [f32],
    logits: &'w mut [f32],
    xq: &'w mut [i8],
    /// `xq` laid out for the DSP int8 kernel ([`kernels::arrange_pairs`]).
    pairs: &'w mut [u32],
}

fn take<'w>(buf: &mut &'w mut [f32], n: usize) -> &'w mut [f32] {
    let (head, tail) = core::mem::take(buf).split_at_mut(n);
    *buf = tail;
    head
}

impl<'m, 'w> Session<'m, 'w> {
    /// Lays the session out in `workspace`; a buffer shorter than
    /// [`Config::workspace_len`] is [`Error::BufferTooSmall`].
    pub fn new(model: &Model<'m>, workspace: &'w mut [f32]) -> Result<Self, Error> {
        let cfg = *model.config();
        let needed = cfg.workspace_len();
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
        let mut s = Session {
            model: *model,
            pos: 0,
            k_cache: take(&mut buf, cfg.kv_cache_len()),
            v_cache: take(&mut buf, cfg.kv_cache_len()),
            resid: take(&mut buf, d_model),
            normed: take(&mut buf, d_model),
            pos_embed: take(&mut buf, shortformer),
            q: take(&mut buf, qkv),
            scores: take(&mut buf, cfg.n_ctx as usize),
            z: take(&mut buf, d_head),
            result: take(&mut buf, d_model),
            attn_out: take(&mut buf, d_model),
            logits: take(&mut buf, cfg.d_vocab_out as usize),
            xq: &mut [],
            pairs: &mut [],
        };
        // The int8 activations share the f32 region, four to a word, followed by their
        // DSP layout, two 16-bit lanes to a word (see `Config::workspace_len`).
        let q_words = cfg.quantized_input_len().div_ceil(4);
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

    /// Forgets all positions; the next token is position 0.
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// The logits of the last processed position.
    pub fn logits(&self) -> &[f32] {
        self.logits
    }

    /// Processes one token at the next position; returns the logits for the position after it.
    pub fn step(&mut self, token: u32) -> Result<&[f32], Error> {
        self.step_with(token, &mut NoHooks)
    }

    /// Processes `tokens` from the current position; returns the last position's logits.
    pub fn prefill<H: Hooks>(&mut self, tokens: &[u32], hooks: &mut H) -> Result<&[f32], Error> {
        for &t in tokens {
            self.step_with(t, hooks)?;
        }
        Ok(self.logits)
    }

    /// [`Session::step`] with hooks: every hook point is handed to `hooks` as it is
    /// produced, and what a hook leaves in the value is what the pass goes on with.
    ///
    /// On error nothing of this position is kept: the position does not advance.
    pub fn step_with<H: Hooks>(&mut self, token: u32, hooks: &mut H) -> Result<&[f32], Error> {
        let cfg = *self.model.config();
        if token >= cfg.d_vocab {
            return Err(Error::TokenOutOfRange {
                token,
                d_vocab: cfg.d_vocab,
            });
        }
        if self.pos >= cfg.n_ctx as usize {
            return Err(Error::ContextFull { n_ctx: cfg.n_ctx });
        }
        let p = self.pos;
        if HOOKS_COMPILED {
            hooks.token(p as u16, token);
        }
        let site = |point, layer: usize, head: Option<usize>| Site {
            point,
            layer: layer as u16,
            head: head.map(|h| h as u16),
            pos: p as u16,
        };

        self.model.w_e().dequantize_row(token as usize, self.resid);
        if active(hooks, HookPoint::Embed) {
            hooks.hook(site(HookPoint::Embed, 0, None), self.resid);
        }
        let pos_buf: &mut [f32] = match cfg.positional {
            Positional::Standard => self.normed,
            Positional::Shortformer => self.pos_embed,
        };
        self.model.w_pos().dequantize_row(p, pos_buf);
        if active(hooks, HookPoint::PosEmbed) {
            hooks.hook(site(HookPoint::PosEmbed, 0, None), pos_buf);
        }
        if cfg.positional == Positional::Standard {
            for (r, e) in self.resid.iter_mut().zip(self.normed.iter()) {
                *r += e;
            }
        }

        for layer in 0..cfg.n_layers as usize {
            let lt = self.model.layer(layer);
            if active(hooks, HookPoint::ResidPre) {
                hooks.hook(site(HookPoint::ResidPre, layer, None), self.resid);
            }
            layer_norm(
                &cfg,
                self.resid,
                self.normed,
                lt.ln1_w.zip(lt.ln1_b),
                hooks,
                (HookPoint::Ln1Scale, HookPoint::Ln1Normalized),
                site(HookPoint::Ln1Scale, layer, None),
            );
            self.attention(&cfg, &lt, layer, hooks);
            lt.b_o.add_row_to(0, self.attn_out);
            if active(hooks, HookPoint::AttnOut) {
                hooks.hook(site(HookPoint::AttnOut, layer, None), self.attn_out);
            }
            for (r, a) in self.resid.iter_mut().zip(self.attn_out.iter()) {
                *r += a;
            }
            if active(hooks, HookPoint::ResidPost) {
                hooks.hook(site(HookPoint::ResidPost, layer, None), self.resid);
            }
        }

        layer_norm(
            &cfg,
            self.resid,
            self.normed,
            self.model.ln_final(),
            hooks,
            (HookPoint::LnFinalScale, HookPoint::LnFinalNormalized),
            site(HookPoint::LnFinalScale, 0, None),
        );
        let w_u = self.model.w_u();
        let input = prepare(
            self.normed,
            self.xq,
            self.pairs,
            kernels::needs_quantized_input(w_u.kind),
        );
        kernels::matvec(&w_u, &input, self.logits);
        self.model.b_u().add_row_to(0, self.logits);
        if active(hooks, HookPoint::Logits) {
            hooks.hook(site(HookPoint::Logits, 0, None), self.logits);
        }
        if !self.logits.iter().all(|v| v.is_finite()) {
            return Err(Error::NonFiniteLogits { pos: p as u32 });
        }
        self.pos += 1;
        Ok(self.logits)
    }

    /// One attention layer at the current position: fills the caches' row for this
    /// position, and leaves `sum_h result_h` (without `b_O`) in `attn_out`.
    fn attention<H: Hooks>(
        &mut self,
        cfg: &Config,
        lt: &LayerTensors<'_>,
        layer: usize,
        hooks: &mut H,
    ) {
        let p = self.pos;
        let (n_heads, d_head, d_model) = (
            cfg.n_heads as usize,
            cfg.d_head as usize,
            cfg.d_model as usize,
        );
        let n_ctx = cfg.n_ctx as usize;
        let slot = |h: usize, j: usize| ((layer * n_heads + h) * n_ctx + j) * d_head;
        let site = |point, head: usize| Site {
            point,
            layer: layer as u16,
            head: Some(head as u16),
            pos: p as u16,
        };
        let quantized = |t: &Tensor<'_>| kernels::needs_quantized_input(t.kind);

        // Values read the normalized residual; with shortformer positions, queries and
        // keys read it plus W_pos, so V is computed first and W_pos added in place after.
        // All heads in one product (each row's sum is the same however the rows are
        // grouped), into `q` (free until W_Q's turn), then into each head's cache row.
        let scale = prepare_scale(self.normed, self.xq, self.pairs, quantized(&lt.w_v));
        let input = Input {
            x: self.normed,
            q: self.xq,
            scale,
            pairs: self.pairs,
        };
        kernels::matvec(&lt.w_v, &input, self.q);
        for h in 0..n_heads {
            let out = &mut self.v_cache[slot(h, p)..slot(h, p) + d_head];
            out.copy_from_slice(&self.q[h * d_head..(h + 1) * d_head]);
            add_bias(&lt.b_v, h * d_head, out);
        }
        let mut requantize = quantized(&lt.w_v);
        if cfg.positional == Positional::Shortformer {
            for (x, e) in self.normed.iter_mut().zip(self.pos_embed.iter()) {
                *x += e;
            }
            requantize = false;
        }
        let need_q = quantized(&lt.w_q) || quantized(&lt.w_k);
        let scale = if need_q && !requantize {
            prepare_scale(self.normed, self.xq, self.pairs, true)
        } else {
            scale
        };
        let input = Input {
            x: self.normed,
            q: self.xq,
            scale,
            pairs: self.pairs,
        };
        // K first, through `q` as V went, then Q itself.
        kernels::matvec(&lt.w_k, &input, self.q);
        for h in 0..n_heads {
            let out = &mut self.k_cache[slot(h, p)..slot(h, p) + d_head];
            out.copy_from_slice(&self.q[h * d_head..(h + 1) * d_head]);
            add_bias(&lt.b_k, h * d_head, out);
        }
        kernels::matvec(&lt.w_q, &input, self.q);
        lt.b_q.add_row_to(0, self.q);
        for (point, h) in [HookPoint::Q, HookPoint::K, HookPoint::V]
            .into_iter()
            .flat_map(|pt| (0..n_heads).map(move |h| (pt, h)))
        {
            if !active(hooks, point) {
                continue;
            }
            let v = match point {
                HookPoint::Q => &mut self.q[h * d_head..(h + 1) * d_head],
                HookPoint::K => &mut self.k_cache[slot(h, p)..slot(h, p) + d_head],
                _ => &mut self.v_cache[slot(h, p)..slot(h, p) + d_head],
            };
            hooks.hook(site(point, h), v);
        }

        let quantize_z = quantized(&lt.w_o);
        for h in 0..n_heads {
            let q = &self.q[h * d_head..(h + 1) * d_head];
            let scores = &mut self.scores[..=p];
            for (j, s) in scores.iter_mut().enumerate() {
                *s = kernels::dot(q, &self.k_cache[slot(h, j)..slot(h, j) + d_head])
                    / cfg.attn_scale;
            }
            if active(hooks, HookPoint::AttnScores) {
                hooks.hook(site(HookPoint::AttnScores, h), scores);
            }
            softmax(scores);
            if active(hooks, HookPoint::Pattern) {
                hooks.hook(site(HookPoint::Pattern, h), scores);
            }
            weighted_sum(scores, &self.v_cache[slot(h, 0)..], d_head, self.z);
            if active(hooks, HookPoint::Z) {
                hooks.hook(site(HookPoint::Z, h), self.z);
            }
            let input = prepare(self.z, self.xq, self.pairs, quantize_z);
            kernels::matvec(&lt.w_o.rows(h * d_model, d_model), &input, self.result);
            if active(hooks, HookPoint::Result) {
                hooks.hook(site(HookPoint::Result, h), self.result);
            }
            if h == 0 {
                self.attn_out.copy_from_slice(self.result);
            } else {
                for (o, r) in self.attn_out.iter_mut().zip(self.result.iter()) {
                    *o += r;
                }
            }
        }
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

/// Quantizes `x` into `xq` when a quantized weight will read it (and, with the DSP
/// kernel, lays it out in `pairs` too); returns its scale.
fn prepare_scale(x: &[f32], xq: &mut [i8], pairs: &mut [u32], quantize: bool) -> f32 {
    if !quantize {
        return 0.0;
    }
    let n = x.len().min(xq.len());
    let scale = kernels::quantize_input(&x[..n], &mut xq[..n]);
    if kernels::DSP {
        kernels::arrange_pairs(&xq[..n], pairs);
    }
    scale
}

fn prepare<'x>(x: &'x [f32], xq: &'x mut [i8], pairs: &'x mut [u32], quantize: bool) -> Input<'x> {
    let scale = prepare_scale(x, xq, pairs, quantize);
    Input {
        x,
        q: xq,
        scale,
        pairs,
    }
}

/// `z = Σ_j a[j] · v_j`, `v_j = values[j * d_head..][..d_head]`: each element summed from
/// 0.0 in key order, as the plain loop over keys then elements would, but eight
/// elements at a time over all keys, so that the sums stay in registers.
fn weighted_sum(a: &[f32], values: &[f32], d_head: usize, z: &mut [f32]) {
    let mut i = 0;
    while i + 8 <= z.len() {
        let mut acc = [0.0f32; 8];
        for (j, &w) in a.iter().enumerate() {
            let Some(v) = values.get(j * d_head + i..j * d_head + i + 8) else {
                break;
            };
            let [a0, a1, a2, a3, a4, a5, a6, a7] = &mut acc;
            *a0 += w * v[0];
            *a1 += w * v[1];
            *a2 += w * v[2];
            *a3 += w * v[3];
            *a4 += w * v[4];
            *a5 += w * v[5];
            *a6 += w * v[6];
            *a7 += w * v[7];
        }
        z[i..i + 8].copy_from_slice(&acc);
        i += 8;
    }
    for (k, zk) in z.iter_mut().enumerate().skip(i) {
        let mut acc = 0.0f32;
        for (j, &w) in a.iter().enumerate() {
            if let Some(v) = values.get(j * d_head + k) {
                acc += w * v;
            }
        }
        *zk = acc;
    }
}

/// `out[i] += b[offset + i]` for a one-row bias.
fn add_bias(b: &Tensor<'_>, offset: usize, out: &mut [f32]) {
    b.add_range_to(offset, out);
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
    out.copy_from_slice(x);
    if cfg.normalization == Normalization::None {
        return;
    }
    let n = out.len() as f32;
    let mean = out.iter().sum::<f32>() / n;
    for v in out.iter_mut() {
        *v -= mean;
    }
    let var = out.iter().map(|v| v * v).sum::<f32>() / n;
    let mut scale = [libm::sqrtf(var + cfg.eps)];
    if active(hooks, points.0) {
        hooks.hook(site, &mut scale);
    }
    for v in out.iter_mut() {
        *v /= scale[0];
    }
    // TransformerLens hooks the normalized value before the LayerNorm weight and bias.
    if active(hooks, points.1) {
        hooks.hook(
            Site {
                point: points.1,
                ..site
            },
            out,
        );
    }
    if let Some((w, b)) = wb {
        w.zip_row(0, out, |o, wv| *o *= wv);
        b.add_row_to(0, out);
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
