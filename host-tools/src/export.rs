//! Writing a decoded cache as JSON, NumPy `.npz` or safetensors.

use std::collections::BTreeMap;
use std::path::Path;

use npyz::WriterBuilder;

use crate::{Error, Result};

/// Hook name → (shape, row-major f32 data).
pub type Cache = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// `{"<hook name>": {"shape": [...], "data": [...]}}`; NaN and infinities (lost values,
/// masked scores) become `null`, as JSON has no such numbers.
pub fn to_json(cache: &Cache) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, (shape, data)) in cache {
        let data: Vec<serde_json::Value> = data
            .iter()
            .map(|v| {
                serde_json::Number::from_f64(*v as f64)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            })
            .collect();
        m.insert(
            k.clone(),
            serde_json::json!({ "shape": shape, "data": data }),
        );
    }
    serde_json::Value::Object(m)
}

/// A NumPy `.npz` archive, one float32 array per hook (`np.load(path)["blocks.0.attn.hook_pattern"]`).
pub fn to_npz(cache: &Cache) -> Result<Vec<u8>> {
    let mut cursor = std::io::Cursor::new(Vec::new());
    {
        let mut npz = npyz::npz::NpzWriter::new(&mut cursor);
        for (k, (shape, data)) in cache {
            let shape: Vec<u64> = shape.iter().map(|s| *s as u64).collect();
            let mut w = npz
                .array::<f32>(k, Default::default())
                .map_err(|e| Error::Trace(format!("npz: {e}")))?
                .default_dtype()
                .shape(&shape)
                .begin_nd()
                .map_err(|e| Error::Trace(format!("npz: {e}")))?;
            w.extend(data.iter().copied())
                .map_err(|e| Error::Trace(format!("npz: {e}")))?;
            w.finish().map_err(|e| Error::Trace(format!("npz: {e}")))?;
        }
    }
    Ok(cursor.into_inner())
}

/// A safetensors file, one F32 tensor per hook.
pub fn to_safetensors(cache: &Cache) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = cache
        .iter()
        .map(|(k, (shape, data))| {
            (
                k.clone(),
                shape.clone(),
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, shape, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::Trace(format!("safetensors: {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::Trace(format!("safetensors: {e}")))
}

/// Writes `cache` in `format` (`json`, `npy`/`npz`, `safetensors`) to `path` (`-`: stdout).
pub fn write(cache: &Cache, format: &str, path: &Path) -> Result<()> {
    let bytes = match format {
        "json" => {
            let mut s =
                serde_json::to_string(&to_json(cache)).map_err(|e| Error::Trace(e.to_string()))?;
            s.push('\n');
            s.into_bytes()
        }
        "npy" | "npz" => to_npz(cache)?,
        "safetensors" => to_safetensors(cache)?,
        f => {
            return Err(Error::Argument(format!(
                "unknown format `{f}` (json, npy, safetensors)"
            )))
        }
    };
    crate::cli::write_output(path, &bytes)
}
