//! `tinylens._native`: the Python extension module behind `import tinylens`.
//!
//! A thin binding over `tinylens-host`: every computation (the forward pass, probes,
//! traces and their decoder, the TransformerLens import, weight processing, quantization,
//! circuit analysis) is the host crate's, exactly as the CLI runs it. This layer only
//! moves arrays between NumPy and Rust, adds TransformerLens's leading batch dimension,
//! releases the GIL while the model runs, and turns every host error into
//! `tinylens.Error` with the CLI's one-line message. The Python package
//! (`python/tinylens/__init__.py`) adapts arguments (names_filter, torch tensors, TL
//! configs) and documents the API; `_native.pyi` types this module.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyReadonlyArray2, PyReadonlyArrayDyn};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use tinylens_core::{HookPoint, NoHooks, Normalization};
use tinylens_host::analysis::{self, CompositionMode, DetectOptions, HeadKind};
use tinylens_host::convert::{self as host_convert, QuantPlan};
use tinylens_host::engine::{Engine, Sampling};
use tinylens_host::export::Cache;
use tinylens_host::run::{self as host_run, AblateMode, RunOptions};
use tinylens_host::tokenizer::{self, TextTokenizer};
use tinylens_host::trace::decode_stream;
use tinylens_host::{cli, tl};

create_exception!(
    tinylens,
    Error,
    PyException,
    "Every error of tinylens: bad input, a malformed blob or trace, an unsupported model. \
     The message is the CLI's one-line message."
);

/// The host error as `tinylens.Error`, with the message the CLI prints after `error: `.
fn err(e: tinylens_host::Error) -> PyErr {
    Error::new_err(e.to_string())
}

fn arg_err(msg: impl Into<String>) -> PyErr {
    err(tinylens_host::Error::Argument(msg.into()))
}

type CoreModel<'a> = tinylens_core::Model<'a>;

self_cell::self_cell!(
    /// A validated blob and the zero-copy model view into it.
    struct Blob {
        owner: Vec<u8>,
        #[covariant]
        dependent: CoreModel,
    }
);

/// A model blob loaded into memory (validated once, as a device does at boot).
#[pyclass(module = "tinylens._native", name = "Model", frozen)]
struct PyModel {
    blob: Blob,
}

impl PyModel {
    fn model(&self) -> &CoreModel<'_> {
        self.blob.borrow_dependent()
    }

    /// The rows of a `[batch, pos]` token array, checked against the model as the CLI
    /// checks `--tokens` (`prompts::check`: same messages).
    fn rows(&self, tokens: &PyReadonlyArray2<'_, i64>) -> PyResult<Vec<Vec<u32>>> {
        let rows = token_rows(tokens)?;
        for row in &rows {
            tinylens_host::prompts::check(row, self.model()).map_err(err)?;
        }
        Ok(rows)
    }

    fn tokenizer(&self) -> PyResult<Option<TextTokenizer>> {
        tokenizer::for_blob(self.blob.borrow_owner(), None).map_err(err)
    }

    fn new_from(bytes: Vec<u8>) -> PyResult<Self> {
        let blob = Blob::try_new(bytes, |b| CoreModel::from_bytes(b))
            .map_err(|e| err(tinylens_host::Error::Core(e)))?;
        Ok(PyModel { blob })
    }
}

fn no_tokenizer() -> PyErr {
    arg_err(
        "text needs a tokenizer: convert the model with tokenizer=\"tokenizer.json\" (or \
         `tinylens convert --tokenizer`), or pass token ids",
    )
}

/// Token ids of a `[batch, pos]` int64 array, checked like the CLI's `--tokens`.
fn token_rows(tokens: &PyReadonlyArray2<'_, i64>) -> PyResult<Vec<Vec<u32>>> {
    let a = tokens.as_array();
    if a.ncols() == 0 || a.nrows() == 0 {
        return Err(arg_err("no tokens given"));
    }
    a.rows()
        .into_iter()
        .map(|row| {
            row.iter()
                .map(|&t| {
                    u32::try_from(t).map_err(|_| {
                        arg_err(format!("`{t}` is not a token id (a non-negative integer)"))
                    })
                })
                .collect()
        })
        .collect()
}

/// A float array's values, row-major.
fn values(a: &PyReadonlyArrayDyn<'_, f32>) -> Vec<f32> {
    a.as_array().iter().copied().collect()
}

/// An owned `[shape]` f32 array for Python (the vector moves into NumPy, no copy).
fn array<'py>(py: Python<'py>, shape: Vec<usize>, data: Vec<f32>) -> Bound<'py, PyArrayDyn<f32>> {
    ArrayD::from_shape_vec(IxDyn(&shape), data)
        .expect("shape and data agree")
        .into_pyarray(py)
}

/// A decoded cache stacked along a new leading batch dimension.
fn batched_cache<'py>(py: Python<'py>, caches: Vec<Cache>) -> PyResult<Bound<'py, PyDict>> {
    let batch = caches.len();
    let mut stacked = Cache::new();
    for cache in caches {
        for (name, (shape, data)) in cache {
            let entry = stacked.entry(name).or_insert_with(|| {
                let mut s = vec![batch];
                s.extend(&shape);
                (s, Vec::with_capacity(batch * data.len()))
            });
            entry.1.extend(data);
        }
    }
    let d = PyDict::new(py);
    for (name, (shape, data)) in stacked {
        if shape.iter().product::<usize>() != data.len() {
            return Err(Error::new_err(format!(
                "`{name}`: the sequences of the batch recorded different shapes"
            )));
        }
        d.set_item(name, array(py, shape, data))?;
    }
    Ok(d)
}

/// What `Model.run` needs for one batch, owned (so the GIL can be released).
struct BatchJob {
    rows: Vec<Vec<u32>>,
    probes: Vec<String>,
    ablate: Vec<((u16, u16), AblateMode)>,
    means: Option<Vec<f32>>,
    /// `[batch][n_layers * n_heads * pos * pos]`.
    frozen: Option<Vec<Vec<f32>>>,
    /// Per patch: hook, layer, per-row values.
    patches: Vec<(HookPoint, u16, Vec<Vec<f32>>)>,
    generate: usize,
    top_k: usize,
    temperature: f32,
    seed: u64,
    run_id: u32,
    keep_trace: bool,
}

struct RowOutput {
    tokens: Vec<u32>,
    logits: Vec<f32>,
    cache: Option<Cache>,
    trace: Vec<u8>,
}

fn run_batch(model: &CoreModel<'_>, job: &BatchJob) -> tinylens_host::Result<Vec<RowOutput>> {
    let pos = job.rows[0].len();
    job.rows
        .iter()
        .enumerate()
        .map(|(b, row)| {
            let opts = RunOptions {
                tokens: row.clone(),
                probes: job.probes.clone(),
                trace: job.keep_trace,
                ablate: job.ablate.clone(),
                means: job.means.clone(),
                frozen_patterns: job.frozen.as_ref().map(|f| (f[b].clone(), pos)),
                patches: job
                    .patches
                    .iter()
                    .map(|(point, layer, v)| (*point, *layer, v[b].clone(), pos))
                    .collect(),
                generate: job.generate,
                top_k: job.top_k,
                temperature: job.temperature,
                seed: job.seed,
                run_id: job.run_id,
                ..Default::default()
            };
            let out = host_run::run(model, &opts)?;
            let cache = if job.probes.is_empty() {
                None
            } else {
                let (runs, _) = decode_stream(&out.trace);
                let run = runs.into_iter().next().ok_or_else(|| {
                    tinylens_host::Error::Trace("the recorded trace holds no run".into())
                })?;
                Some(run.cache())
            };
            Ok(RowOutput {
                tokens: out.tokens,
                logits: out.logits.concat(),
                cache,
                trace: if job.keep_trace {
                    out.trace
                } else {
                    Vec::new()
                },
            })
        })
        .collect()
}

/// A batch with no intervention, on the host engine (TransformerLens's `run_with_cache`:
/// every sequence of the batch in parallel, the cache recorded in memory, batch first):
/// `[batch * pos * d_vocab_out]` logits and, when `probes` name any hook, the cache.
fn run_plain(
    model: &CoreModel<'_>,
    rows: &[Vec<u32>],
    probes: &[String],
) -> tinylens_host::Result<(Vec<f32>, Option<Cache>)> {
    let engine = Engine::new(model).keep_logits(true);
    if probes.is_empty() {
        let seqs = engine.run_batch(rows, 0, &Sampling::default(), |_| NoHooks)?;
        return Ok((seqs.into_iter().flat_map(|s| s.logits).collect(), None));
    }
    let (logits, cache) = engine.run_with_cache(rows, probes)?;
    Ok((logits, Some(cache)))
}

/// Splits a `[batch, ...]` array into its rows.
fn split_rows(
    a: &PyReadonlyArrayDyn<'_, f32>,
    batch: usize,
    what: &str,
) -> PyResult<Vec<Vec<f32>>> {
    let shape = a.as_array().shape().to_vec();
    if shape.first() != Some(&batch) {
        return Err(arg_err(format!(
            "{what}: shape {shape:?} does not start with the batch size {batch}"
        )));
    }
    let v = values(a);
    let n = v.len() / batch.max(1);
    Ok(v.chunks(n.max(1)).map(|c| c.to_vec()).collect())
}

fn parse_mode(mode: &str) -> PyResult<AblateMode> {
    match mode {
        "zero" => Ok(AblateMode::Zero),
        "mean" => Ok(AblateMode::Mean),
        m => Err(arg_err(format!(
            "ablation mode `{m}`: expected zero or mean"
        ))),
    }
}

#[pymethods]
impl PyModel {
    /// Loads a blob file (errors name the file, as the CLI's).
    #[staticmethod]
    fn from_path(path: PathBuf) -> PyResult<Self> {
        Self::new_from(host_run::read(&path).map_err(err)?)
    }

    /// Loads a blob from memory.
    #[staticmethod]
    fn from_bytes(data: &Bound<'_, PyBytes>) -> PyResult<Self> {
        Self::new_from(data.as_bytes().to_vec())
    }

    /// The config in TransformerLens's `cfg.to_dict()` keys, as JSON.
    fn config_json(&self) -> String {
        tl::config_to_json(&host_convert::host_config(self.model().config()))
    }

    /// The blob's CRC-32 (the `model_crc` every trace header carries).
    #[getter]
    fn checksum(&self) -> u32 {
        self.model().checksum()
    }

    /// The weight processing applied at conversion.
    fn processing(&self) -> BTreeMap<&'static str, bool> {
        let p = self.model().processing();
        BTreeMap::from([
            ("fold_ln", p.fold_ln),
            ("center_writing_weights", p.center_writing_weights),
            ("center_unembed", p.center_unembed),
            ("fold_value_biases", p.fold_value_biases),
        ])
    }

    /// Storage kind of every tensor of the blob, in table order.
    fn storage(&self) -> Vec<(String, &'static str)> {
        let m = self.model();
        (0..m.tensor_count())
            .filter_map(|i| {
                let slot = tinylens_core::blob::slot(m.config(), i)?;
                Some((slot.name.to_string(), m.tensor_at(i).kind.name()))
            })
            .collect()
    }

    /// RAM a device needs for the forward pass (workspace: KV cache, residual, logits).
    #[getter]
    fn ram_bytes(&self) -> usize {
        self.model().config().workspace_len() * 4
    }

    /// Bytes of the blob.
    #[getter]
    fn nbytes(&self) -> usize {
        self.model().as_bytes().len()
    }

    /// The blob as loaded (with its host-only trailer, the tokenizer, if any).
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.blob.borrow_owner())
    }

    /// Whether the blob carries a tokenizer (`convert(..., tokenizer=...)`).
    fn has_tokenizer(&self) -> PyResult<bool> {
        Ok(self.tokenizer()?.is_some())
    }

    /// Text to token ids with the blob's tokenizer, checked against the model (the
    /// CLI's `--text`; `prepend_bos` is TL's `to_tokens(prepend_bos=True)`).
    fn to_tokens(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        prepend_bos: bool,
    ) -> PyResult<Vec<Vec<u32>>> {
        let tok = self.tokenizer()?.ok_or_else(no_tokenizer)?;
        let m = self.model();
        py.detach(|| {
            texts
                .iter()
                .map(|t| tinylens_host::prompts::text_tokens(&tok, t, prepend_bos, m))
                .collect::<tinylens_host::Result<Vec<_>>>()
        })
        .map_err(err)
    }

    /// Token ids to text with the blob's tokenizer (TL's `to_string`), or, per token,
    /// its string (TL's `to_str_tokens`).
    fn decode_tokens(&self, tokens: Vec<u32>, per_token: bool) -> PyResult<Vec<String>> {
        let tok = self.tokenizer()?.ok_or_else(no_tokenizer)?;
        if per_token {
            tokens
                .iter()
                .map(|t| tok.decode(&[*t]))
                .collect::<tinylens_host::Result<_>>()
                .map_err(err)
        } else {
            Ok(vec![tok.decode(&tokens).map_err(err)?])
        }
    }

    /// The blob's vocabulary (token strings), when it has one.
    fn vocab(&self) -> Option<Vec<String>> {
        host_convert::vocab_of(self.model())
    }

    /// The weights as the device computes with them (dequantized f32), in TL's
    /// `state_dict` names and shapes (the host's `save_state_dict`).
    fn state_dict<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Vec<(String, Bound<'py, PyArrayDyn<f32>>)>> {
        let bytes = tl::save_state_dict(&host_convert::weights_from_model(self.model()));
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::new_err(format!("state_dict: {e}")))?;
        let mut out = Vec::new();
        for (name, view) in st.tensors() {
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            out.push((name, array(py, view.shape().to_vec(), data)));
        }
        Ok(out)
    }

    /// Every hook name this model has, in forward order (`logits` excluded).
    fn hook_names(&self) -> Vec<String> {
        let c = self.model().config();
        let mut names = Vec::new();
        let global = |p: HookPoint| !p.per_layer() && p != HookPoint::Logits;
        let has = |p: HookPoint| !(p.needs_ln() && c.normalization == Normalization::None);
        for p in HookPoint::ALL.into_iter().filter(|p| global(*p) && has(*p)) {
            if matches!(p, HookPoint::Embed | HookPoint::PosEmbed) {
                names.push(p.name(0).to_string());
            }
        }
        for l in 0..c.n_layers as u16 {
            for p in HookPoint::ALL
                .into_iter()
                .filter(|p| p.per_layer() && has(*p))
            {
                names.push(p.name(l).to_string());
            }
        }
        for p in HookPoint::ALL.into_iter().filter(|p| global(*p) && has(*p)) {
            if !matches!(p, HookPoint::Embed | HookPoint::PosEmbed) {
                names.push(p.name(0).to_string());
            }
        }
        names
    }

    /// Runs a `[batch, pos]` batch with probes (hook names or patterns) and
    /// interventions; returns the logits `[batch, pos, d_vocab_out]` and the decoded cache
    /// of the probes, each array with the batch leading. The GIL is released meanwhile.
    #[pyo3(signature = (tokens, probes, ablate=Vec::new(), means=None, frozen=None, patches=Vec::new()))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn run<'py>(
        &self,
        py: Python<'py>,
        tokens: PyReadonlyArray2<'py, i64>,
        probes: Vec<String>,
        ablate: Vec<(u16, u16, String)>,
        means: Option<PyReadonlyArrayDyn<'py, f32>>,
        frozen: Option<PyReadonlyArrayDyn<'py, f32>>,
        patches: Vec<(String, PyReadonlyArrayDyn<'py, f32>)>,
    ) -> PyResult<(Bound<'py, PyArrayDyn<f32>>, Bound<'py, PyDict>)> {
        let rows = self.rows(&tokens)?;
        let batch = rows.len();
        let job = BatchJob {
            probes,
            ablate: ablate
                .iter()
                .map(|(l, h, m)| Ok(((*l, *h), parse_mode(m)?)))
                .collect::<PyResult<_>>()?,
            means: means.as_ref().map(values),
            frozen: frozen
                .as_ref()
                .map(|f| split_rows(f, batch, "freeze_patterns"))
                .transpose()?,
            patches: patches
                .iter()
                .map(|(name, v)| {
                    let (point, layer) = host_run::parse_hook_name(name).map_err(err)?;
                    Ok((
                        point,
                        layer,
                        split_rows(v, batch, &format!("patch `{name}`"))?,
                    ))
                })
                .collect::<PyResult<_>>()?,
            rows,
            generate: 0,
            top_k: 0,
            temperature: 1.0,
            seed: 0,
            run_id: 0,
            keep_trace: false,
        };
        let model = self.model();
        let pos = job.rows[0].len();
        let vocab = model.config().d_vocab_out as usize;
        let plain = job.ablate.is_empty() && job.frozen.is_none() && job.patches.is_empty();
        let (logits, cache) = if plain {
            // The engine: batched, the cache recorded in memory.
            let (logits, cache) = py
                .detach(|| run_plain(model, &job.rows, &job.probes))
                .map_err(err)?;
            let d = PyDict::new(py);
            for (name, (shape, data)) in cache.unwrap_or_default() {
                d.set_item(name, array(py, shape, data))?;
            }
            (logits, d)
        } else {
            // Interventions: `tinylens run`'s, one sequence at a time.
            let outs = py.detach(|| run_batch(model, &job)).map_err(err)?;
            let logits: Vec<f32> = outs.iter().flat_map(|o| o.logits.iter().copied()).collect();
            let caches: Vec<_> = outs.into_iter().filter_map(|o| o.cache).collect();
            (logits, batched_cache(py, caches)?)
        };
        Ok((array(py, vec![batch, pos, vocab], logits), cache))
    }

    /// One sequence as `tinylens run --trace` runs it: the trace bytes (exactly what a
    /// device writes for the same blob, prompt, probes, generation and run id) and the
    /// prompt plus generated tokens.
    #[pyo3(signature = (tokens, probes, generate=0, top_k=0, temperature=1.0, seed=0, run_id=0))]
    #[allow(clippy::too_many_arguments)]
    fn trace<'py>(
        &self,
        py: Python<'py>,
        tokens: PyReadonlyArray2<'py, i64>,
        probes: Vec<String>,
        generate: usize,
        top_k: usize,
        temperature: f32,
        seed: u64,
        run_id: u32,
    ) -> PyResult<(Bound<'py, PyBytes>, Vec<u32>)> {
        let rows = self.rows(&tokens)?;
        if rows.len() != 1 {
            return Err(arg_err(format!(
                "a trace records one sequence, got a batch of {}",
                rows.len()
            )));
        }
        let job = BatchJob {
            rows,
            probes,
            ablate: Vec::new(),
            means: None,
            frozen: None,
            patches: Vec::new(),
            generate,
            top_k,
            temperature,
            seed,
            run_id,
            keep_trace: true,
        };
        let model = self.model();
        let mut outs = py.detach(|| run_batch(model, &job)).map_err(err)?;
        let out = outs.pop().expect("one row");
        Ok((PyBytes::new(py, &out.trace), out.tokens))
    }
}

/// Decodes run `run` of a trace stream (a file or bytes): `(tokens, cache, report_json)`
/// with tokens `[1, pos]` (-1 where a token frame was lost) and every cache array with a
/// batch dimension of 1.
#[pyfunction]
#[pyo3(signature = (path=None, data=None, run=0))]
#[allow(clippy::type_complexity)]
fn load_trace<'py>(
    py: Python<'py>,
    path: Option<PathBuf>,
    data: Option<Bound<'py, PyBytes>>,
    run: usize,
) -> PyResult<(Bound<'py, PyArrayDyn<i64>>, Bound<'py, PyDict>, String)> {
    let data = data.map(|d| d.as_bytes().to_vec());
    let (r, report) = py
        .detach(|| match (&path, &data) {
            (Some(p), None) => tinylens_host::trace::read_run(p, run),
            (None, Some(d)) => {
                tinylens_host::trace::read_run_from(&mut d.as_slice(), Path::new("<bytes>"), run)
            }
            _ => Err(tinylens_host::Error::Argument(
                "load_trace: give a path or bytes".into(),
            )),
        })
        .map_err(err)?;
    let tokens: Vec<i64> = r
        .token_list()
        .iter()
        .map(|t| t.map_or(-1, i64::from))
        .collect();
    let n = tokens.len();
    let tokens = ArrayD::from_shape_vec(IxDyn(&[1, n]), tokens)
        .expect("shape")
        .into_pyarray(py);
    let cache = batched_cache(py, vec![r.cache()])?;
    let c = &r.config;
    let report_json = serde_json::json!({
        "stream": report,
        "run": r.loss,
        "run_index": run,
        "run_id": r.run_id,
        "model_crc": r.model_crc,
        "positions": r.positions(),
        "records": r.records.len(),
        "processing": r.processing,
        "cfg": serde_json::from_str::<serde_json::Value>(&tl::config_to_json(&host_convert::host_config(c))).unwrap_or_default(),
    });
    Ok((tokens, cache, report_json.to_string()))
}

/// A TransformerLens state_dict (name, safetensors dtype, shape, little-endian bytes) and
/// config JSON → a blob, as `tinylens convert` does. Returns the blob and a JSON report.
#[pyfunction]
#[pyo3(signature = (tensors, cfg_json, quant="int8", embed_quant=None, fold_ln=false, center_writing_weights=false, center_unembed=false, fold_value_biases=false, vocab=None, tokenizer_json=None))]
#[allow(clippy::too_many_arguments)]
fn convert<'py>(
    py: Python<'py>,
    tensors: Vec<(String, String, Vec<usize>, Bound<'py, PyBytes>)>,
    cfg_json: &str,
    quant: &str,
    embed_quant: Option<&str>,
    fold_ln: bool,
    center_writing_weights: bool,
    center_unembed: bool,
    fold_value_biases: bool,
    vocab: Option<Vec<String>>,
    tokenizer_json: Option<(Bound<'py, PyBytes>, String)>,
) -> PyResult<(Bound<'py, PyBytes>, String)> {
    let tok = tokenizer_json
        .map(|(json, source)| TextTokenizer::from_json(json.as_bytes(), &source))
        .transpose()
        .map_err(err)?;
    let mut plan = QuantPlan::for_kind(cli::parse_kind(quant).map_err(err)?);
    if let Some(e) = embed_quant {
        plan.embeddings = cli::parse_kind(e).map_err(err)?;
    }
    let cfg = tl::parse_config(cfg_json).map_err(err)?;
    let mut views = Vec::with_capacity(tensors.len());
    for (name, dtype, shape, bytes) in &tensors {
        let dt = safetensors_dtype(dtype).ok_or_else(|| {
            arg_err(format!(
                "tensor `{name}` has dtype {dtype}, which safetensors cannot hold"
            ))
        })?;
        let view = safetensors::tensor::TensorView::new(dt, shape.clone(), bytes.as_bytes())
            .map_err(|e| arg_err(format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    let st =
        safetensors::serialize(views, None).map_err(|e| arg_err(format!("state_dict: {e}")))?;
    let requested = tl::Processing {
        fold_ln,
        center_writing_weights,
        center_unembed,
        fold_value_biases,
    };
    let (blob, report) = py
        .detach(|| -> tinylens_host::Result<_> {
            let mut w = tl::load_state_dict(&st, &cfg)?;
            // As `tinylens convert --tokenizer`: the vocabulary is the tokenizer's token
            // strings, and the tokenizer goes into the host-only trailer.
            let vocab = match &tok {
                Some(t) => {
                    t.check_fits(w.cfg.d_vocab as u32)?;
                    Some(t.token_strings(w.cfg.d_vocab as u32))
                }
                None => vocab,
            };
            let processing = tl::process(&mut w, requested)?;
            let (mut blob, tensors) =
                host_convert::write_blob(&w, plan, processing, vocab.as_deref())?;
            if let Some(t) = &tok {
                blob = tokenizer::append_trailer(&blob, t.json())?;
            }
            let report = serde_json::json!({
                "processing": {
                    "fold_ln": processing.fold_ln,
                    "center_writing_weights": processing.center_writing_weights,
                    "center_unembed": processing.center_unembed,
                    "fold_value_biases": processing.fold_value_biases,
                },
                "tensors": tensors,
            });
            Ok((blob, report))
        })
        .map_err(err)?;
    Ok((PyBytes::new(py, &blob), report.to_string()))
}

fn safetensors_dtype(name: &str) -> Option<safetensors::Dtype> {
    use safetensors::Dtype::*;
    Some(match name {
        "BOOL" => BOOL,
        "U8" => U8,
        "I8" => I8,
        "I16" => I16,
        "U16" => U16,
        "I32" => I32,
        "U32" => U32,
        "I64" => I64,
        "U64" => U64,
        "F16" => F16,
        "BF16" => BF16,
        "F32" => F32,
        "F64" => F64,
        _ => return None,
    })
}

/// Copying scores `[layer][head]` of the blob's (dequantized) weights.
#[pyfunction]
fn copying_scores(py: Python<'_>, model: &PyModel) -> PyResult<Vec<Vec<f64>>> {
    let m = model.model();
    py.detach(|| {
        let w = host_convert::weights_from_model(m);
        analysis::copying_scores(&analysis::vocab::Vocab::new(&w))
    })
    .map_err(err)
}

/// TL's `all_composition_scores(kind)` `[l1][h1][l2][h2]`, optionally minus the paper's
/// random baseline (where l1 < l2).
#[pyfunction]
#[pyo3(signature = (model, kind, subtract_baseline=false))]
fn composition_scores(
    py: Python<'_>,
    model: &PyModel,
    kind: &str,
    subtract_baseline: bool,
) -> PyResult<Vec<Vec<Vec<Vec<f64>>>>> {
    let mode = match kind {
        "Q" | "q" => CompositionMode::Q,
        "K" | "k" => CompositionMode::K,
        "V" | "v" => CompositionMode::V,
        k => {
            return Err(arg_err(format!(
                "composition kind `{k}`: expected Q, K or V"
            )))
        }
    };
    let m = model.model();
    py.detach(|| {
        let w = host_convert::weights_from_model(m);
        let s = analysis::composition_scores_mode(&w, mode).map_err(err)?;
        if subtract_baseline {
            let b = analysis::composition_baseline(
                w.cfg.d_model,
                w.cfg.d_head,
                analysis::BASELINE_SAMPLES,
                analysis::BASELINE_SEED,
            );
            Ok(analysis::subtract_baseline(&s, b.mean))
        } else {
            Ok(s)
        }
    })
}

/// TL's `detect_head` scores `[layer][head]` ('mul'), the mean over the batch's
/// sequences, from the patterns the model records on them.
#[pyfunction]
#[pyo3(signature = (model, tokens, kind, exclude_bos=false, exclude_current_token=false))]
fn head_scores(
    py: Python<'_>,
    model: &PyModel,
    tokens: PyReadonlyArray2<'_, i64>,
    kind: &str,
    exclude_bos: bool,
    exclude_current_token: bool,
) -> PyResult<Vec<Vec<f64>>> {
    let kind = match kind {
        "previous_token" | "previous_token_head" => HeadKind::PreviousToken,
        "duplicate_token" | "duplicate_token_head" => HeadKind::DuplicateToken,
        "induction" | "induction_head" => HeadKind::Induction,
        k => {
            return Err(arg_err(format!(
                "head kind `{k}`: expected previous_token, duplicate_token or induction"
            )))
        }
    };
    let rows = model.rows(&tokens)?;
    let m = model.model();
    let opts = DetectOptions {
        exclude_bos,
        exclude_current_token,
    };
    py.detach(|| -> tinylens_host::Result<_> {
        let probes = vec!["blocks.*.attn.hook_pattern".to_string()];
        let recs = rows
            .iter()
            .map(|r| analysis::recorded::record(m, r, &probes))
            .collect::<tinylens_host::Result<Vec<_>>>()?;
        let patterns = recs
            .iter()
            .map(|r| r.patterns())
            .collect::<tinylens_host::Result<Vec<_>>>()?;
        let batch: Vec<(&[u32], &analysis::LayerPatterns)> = rows
            .iter()
            .zip(&patterns)
            .map(|(t, p)| (t.as_slice(), p.as_slice()))
            .collect();
        analysis::detect_batch(&batch, kind, opts)
    })
    .map_err(err)
}

/// Writes bytes to a file as the CLI writes its outputs (`cli::write_output`: atomic,
/// so a failed write never leaves a half-written file in place of a good one).
#[pyfunction]
fn write_file(path: PathBuf, data: &Bound<'_, PyBytes>) -> PyResult<()> {
    cli::write_output(&path, data.as_bytes()).map_err(err)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("Error", m.py().get_type::<Error>())?;
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(load_trace, m)?)?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add_function(wrap_pyfunction!(copying_scores, m)?)?;
    m.add_function(wrap_pyfunction!(composition_scores, m)?)?;
    m.add_function(wrap_pyfunction!(head_scores, m)?)?;
    m.add_function(wrap_pyfunction!(write_file, m)?)?;
    m.add("HOST_VERSION", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
