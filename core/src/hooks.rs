//! Hook points: every value TransformerLens can cache for an attention-only model, handed
//! to a [`Hooks`] implementation as the forward pass produces it, by mutable reference,
//! so that a hook can record it or change it before the rest of the pass uses it.

use core::fmt;

/// A TransformerLens hook point of an attention-only model, in forward order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum HookPoint {
    /// `hook_embed` [pos, d_model]
    Embed = 0,
    /// `hook_pos_embed` [pos, d_model]
    PosEmbed = 1,
    /// `blocks.L.hook_resid_pre` [pos, d_model]
    ResidPre = 2,
    /// `blocks.L.ln1.hook_scale` [pos, 1]
    Ln1Scale = 3,
    /// `blocks.L.ln1.hook_normalized` [pos, d_model]: centred and divided by the scale,
    /// before the LayerNorm weight and bias (as in TransformerLens)
    Ln1Normalized = 4,
    /// `blocks.L.attn.hook_q` [pos, head, d_head]
    Q = 5,
    /// `blocks.L.attn.hook_k` [pos, head, d_head]
    K = 6,
    /// `blocks.L.attn.hook_v` [pos, head, d_head]
    V = 7,
    /// `blocks.L.attn.hook_attn_scores` [head, q_pos, k_pos]; one query row (keys `0..=pos`) per call
    AttnScores = 8,
    /// `blocks.L.attn.hook_pattern` [head, q_pos, k_pos]; one query row (keys `0..=pos`) per call
    Pattern = 9,
    /// `blocks.L.attn.hook_z` [pos, head, d_head]
    Z = 10,
    /// `blocks.L.attn.hook_result` [pos, head, d_model]: one head's output
    Result = 11,
    /// `blocks.L.hook_attn_out` [pos, d_model]
    AttnOut = 12,
    /// `blocks.L.hook_resid_post` [pos, d_model]
    ResidPost = 13,
    /// `ln_final.hook_scale` [pos, 1]
    LnFinalScale = 14,
    /// `ln_final.hook_normalized` [pos, d_model]
    LnFinalNormalized = 15,
    /// The logits [pos, d_vocab_out] (TransformerLens has no hook here; named `logits`).
    Logits = 16,
}

impl HookPoint {
    /// Every hook point, in forward order.
    pub const ALL: [HookPoint; 17] = [
        HookPoint::Embed,
        HookPoint::PosEmbed,
        HookPoint::ResidPre,
        HookPoint::Ln1Scale,
        HookPoint::Ln1Normalized,
        HookPoint::Q,
        HookPoint::K,
        HookPoint::V,
        HookPoint::AttnScores,
        HookPoint::Pattern,
        HookPoint::Z,
        HookPoint::Result,
        HookPoint::AttnOut,
        HookPoint::ResidPost,
        HookPoint::LnFinalScale,
        HookPoint::LnFinalNormalized,
        HookPoint::Logits,
    ];

    pub const fn from_u8(v: u8) -> Option<Self> {
        if (v as usize) < Self::ALL.len() {
            Some(Self::ALL[v as usize])
        } else {
            None
        }
    }

    /// Whether the point exists once per layer (`blocks.L...`).
    pub const fn per_layer(self) -> bool {
        (self as u8) >= 2 && (self as u8) <= 13
    }

    /// Whether the point is called once per head.
    pub const fn per_head(self) -> bool {
        (self as u8) >= 5 && (self as u8) <= 11
    }

    /// Whether each call carries one row of keys `0..=pos` (scores and pattern).
    pub const fn is_attention_row(self) -> bool {
        matches!(self, HookPoint::AttnScores | HookPoint::Pattern)
    }

    /// Whether the point exists only with LayerNorm (`LN` or `LNPre`).
    pub const fn needs_ln(self) -> bool {
        matches!(
            self,
            HookPoint::Ln1Scale
                | HookPoint::Ln1Normalized
                | HookPoint::LnFinalScale
                | HookPoint::LnFinalNormalized
        )
    }

    /// The hook name without the `blocks.L.` / `ln_final.` prefix, as TransformerLens spells it.
    pub const fn short_name(self) -> &'static str {
        match self {
            HookPoint::Embed => "hook_embed",
            HookPoint::PosEmbed => "hook_pos_embed",
            HookPoint::ResidPre => "hook_resid_pre",
            HookPoint::Ln1Scale => "ln1.hook_scale",
            HookPoint::Ln1Normalized => "ln1.hook_normalized",
            HookPoint::Q => "attn.hook_q",
            HookPoint::K => "attn.hook_k",
            HookPoint::V => "attn.hook_v",
            HookPoint::AttnScores => "attn.hook_attn_scores",
            HookPoint::Pattern => "attn.hook_pattern",
            HookPoint::Z => "attn.hook_z",
            HookPoint::Result => "attn.hook_result",
            HookPoint::AttnOut => "hook_attn_out",
            HookPoint::ResidPost => "hook_resid_post",
            HookPoint::LnFinalScale => "ln_final.hook_scale",
            HookPoint::LnFinalNormalized => "ln_final.hook_normalized",
            HookPoint::Logits => "logits",
        }
    }

    /// The full TransformerLens name at `layer` (ignored for points outside blocks).
    pub const fn name(self, layer: u16) -> HookName {
        HookName { point: self, layer }
    }
}

/// Displays as a TransformerLens hook name, e.g. `blocks.1.attn.hook_pattern`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookName {
    pub point: HookPoint,
    pub layer: u16,
}

impl fmt::Display for HookName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.point.per_layer() {
            write!(f, "blocks.{}.{}", self.layer, self.point.short_name())
        } else {
            f.write_str(self.point.short_name())
        }
    }
}

/// Where a value comes from: hook point, layer, head and position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Site {
    pub point: HookPoint,
    /// Layer for per-layer points, 0 otherwise.
    pub layer: u16,
    /// Head for per-head points.
    pub head: Option<u16>,
    /// Query position.
    pub pos: u16,
}

/// Receives every value the forward pass produces.
///
/// `wants` is asked before each call; a `false` lets the forward pass skip the call.
/// With [`NoHooks`] every `wants` is a constant `false`, so after inlining the forward
/// pass carries no hook code at all.
pub trait Hooks {
    /// Whether `hook` may want values at `point`.
    #[inline(always)]
    fn wants(&self, _point: HookPoint) -> bool {
        true
    }

    /// Sees (and may change in place) the value at `site`.
    fn hook(&mut self, site: Site, value: &mut [f32]);

    /// Sees the values of `n` consecutive positions at once, as a block of positions
    /// produces them: position `site.pos + i` is `values[i * stride..][..width]`. The
    /// default hands each row to [`Hooks::hook`]; a hook that copies whole blocks (an
    /// in-memory cache) can take them in one go. Values are the same either way.
    #[inline]
    fn hook_rows(&mut self, site: Site, n: usize, width: usize, stride: usize, values: &mut [f32]) {
        for i in 0..n {
            let at = i * stride;
            let Some(row) = values.get_mut(at..at + width) else {
                return;
            };
            self.hook(
                Site {
                    pos: site.pos.wrapping_add(i as u16),
                    ..site
                },
                row,
            );
        }
    }

    /// Called when position `pos` starts, with its input token.
    #[inline(always)]
    fn token(&mut self, _pos: u16, _token: u32) {}
}

/// No hooks: the plain forward pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    #[inline(always)]
    fn wants(&self, _point: HookPoint) -> bool {
        false
    }

    #[inline(always)]
    fn hook(&mut self, _site: Site, _value: &mut [f32]) {}
}

impl<H: Hooks + ?Sized> Hooks for &mut H {
    #[inline(always)]
    fn wants(&self, point: HookPoint) -> bool {
        (**self).wants(point)
    }

    #[inline(always)]
    fn hook(&mut self, site: Site, value: &mut [f32]) {
        (**self).hook(site, value)
    }

    #[inline(always)]
    fn hook_rows(&mut self, site: Site, n: usize, width: usize, stride: usize, values: &mut [f32]) {
        (**self).hook_rows(site, n, width, stride, values)
    }

    #[inline(always)]
    fn token(&mut self, pos: u16, token: u32) {
        (**self).token(pos, token)
    }
}

/// Two hook sets composed: `A` runs first, and `B` sees what `A` left (so an
/// intervention followed by a recorder records the changed value).
impl<A: Hooks, B: Hooks> Hooks for (A, B) {
    #[inline(always)]
    fn wants(&self, point: HookPoint) -> bool {
        self.0.wants(point) || self.1.wants(point)
    }

    #[inline(always)]
    fn hook(&mut self, site: Site, value: &mut [f32]) {
        if self.0.wants(site.point) {
            self.0.hook(site, value);
        }
        if self.1.wants(site.point) {
            self.1.hook(site, value);
        }
    }

    #[inline(always)]
    fn hook_rows(&mut self, site: Site, n: usize, width: usize, stride: usize, values: &mut [f32]) {
        if self.0.wants(site.point) {
            self.0.hook_rows(site, n, width, stride, values);
        }
        if self.1.wants(site.point) {
            self.1.hook_rows(site, n, width, stride, values);
        }
    }

    #[inline(always)]
    fn token(&mut self, pos: u16, token: u32) {
        self.0.token(pos, token);
        self.1.token(pos, token);
    }
}

/// A closure as a hook that wants every point.
pub struct FnHook<F>(pub F);

impl<F: FnMut(Site, &mut [f32])> Hooks for FnHook<F> {
    fn hook(&mut self, site: Site, value: &mut [f32]) {
        (self.0)(site, value)
    }
}
