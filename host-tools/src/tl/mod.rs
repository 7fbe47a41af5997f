//! TransformerLens import: config, `state_dict` and weight processing.
//!
//! A TransformerLens (TL) model is read from two files: the `state_dict` saved with
//! safetensors (`safetensors.torch.save_file(model.state_dict(), ...)`) and TL's config
//! dict (`json.dump(cfg.to_dict(), ...)`, with non-JSON values such as `dtype` turned into
//! strings or dropped). [`load_files`] reads both into the host weight model
//! [`Weights`]; [`parse_config`] and [`load_state_dict`] do the same from memory.
//!
//! Weight processing follows TransformerLens 3.9 (`HookedTransformer.from_pretrained`,
//! `HookedTransformer.load_and_process_state_dict` and `weight_processing.ProcessWeights`):
//! [`fold_ln`], [`center_writing_weights`], [`center_unembed`], [`fold_value_biases`], and
//! [`process`], which applies a requested set of them in TL's order with TL's conditions
//! and reports in a [`Processing`] what was really applied.
//!
//! Two shape-dependent quirks of TL 3.9 matter for models with tiny vocabularies. TL
//! decides which axis of `W_U` ([d_model, d_vocab_out]) is which by comparing sizes:
//! * when `d_vocab_out == d_model`, its fold_ln folds `ln_final` into `W_U` and `b_U` along
//!   the vocabulary axis instead of `d_model`, which changes the model's log-probs. This
//!   module refuses fold_ln then (a result that matched TL would be a broken model);
//! * when `d_vocab == d_model != d_vocab_out`, its fold_ln centres `W_U` over the
//!   vocabulary instead of `d_model` (log-probs are kept, logits move by a per-position
//!   constant) and its center_unembed centres `W_U` over `d_model` instead of the
//!   vocabulary (harmless only after a parameter-free LayerNorm). This module reproduces
//!   both exactly, and refuses center_unembed in that case unless the normalization is
//!   `LNPre` at that point (otherwise TL's result would change the log-probs).
//!
//! With both fold_ln and center_unembed (TL's defaults) the second quirk cancels out:
//! `W_U` ends up centred along both axes, as it would with the intended axes.
//!
//! One module per concept: [`config`] (TL's config dict), [`state_dict`] (the tensors)
//! and [`processing`] (TL's weight processing).

pub mod config;
pub mod processing;
pub mod state_dict;

pub use config::{config_to_json, parse_config};
pub use processing::{
    center_unembed, center_writing_weights, fold_ln, fold_value_biases, process, Processing,
};
pub use state_dict::{load_files, load_state_dict, save_state_dict};

/// TL's default LayerNorm epsilon.
pub const DEFAULT_EPS: f32 = 1e-5;

#[cfg(test)]
mod tests;
