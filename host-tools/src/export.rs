//! Writing a decoded cache as JSON, NumPy `.npz` or safetensors, streamed: an array is
//! produced a piece at a time ([`Arrays::emit`]) and written as it comes, so exporting
//! needs memory for one piece, never a copy of the cache (a trace's cache can be far
//! larger than the trace: every value that did not arrive is a NaN to write).

use std::collections::BTreeMap;
use std::io::{self, Seek, Write};
use std::path::Path;

use npyz::WriterBuilder;

use crate::{Error, Result};

/// Hook name → (shape, row-major f32 data).
pub type Cache = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Named f32 arrays that can be written without being held: what the exporters take.
pub trait Arrays {
    /// Every array's name and shape, in the order they are written (sorted by name).
    fn list(&self) -> Vec<(String, Vec<usize>)>;
    /// Hands array `index`'s values, row-major, to `sink` in pieces (any split).
    fn emit(&self, index: usize, sink: &mut dyn FnMut(&[f32]) -> io::Result<()>) -> io::Result<()>;
    /// Whether array `index` holds integers (token ids; emitted as exact f32, NaN where
    /// unknown): `.npz` and safetensors write it as int64 with -1 for NaN.
    fn is_integer(&self, _index: usize) -> bool {
        false
    }
}

/// TransformerLens's leading batch dimension: every array of `0` with a batch of one
/// (a decoded run is one sequence), as `tinylens decode --format npy|safetensors` writes
/// it and the Python package's `load_trace` returns it.
pub struct Batched<'a>(pub &'a dyn Arrays);

impl Arrays for Batched<'_> {
    fn list(&self) -> Vec<(String, Vec<usize>)> {
        let mut list = self.0.list();
        for (_, shape) in &mut list {
            shape.insert(0, 1);
        }
        list
    }

    fn emit(&self, index: usize, sink: &mut dyn FnMut(&[f32]) -> io::Result<()>) -> io::Result<()> {
        self.0.emit(index, sink)
    }

    fn is_integer(&self, index: usize) -> bool {
        self.0.is_integer(index)
    }
}

/// An integer array's f32 values as int64 (NaN, an unknown token: -1).
fn as_i64(v: f32) -> i64 {
    if v.is_nan() {
        -1
    } else {
        v as i64
    }
}

impl Arrays for Cache {
    fn list(&self) -> Vec<(String, Vec<usize>)> {
        self.iter()
            .map(|(k, (s, _))| (k.clone(), s.clone()))
            .collect()
    }

    fn emit(&self, index: usize, sink: &mut dyn FnMut(&[f32]) -> io::Result<()>) -> io::Result<()> {
        match self.values().nth(index) {
            Some((_, data)) => sink(data),
            None => Ok(()),
        }
    }
}

/// Checks that `emit` handed over exactly `expected` values (a piece too many or too
/// few would make a file whose header lies about its data).
fn emit_exactly(
    arrays: &dyn Arrays,
    index: usize,
    expected: usize,
    sink: &mut dyn FnMut(&[f32]) -> io::Result<()>,
) -> io::Result<()> {
    let mut n = 0usize;
    arrays.emit(index, &mut |piece| {
        n += piece.len();
        if n > expected {
            return Err(io::Error::other("array longer than its shape"));
        }
        sink(piece)
    })?;
    if n != expected {
        return Err(io::Error::other("array shorter than its shape"));
    }
    Ok(())
}

/// `{"<hook name>": {"data": [...], "shape": [...]}}` followed by a newline; NaN and
/// infinities (lost values, masked scores) become `null`, as JSON has no such numbers.
pub fn write_json(arrays: &dyn Arrays, w: &mut dyn Write) -> io::Result<()> {
    let json = |e: serde_json::Error| io::Error::other(e);
    w.write_all(b"{")?;
    for (i, (name, shape)) in arrays.list().iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        serde_json::to_writer(&mut *w, name).map_err(json)?;
        w.write_all(b":{\"data\":[")?;
        let mut first = true;
        emit_exactly(arrays, i, shape.iter().product(), &mut |piece| {
            for v in piece {
                if !first {
                    w.write_all(b",")?;
                }
                first = false;
                if v.is_finite() {
                    serde_json::to_writer(&mut *w, &f64::from(*v)).map_err(json)?;
                } else {
                    w.write_all(b"null")?;
                }
            }
            Ok(())
        })?;
        w.write_all(b"],\"shape\":")?;
        serde_json::to_writer(&mut *w, shape).map_err(json)?;
        w.write_all(b"}")?;
    }
    w.write_all(b"}\n")
}

/// The JSON of [`write_json`] as a value (small caches, tests).
pub fn to_json(cache: &Cache) -> serde_json::Value {
    let mut bytes = Vec::new();
    write_json(cache, &mut bytes).expect("writing to memory");
    serde_json::from_slice(&bytes).expect("write_json writes JSON")
}

/// A NumPy `.npz` archive, one float32 array per hook
/// (`np.load(path)["blocks.0.attn.hook_pattern"]`).
pub fn write_npz<W: Write + Seek>(arrays: &dyn Arrays, w: W) -> io::Result<()> {
    let mut npz = npyz::npz::NpzWriter::new(w);
    for (i, (name, shape)) in arrays.list().iter().enumerate() {
        let dims: Vec<u64> = shape.iter().map(|s| *s as u64).collect();
        if arrays.is_integer(i) {
            let mut out = npz
                .array::<i64>(name, Default::default())?
                .default_dtype()
                .shape(&dims)
                .begin_nd()?;
            emit_exactly(arrays, i, shape.iter().product(), &mut |piece| {
                out.extend(piece.iter().map(|v| as_i64(*v)))
            })?;
            out.finish()?;
            continue;
        }
        let mut out = npz
            .array::<f32>(name, Default::default())?
            .default_dtype()
            .shape(&dims)
            .begin_nd()?;
        emit_exactly(arrays, i, shape.iter().product(), &mut |piece| {
            out.extend(piece.iter().copied())
        })?;
        out.finish()?;
    }
    npz.zip_writer()
        .finish()
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(())
}

/// [`write_npz`] into memory.
pub fn to_npz(cache: &Cache) -> Result<Vec<u8>> {
    let mut cursor = io::Cursor::new(Vec::new());
    write_npz(cache, &mut cursor).map_err(|e| Error::Trace(format!("npz: {e}")))?;
    Ok(cursor.into_inner())
}

/// A safetensors file, one F32 tensor per hook: the bytes `safetensors::serialize`
/// writes (header sorted by name, padded with spaces to 8 bytes), data streamed.
pub fn write_safetensors(arrays: &dyn Arrays, w: &mut dyn Write) -> io::Result<()> {
    use safetensors::tensor::TensorInfo;
    use serde::ser::{SerializeMap, Serializer};
    let list = arrays.list();
    let mut header = Vec::new();
    {
        let mut ser = serde_json::Serializer::new(&mut header);
        let mut map = ser
            .serialize_map(Some(list.len()))
            .map_err(io::Error::other)?;
        let mut offset = 0usize;
        for (i, (name, shape)) in list.iter().enumerate() {
            let (dtype, width) = if arrays.is_integer(i) {
                (safetensors::Dtype::I64, 8)
            } else {
                (safetensors::Dtype::F32, 4)
            };
            let n = shape
                .iter()
                .product::<usize>()
                .checked_mul(width)
                .ok_or_else(|| io::Error::other("array too large"))?;
            let info = TensorInfo {
                dtype,
                shape: shape.clone(),
                data_offsets: (offset, offset + n),
            };
            offset += n;
            map.serialize_entry(name, &info).map_err(io::Error::other)?;
        }
        map.end().map_err(io::Error::other)?;
    }
    header.resize(header.len().next_multiple_of(8), b' ');
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    let mut bytes = Vec::new();
    for (i, (_, shape)) in list.iter().enumerate() {
        let integer = arrays.is_integer(i);
        emit_exactly(arrays, i, shape.iter().product(), &mut |piece| {
            bytes.clear();
            if integer {
                bytes.extend(piece.iter().flat_map(|v| as_i64(*v).to_le_bytes()));
            } else {
                bytes.extend(piece.iter().flat_map(|v| v.to_le_bytes()));
            }
            w.write_all(&bytes)
        })?;
    }
    Ok(())
}

/// [`write_safetensors`] into memory.
pub fn to_safetensors(cache: &Cache) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    write_safetensors(cache, &mut bytes).map_err(|e| Error::Trace(format!("safetensors: {e}")))?;
    Ok(bytes)
}

/// The formats [`write`] knows, checked before any work is done.
pub fn check_format(format: &str) -> Result<()> {
    match format {
        "json" | "npy" | "npz" | "safetensors" => Ok(()),
        f => Err(Error::Argument(format!(
            "unknown format `{}` (json, npy, safetensors)",
            crate::cli::escape(f)
        ))),
    }
}

/// Writes `arrays` in `format` (`json`, `npy`/`npz`, `safetensors`) to `path` (`-`:
/// standard output), atomically ([`crate::cli::write_output_with`]).
pub fn write(arrays: &dyn Arrays, format: &str, path: &Path) -> Result<()> {
    check_format(format)?;
    match format {
        "json" => crate::cli::write_output_with(path, |w| write_json(arrays, w)),
        "safetensors" => crate::cli::write_output_with(path, |w| write_safetensors(arrays, w)),
        _ => crate::cli::write_output_seekable(path, |w| write_npz(arrays, w)),
    }
}
