//! Trace frames in stepping order from any schedule. A block of positions hands its
//! values over point by point; a trace written live from it would hold the same
//! records in another order. The [`Tape`] keeps the records a probe set selects (after
//! every intervention, as a recorder placed last sees them) and [`Tape::replay`]
//! hands them to a [`Recorder`] position by position in the order stepping produces
//! them, so a batched run writes the very bytes a device stepping the same prompt
//! writes (the QEMU tests compare them byte for byte).

use tinylens_core::probe::ProbeSet;
use tinylens_core::trace::{Recorder, Sink};
use tinylens_core::{Config, HookPoint, Hooks, Site};

/// The selected hook values of a run, each with its site.
pub struct Tape<'p, const N: usize> {
    probes: &'p ProbeSet<N>,
    mask: u32,
    n_heads: usize,
    n_layers: usize,
    records: Vec<(u64, Site, Vec<f32>)>,
}

impl<'p, const N: usize> Tape<'p, N> {
    pub fn new(cfg: &Config, probes: &'p ProbeSet<N>) -> Self {
        Tape {
            probes,
            mask: probes.point_mask(),
            n_heads: cfg.n_heads as usize,
            n_layers: cfg.n_layers as usize,
            records: Vec::new(),
        }
    }

    /// Where `site` comes in stepping order: its position first, then the order of the
    /// hook calls within one step (`forward.rs`): embeddings; per layer the residual,
    /// LN, Q, K, V of every head, then per head scores, pattern, z and result, then
    /// attn_out and resid_post; the final LN and the logits.
    fn order(&self, site: &Site) -> u64 {
        let nh = self.n_heads as u64;
        let h = site.head.unwrap_or(0) as u64;
        let per_layer = 5 + 7 * nh;
        let in_layer = |l: u16, k: u64| 2 + l as u64 * per_layer + k;
        let stage = match site.point {
            HookPoint::Embed => 0,
            HookPoint::PosEmbed => 1,
            HookPoint::ResidPre => in_layer(site.layer, 0),
            HookPoint::Ln1Scale => in_layer(site.layer, 1),
            HookPoint::Ln1Normalized => in_layer(site.layer, 2),
            HookPoint::Q => in_layer(site.layer, 3 + h),
            HookPoint::K => in_layer(site.layer, 3 + nh + h),
            HookPoint::V => in_layer(site.layer, 3 + 2 * nh + h),
            HookPoint::AttnScores => in_layer(site.layer, 3 + 3 * nh + 4 * h),
            HookPoint::Pattern => in_layer(site.layer, 4 + 3 * nh + 4 * h),
            HookPoint::Z => in_layer(site.layer, 5 + 3 * nh + 4 * h),
            HookPoint::Result => in_layer(site.layer, 6 + 3 * nh + 4 * h),
            HookPoint::AttnOut => in_layer(site.layer, 3 + 7 * nh),
            HookPoint::ResidPost => in_layer(site.layer, 4 + 7 * nh),
            HookPoint::LnFinalScale => in_layer(self.n_layers as u16, 0),
            HookPoint::LnFinalNormalized => in_layer(self.n_layers as u16, 1),
            HookPoint::Logits => in_layer(self.n_layers as u16, 2),
        };
        (site.pos as u64) << 40 | stage
    }

    /// Hands the records to `recorder` as stepping `tokens` would have: per position
    /// its token, then its records in forward order.
    pub fn replay<S: Sink, const M: usize>(
        mut self,
        tokens: &[u32],
        recorder: &mut Recorder<'_, '_, S, M>,
    ) {
        self.records.sort_by_key(|r| r.0);
        let mut records = self.records.into_iter().peekable();
        for (p, &t) in tokens.iter().enumerate() {
            recorder.token(p as u16, t);
            while let Some((_, site, mut v)) = records.next_if(|r| r.1.pos as usize == p) {
                recorder.hook(site, &mut v);
            }
        }
    }
}

impl<const N: usize> Hooks for Tape<'_, N> {
    #[inline(always)]
    fn wants(&self, point: HookPoint) -> bool {
        self.mask & (1 << point as u32) != 0
    }

    fn hook(&mut self, site: Site, value: &mut [f32]) {
        if self.probes.select(&site).is_some() {
            self.records.push((self.order(&site), site, value.to_vec()));
        }
    }
}
