//! Model configuration: the subset of TransformerLens's `HookedTransformerConfig` that an
//! attention-only model needs, and the exact working-memory size it implies.

use crate::kv::KvStorage;
use crate::Error;

/// Normalization before each attention layer and before the unembedding
/// (TransformerLens `normalization_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum Normalization {
    /// No normalization (`None` in TransformerLens).
    None = 0,
    /// LayerNorm with weight and bias.
    LN = 1,
    /// LayerNorm without weight and bias (after `fold_ln`).
    LNPre = 2,
}

/// How positions enter the model (TransformerLens `positional_embedding_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum Positional {
    /// `W_pos` is added to the residual stream.
    Standard = 0,
    /// `W_pos` is added only to the query and key inputs of every layer.
    Shortformer = 1,
}

/// Shape and numerics of an attention-only transformer.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Config {
    pub n_layers: u32,
    pub n_heads: u32,
    pub d_model: u32,
    pub d_head: u32,
    pub d_vocab: u32,
    pub d_vocab_out: u32,
    pub n_ctx: u32,
    pub normalization: Normalization,
    pub positional: Positional,
    /// LayerNorm epsilon.
    pub eps: f32,
    /// Attention scores are divided by this (`sqrt(d_head)` unless the model says otherwise).
    pub attn_scale: f32,
}

/// Largest values accepted for each dimension. They keep every size the core computes
/// (including [`Config::workspace_len`] in bytes) far below `u32::MAX`, so no size
/// arithmetic can overflow on a 32-bit microcontroller, and they let positions and
/// heads travel as `u16` in traces.
pub mod limits {
    pub const MAX_LAYERS: u32 = 255;
    pub const MAX_HEADS: u32 = 4096;
    pub const MAX_DIM: u32 = 65_535;
    pub const MAX_CTX: u32 = 65_535;
    pub const MAX_VOCAB: u32 = 1 << 20;
    /// Largest workspace, in f32 words (1 GiB).
    pub const MAX_WORKSPACE_WORDS: u64 = 1 << 28;
}

impl Config {
    /// Checks ranges and consistency; every other function may then rely on sizes
    /// fitting in `usize` on 32-bit targets.
    pub const fn validate(&self) -> Result<(), Error> {
        use limits::*;
        let c = self;
        if c.n_layers == 0 || c.n_layers > MAX_LAYERS {
            return Err(Error::InvalidConfig { field: "n_layers" });
        }
        if c.n_heads == 0 || c.n_heads > MAX_HEADS {
            return Err(Error::InvalidConfig { field: "n_heads" });
        }
        if c.d_model == 0 || c.d_model > MAX_DIM {
            return Err(Error::InvalidConfig { field: "d_model" });
        }
        if c.d_head == 0
            || c.d_head > MAX_DIM
            || c.n_heads as u64 * c.d_head as u64 > MAX_DIM as u64
        {
            return Err(Error::InvalidConfig { field: "d_head" });
        }
        if c.d_vocab == 0 || c.d_vocab > MAX_VOCAB {
            return Err(Error::InvalidConfig { field: "d_vocab" });
        }
        if c.d_vocab_out == 0 || c.d_vocab_out > MAX_VOCAB {
            return Err(Error::InvalidConfig {
                field: "d_vocab_out",
            });
        }
        if c.n_ctx == 0 || c.n_ctx > MAX_CTX {
            return Err(Error::InvalidConfig { field: "n_ctx" });
        }
        if !(c.eps.is_finite() && c.eps >= 0.0) {
            return Err(Error::InvalidConfig { field: "eps" });
        }
        if !(c.attn_scale.is_finite() && c.attn_scale > 0.0) {
            return Err(Error::InvalidConfig {
                field: "attn_scale",
            });
        }
        if self.workspace_words_u64(1, KvStorage::F32) > MAX_WORKSPACE_WORDS {
            return Err(Error::InvalidConfig {
                field: "model too large (working memory over 1 GiB)",
            });
        }
        Ok(())
    }

    // The sizes below are exact for a config that passed [`Config::validate`]; for any
    // other they saturate at `usize::MAX` instead of overflowing, so that no buffer of
    // that size can exist and [`crate::Session::new`] refuses it.

    /// Elements of one of the two caches (K or V): `n_layers * n_heads * n_ctx * d_head`.
    pub const fn kv_cache_len(&self) -> usize {
        to_usize(self.kv_cache_u64())
    }

    /// The least working memory any implementation needs, in f32 words: both KV caches,
    /// one residual vector and the logits. [`Config::workspace_len`] is measured against it.
    pub const fn minimum_len(&self) -> usize {
        to_usize(
            self.kv_cache_u64()
                .saturating_mul(2)
                .saturating_add(self.d_model as u64 + self.d_vocab_out as u64),
        )
    }

    /// Four u32 factors: at most 2^128, so the product saturates rather than wraps.
    const fn kv_cache_u64(&self) -> u64 {
        (self.n_layers as u64 * self.n_heads as u64)
            .saturating_mul(self.n_ctx as u64 * self.d_head as u64)
    }

    /// Exact working-memory size, in f32 words, that [`crate::Session::new`] needs for
    /// this config. A `const fn`, so firmware can size a `static` buffer at compile time:
    ///
    /// ```
    /// # use tinylens_core::{Config, Normalization, Positional};
    /// const CFG: Config = Config {
    ///     n_layers: 2, n_heads: 4, d_model: 64, d_head: 16, d_vocab: 64, d_vocab_out: 64,
    ///     n_ctx: 32, normalization: Normalization::LN, positional: Positional::Standard,
    ///     eps: 1e-5, attn_scale: 4.0,
    /// };
    /// static mut WORKSPACE: [f32; CFG.workspace_len()] = [0.0; CFG.workspace_len()];
    /// assert!(CFG.workspace_len() as f32 <= 1.05 * CFG.minimum_len() as f32);
    /// ```
    pub const fn workspace_len(&self) -> usize {
        self.block_workspace_len(1)
    }

    /// Working memory, in f32 words, of a session that processes up to `block`
    /// positions at once ([`crate::Session::with_block`]): the KV caches once, and every
    /// per-position buffer `block` times. `block_workspace_len(1)` is
    /// [`Config::workspace_len`].
    pub const fn block_workspace_len(&self, block: usize) -> usize {
        self.session_workspace_len(block, KvStorage::F32)
    }

    /// Working memory, in f32 words, of a session with a KV cache of `kv`
    /// ([`crate::SessionOptions`]) that processes up to `block` positions at once.
    /// A quantized cache needs a little staging for the block's keys and values
    /// (`2 · block · n_heads · d_head` words, plus one head vector) and saves far more.
    pub const fn session_workspace_len(&self, block: usize, kv: KvStorage) -> usize {
        to_usize(self.workspace_words_u64(block as u64, kv))
    }

    /// The RAM, in bytes, of the KV caches alone (both of them) in `kv`.
    pub const fn kv_cache_bytes(&self, kv: KvStorage) -> usize {
        to_usize(
            kv.cache_words(self.kv_cache_u64(), self.d_head as u64)
                .saturating_mul(8),
        )
    }

    const fn workspace_words_u64(&self, n: u64, kv_kind: KvStorage) -> u64 {
        let kv = kv_kind.cache_words(self.kv_cache_u64(), self.d_head as u64);
        let staging = match kv_kind {
            KvStorage::F32 => 0,
            _ => (self.n_heads as u64 * self.d_head as u64)
                .saturating_mul(2)
                .saturating_mul(n)
                .saturating_add(self.d_head as u64),
        };
        let d_model = self.d_model as u64;
        let qkv = self.n_heads as u64 * self.d_head as u64;
        let widest = max(max(d_model, qkv), self.d_head as u64);
        let shortformer = match self.positional {
            Positional::Shortformer => d_model,
            Positional::Standard => 0,
        };
        // Terms of single dimensions stay below 2^36; the caches and `qkv` (products) saturate.
        let per_position = (d_model // resid
            + d_model // normalized input to the layer
            + shortformer // query/key input with W_pos added
            + self.d_head as u64 // z of one head
            + d_model // result of one head
            + d_model // attn_out
            + self.d_vocab_out as u64 // logits
            + 1) // the int8 scale of the position's quantized activations
        .saturating_add(qkv); // q for all heads
        kv.saturating_mul(2)
            .saturating_add(staging)
            .saturating_add(self.n_ctx as u64) // one row of attention scores
            .saturating_add(per_position.saturating_mul(n))
            // int8-quantized activations, four per word, then the same as 16-bit pairs
            // (DSP kernel)
            .saturating_add(widest.saturating_mul(n).div_ceil(4))
            .saturating_add(widest.div_ceil(4).saturating_mul(2).saturating_mul(n))
    }

    /// Longest vector quantized to int8 for a matrix-vector product: the widest of
    /// `d_model`, `n_heads * d_head` and `d_head`.
    pub const fn quantized_input_len(&self) -> usize {
        let d_model = self.d_model as u64;
        let qkv = self.n_heads as u64 * self.d_head as u64;
        to_usize(max(max(d_model, qkv), self.d_head as u64))
    }

    /// `n_heads * d_head`.
    pub const fn qkv_len(&self) -> usize {
        to_usize(self.n_heads as u64 * self.d_head as u64)
    }
}

/// `v` as usize, saturating on 32-bit targets.
const fn to_usize(v: u64) -> usize {
    if v > usize::MAX as u64 {
        usize::MAX
    } else {
        v as usize
    }
}

const fn max(a: u64, b: u64) -> u64 {
    if a > b {
        a
    } else {
        b
    }
}
