//! `tinylens info`: what a blob holds and what it needs on a device.

use std::path::PathBuf;

use clap::Args;
use tinylens_core::trace::frame_buffer_len;
use tinylens_core::KvStorage;
use tinylens_core::Model;

use crate::{cli, Result};

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Model blob.
    pub model: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let bytes = cli::read_input(&a.model)?;
    let model = Model::from_bytes(&bytes)?;
    let c = *model.config();
    // Per tensor: name, storage kind (with the int4 group when it is not 32: `int4/g16`),
    // stored shape, bytes of data (values and scales).
    let kinds: Vec<(String, &str, [usize; 2], usize)> = (0..model.tensor_count())
        .map(|i| {
            let slot = tinylens_core::blob::slot(&c, i).expect("validated table");
            let t = model.tensor_at(i);
            let (rows, cols) = (slot.rows as usize, slot.cols as usize);
            let bytes = t.kind.data_len(rows, cols).unwrap_or(t.values.len());
            (slot.name.to_string(), t.kind.name(), [rows, cols], bytes)
        })
        .collect();
    // Bytes per storage kind, in first-seen order.
    let mut per_kind: Vec<(&str, usize, usize)> = Vec::new();
    for (_, k, _, b) in &kinds {
        match per_kind.iter_mut().find(|(n, _, _)| n == k) {
            Some(e) => {
                e.1 += 1;
                e.2 += b;
            }
            None => per_kind.push((k, 1, *b)),
        }
    }
    let ws = c.workspace_len() * 4;
    let min = c.minimum_len() * 4;
    let frame = frame_buffer_len(&c);
    // The working memory of a one-position session for each KV cache storage.
    let kv_options: Vec<(KvStorage, usize, usize)> = KvStorage::ALL
        .iter()
        .map(|&kv| (kv, c.session_workspace_len(1, kv) * 4, c.kv_cache_bytes(kv)))
        .collect();
    if a.json {
        let j = serde_json::json!({
            "blob_bytes": bytes.len(),
            "device_bytes": model.as_bytes().len(),
            "crc32": format!("{:08x}", model.checksum()),
            "format_version": model.version(),
            "config": c,
            "processing": model.processing().to_bits(),
            "vocab": model.has_vocab(),
            "workspace_bytes": ws,
            "minimum_bytes": min,
            "trace_frame_buffer_bytes": frame,
            "kv_cache": kv_options.iter().map(|(kv, ws, cache)| serde_json::json!({
                "storage": kv.name(), "workspace_bytes": ws, "kv_cache_bytes": cache,
            })).collect::<Vec<_>>(),
            "tensors": (0..model.tensor_count()).zip(&kinds).map(|(i, (n, k, shape, b))| {
                let mut t = serde_json::json!({"name": n, "kind": k, "shape": shape, "bytes": b});
                if let Some(g) = model.tensor_at(i).kind.int4_group() {
                    t["int4_group"] = u16::from(g).into();
                }
                t
            }).collect::<Vec<_>>(),
            "bytes_per_kind": per_kind.iter().map(|(k, n, b)| serde_json::json!({"kind": k, "tensors": n, "bytes": b})).collect::<Vec<_>>(),
        });
        outln!("{j:#}")?;
        return Ok(());
    }
    outln!(
        "blob: {} bytes of device flash, crc32 {:08x}, format version {}{}",
        model.as_bytes().len(),
        model.checksum(),
        model.version(),
        match bytes.len() - model.as_bytes().len() {
            0 => String::new(),
            n => format!(" (+ {n} bytes of host-only trailer: the tokenizer, not flashed)"),
        }
    )?;
    outln!(
        "model: {} layers x {} heads, d_model {}, d_head {}, vocab {} -> {}, n_ctx {}, {:?}, {:?} positions",
        c.n_layers, c.n_heads, c.d_model, c.d_head, c.d_vocab, c.d_vocab_out, c.n_ctx, c.normalization, c.positional
    )?;
    outln!("processing: {:?}", model.processing())?;
    outln!(
        "device RAM: workspace {ws} bytes (minimum for KV cache + residual + logits: {min} bytes, {:.3}x); trace frame buffer {frame} bytes",
        ws as f64 / min as f64
    )?;
    for (kv, ws, cache) in &kv_options {
        outln!(
            "  with a {:<4} KV cache: workspace {ws} bytes (KV cache {cache} bytes)",
            kv.name()
        )?;
    }
    let summary: Vec<String> = per_kind
        .iter()
        .map(|(k, n, b)| format!("{k}: {n} tensors, {b} bytes"))
        .collect();
    outln!("storage: {}", summary.join("; "))?;
    for (n, k, [rows, cols], b) in kinds {
        outln!(
            "  {n:<28} {k:<9} {:>12} {b:>8} bytes",
            format!("{rows}x{cols}")
        )?;
    }
    Ok(())
}
