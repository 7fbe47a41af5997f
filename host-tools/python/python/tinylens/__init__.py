"""tinylens from Python: tiny attention-only transformers with every TransformerLens hook.

The same Rust code as the ``tinylens`` CLI and the microcontroller firmware, with
TransformerLens's (TL's) names and shapes: batch always leads, hook names are TL's
(``blocks.0.attn.hook_pattern``), tokens are integers.

    import tinylens
    model = tinylens.Model("models/demo/demo-int8.tlm")
    logits, cache = model.run_with_cache(tokens)          # tokens: [batch, pos] ints
    cache["blocks.1.attn.hook_pattern"].shape             # (batch, n_heads, pos, pos)

    blob = tinylens.convert(hooked_transformer, quant="int8")   # bytes, as `tinylens convert`
    tokens, cache, report = tinylens.load_trace("device.tlt")   # a device's trace
    act = tinylens.to_activation_cache(cache, hooked_transformer)  # a real TL ActivationCache

Every error is a :class:`tinylens.Error` with the CLI's one-line message. numpy is the
only dependency; torch and transformer_lens are used only where a function says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from ._native import Error

__all__ = [
    "Error",
    "Model",
    "convert",
    "load_trace",
    "to_activation_cache",
    "copying_scores",
    "composition_scores",
    "head_scores",
]

__version__ = _native.HOST_VERSION

PathLike = Union[str, "os.PathLike[str]"]
NamesFilter = Union[None, str, Sequence[str], Callable[[str], bool]]

# Hooks whose TL shape (without batch) has three axes; every other hook has two.
_THREE_AXES = (
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_z",
    "attn.hook_result",
    "attn.hook_pattern",
    "attn.hook_attn_scores",
)


def _unbatched_ndim(name: str) -> int:
    return 3 if name.endswith(_THREE_AXES) else 2


def _tokens(tokens: Any, model: Optional["Model"] = None) -> np.ndarray:
    """Token ids as a C-contiguous int64 ``[batch, pos]`` array (TL accepts ``[pos]`` too);
    text (a string or a list of strings) through the blob's tokenizer."""
    if isinstance(tokens, str) or (
        isinstance(tokens, (list, tuple)) and tokens and all(isinstance(t, str) for t in tokens)
    ):
        if model is None:
            raise Error("invalid argument: text needs a model's tokenizer; pass token ids")
        return model.to_tokens(tokens)
    if hasattr(tokens, "detach") and hasattr(tokens, "cpu"):  # a torch tensor
        tokens = tokens.detach().cpu().numpy()
    try:
        a = np.asarray(tokens)
    except (ValueError, TypeError) as e:  # ragged lists
        raise Error(f"invalid argument: tokens: {e}") from None
    if a.size == 0:
        raise Error("invalid argument: no tokens given")
    if a.dtype.kind not in "iu":
        raise Error(
            f"invalid argument: tokens must be integers (token ids), got an array of {a.dtype}"
        )
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise Error(
            f"invalid argument: tokens must be [batch, pos] or [pos], got shape {list(a.shape)}"
        )
    if a.dtype.kind == "u" and a.max() > np.iinfo(np.int64).max:
        raise Error(f"invalid argument: `{a.max()}` is not a token id")
    return np.ascontiguousarray(a, dtype=np.int64)


def _f32(a: Any, what: str) -> np.ndarray:
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        a = a.detach().cpu().float().numpy()
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as e:
        raise Error(f"invalid argument: {what}: {e}") from None
    if arr.dtype.kind not in "fiu":
        raise Error(f"invalid argument: {what}: expected numbers, got an array of {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


class Model:
    """A tinylens model blob (``tinylens convert``'s output), loaded and validated.

    ``Model(path)`` or ``Model(blob_bytes)``. The attributes follow TL:

    - ``cfg``: a dict in ``HookedTransformerConfig.to_dict()`` terms (``n_layers``,
      ``d_model``, ``n_heads``, ``d_head``, ``d_vocab``, ``d_vocab_out``, ``n_ctx``,
      ``normalization_type``, ``positional_embedding_type``, ``eps``, ``attn_scale``, ...);
      ``HookedTransformerConfig(**model.cfg)`` builds the same architecture;
    - ``storage``: tensor name -> storage kind (``f32``, ``f16``, ``int8``, ``int4``);
    - ``ram_bytes``: RAM a device needs for the forward pass (KV cache, residual, logits);
    - ``processing``: the TL weight processing applied at conversion;
    - ``vocab``: the token strings stored in the blob, or None.
    """

    def __init__(self, path_or_bytes: Union[PathLike, bytes, bytearray, memoryview, "Model"]):
        if isinstance(path_or_bytes, Model):
            self._m = path_or_bytes._m
        elif isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            self._m = _native.Model.from_bytes(bytes(path_or_bytes))
        elif isinstance(path_or_bytes, (str, os.PathLike)):
            self._m = _native.Model.from_path(os.fspath(path_or_bytes))
        else:
            raise Error(
                "invalid argument: Model() takes a blob path or the blob's bytes, "
                f"not {type(path_or_bytes).__name__}"
            )
        self.cfg: Dict[str, Any] = json.loads(self._m.config_json())
        self.storage: Dict[str, str] = dict(self._m.storage())
        self.processing: Dict[str, bool] = dict(self._m.processing())
        self.ram_bytes: int = self._m.ram_bytes
        self.checksum: int = self._m.checksum
        self.vocab: Optional[List[str]] = self._m.vocab()

    def __repr__(self) -> str:
        c = self.cfg
        kinds = sorted(set(self.storage.values()) - {"f32", "bytes"}) or ["f32"]
        return (
            f"tinylens.Model({c['n_layers']} layers x {c['n_heads']} heads, d_model "
            f"{c['d_model']}, d_vocab {c['d_vocab']}, n_ctx {c['n_ctx']}, "
            f"{'/'.join(kinds)}, crc32 {self.checksum:08x})"
        )

    def to_bytes(self) -> bytes:
        """The blob as loaded: what a device flashes, plus the host-only tokenizer trailer
        when it has one."""
        return self._m.to_bytes()

    @property
    def has_tokenizer(self) -> bool:
        """Whether the blob carries a tokenizer (``convert(..., tokenizer=...)``): then
        every method that takes tokens also takes text."""
        return self._m.has_tokenizer()

    def to_tokens(self, text: Union[str, Sequence[str]], prepend_bos: bool = False) -> np.ndarray:
        """Text -> token ids ``[batch, pos]`` (int64) with the blob's tokenizer, as the CLI's
        ``--text``: the tokenizer's own post-processor decides about BOS; ``prepend_bos``
        puts exactly one BOS first (TL's ``to_tokens(prepend_bos=True)``). A list of texts
        must tokenize to one length (a batch has one)."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise Error("invalid argument: to_tokens takes a string or a list of strings")
        rows = self._m.to_tokens(texts, prepend_bos)
        if len({len(r) for r in rows}) != 1:
            raise Error(
                "invalid argument: the texts tokenize to different lengths "
                f"({sorted({len(r) for r in rows})}); a batch has one length"
            )
        return np.asarray(rows, dtype=np.int64)

    def to_string(self, tokens: Any) -> Union[str, List[str]]:
        """Token ids -> text (TL's ``to_string``): a string for ``[pos]``, a list for a batch."""
        t = _tokens(tokens)
        out = [self._m.decode_tokens([int(x) for x in row], False)[0] for row in t]
        return out[0] if np.ndim(tokens) == 1 else out

    def to_str_tokens(self, tokens: Any) -> List[str]:
        """Each token's string (TL's ``to_str_tokens``) for one sequence (text or ids)."""
        t = _tokens(tokens, self)
        if t.shape[0] != 1:
            raise Error("invalid argument: to_str_tokens takes one sequence")
        return list(self._m.decode_tokens([int(x) for x in t[0]], True))

    def save(self, path: PathLike) -> Path:
        """Writes the blob to ``path`` atomically; returns the path."""
        _native.write_file(os.fspath(path), self.to_bytes())
        return Path(path)

    def hook_names(self) -> List[str]:
        """Every hook point of this model, in forward order (TL's names; no LN hooks
        without LayerNorm; ``logits`` is the return value, not a hook)."""
        return list(self._m.hook_names())

    def state_dict(self) -> Dict[str, np.ndarray]:
        """The weights as the device computes with them (dequantized, float32), in TL's
        ``state_dict`` names and shapes (``blocks.0.attn.W_Q``: [n_heads, d_model, d_head])."""
        return dict(self._m.state_dict())

    def _probes(self, names_filter: NamesFilter) -> List[str]:
        if names_filter is None:
            return self.hook_names()
        if isinstance(names_filter, str):
            return [names_filter]
        if callable(names_filter):
            return [n for n in self.hook_names() if names_filter(n)]
        if isinstance(names_filter, (list, tuple, set, frozenset)):
            names = list(names_filter)
            bad = [n for n in names if not isinstance(n, str)]
            if bad:
                raise Error(f"invalid argument: names_filter: {bad[0]!r} is not a hook name")
            return names
        raise Error(
            "invalid argument: names_filter must be None, a hook name, a list of hook "
            f"names or a callable, not {type(names_filter).__name__}"
        )

    def run(self, tokens: Any) -> np.ndarray:
        """Logits ``[batch, pos, d_vocab_out]`` (float32) for ``[batch, pos]`` or ``[pos]``
        integer tokens (TL's ``model(tokens)``)."""
        logits, _ = self._m.run(_tokens(tokens, self), [])
        return logits

    __call__ = run

    def run_with_cache(
        self, tokens: Any, names_filter: NamesFilter = None
    ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        """``(logits, cache)`` as TL's ``model.run_with_cache(tokens)``.

        ``cache`` maps TL hook names to float32 arrays with TL's shapes, batch first:
        ``hook_embed`` [batch, pos, d_model], ``blocks.L.attn.hook_q`` [batch, pos, head,
        d_head], ``blocks.L.attn.hook_pattern`` [batch, head, q_pos, k_pos] (masked
        entries 0; ``hook_attn_scores`` has -inf there, as TL), ``blocks.L.attn.hook_result``
        [batch, pos, head, d_model] (always present, as TL with ``use_attn_result``),
        ``blocks.L.ln1.hook_scale`` [batch, pos, 1], ...

        ``names_filter`` is TL's: None (every hook), a hook name, a list of hook names, or
        a callable ``name -> bool``. Lists and names may also use the CLI's probe
        patterns (``blocks.*.attn.hook_z``). The batch runs on the host engine (the
        core's forward pass, the sequences in parallel, the GIL released); a device's
        trace of the same run decodes (:func:`load_trace`) to the same arrays.
        """
        return self._m.run(_tokens(tokens, self), self._probes(names_filter))

    def run_with_hooks(
        self,
        tokens: Any,
        *,
        ablate: Any = None,
        means: Any = None,
        freeze_patterns: Any = None,
        patch: Optional[Mapping[str, Any]] = None,
        return_cache: bool = False,
        names_filter: NamesFilter = None,
    ) -> Union[np.ndarray, Tuple[np.ndarray, Dict[str, np.ndarray]]]:
        """Logits of a run with the CLI's interventions (``tinylens run --ablate
        --means --freeze-patterns --patch``), applied in that order.

        - ``ablate``: heads to ablate: ``[(layer, head), ...]`` (zero ablation),
          ``[(layer, head, "zero"|"mean"), ...]``, ``{(layer, head): "mean", ...}`` or the
          CLI's strings ``["0.1", "1.2=mean"]``. Mean ablation needs ``means``.
        - ``means``: mean head results ``[n_layers, n_heads, d_model]`` (e.g.
          ``np.stack([cache[f"blocks.{l}.attn.hook_result"].mean((0, 1)) for l in ...])``).
        - ``freeze_patterns``: attention patterns to impose: a cache holding every layer's
          ``blocks.L.attn.hook_pattern`` [batch, head, pos, pos], or an array
          ``[batch, n_layers, head, pos, pos]`` (``[n_layers, head, pos, pos]`` for every row).
        - ``patch``: ``{hook name: values}`` with the hook's TL shape (batch first, or
          without batch for every row), e.g. ``{"blocks.0.attn.hook_z": clean["blocks.0.attn.hook_z"]}``.

        With ``return_cache=True`` returns ``(logits, cache)``; the cache (``names_filter``
        as in :meth:`run_with_cache`) holds the values after the interventions.
        """
        t = _tokens(tokens, self)
        batch, pos = t.shape
        heads = _ablations(ablate)
        m = None if means is None else _f32(means, "means")
        frozen = None
        if freeze_patterns is not None:
            frozen = self._frozen(freeze_patterns, batch)
        patches = []
        for name, values in (patch or {}).items():
            v = _f32(values, f"patch `{name}`")
            if v.ndim == _unbatched_ndim(name):
                v = np.ascontiguousarray(np.broadcast_to(v, (batch,) + v.shape))
            patches.append((name, v))
        probes = self._probes(names_filter) if return_cache else []
        logits, cache = self._m.run(t, probes, heads, m, frozen, patches)
        return (logits, cache) if return_cache else logits

    def _frozen(self, fp: Any, batch: int) -> np.ndarray:
        n_layers = self.cfg["n_layers"]
        if isinstance(fp, Mapping):
            names = [f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)]
            missing = [n for n in names if n not in fp]
            if missing:
                raise Error(f"invalid argument: freeze_patterns: `{missing[0]}` is missing")
            a = np.stack([_f32(fp[n], n) for n in names], axis=1)
        else:
            a = _f32(fp, "freeze_patterns")
            if a.ndim == 4:
                a = np.broadcast_to(a, (batch,) + a.shape)
        if a.ndim != 5:
            raise Error(
                "invalid argument: freeze_patterns: expected [batch, n_layers, n_heads, pos, "
                f"pos], got shape {list(a.shape)}"
            )
        return np.ascontiguousarray(a)

    def trace(
        self,
        tokens: Any,
        names_filter: NamesFilter = None,
        *,
        generate: int = 0,
        top_k: int = 0,
        temperature: float = 1.0,
        seed: int = 0,
        run_id: int = 0,
    ) -> bytes:
        """The trace ``tinylens run --trace`` writes for one sequence: the same bytes a
        device writes for the same blob, prompt, probes (``names_filter``; probe patterns
        with ``:f16``/``:int8`` allowed), generated tokens and run id. Decode it with
        :func:`load_trace`."""
        data, _ = self._m.trace(
            _tokens(tokens, self), self._probes(names_filter), generate, top_k, temperature, seed,
            run_id,
        )
        return data

    def generate(
        self,
        tokens: Any,
        max_new_tokens: int,
        *,
        top_k: int = 0,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> np.ndarray:
        """Prompt plus ``max_new_tokens`` generated tokens ``[batch, pos + new]`` (int64):
        greedy, or sampled among the ``top_k`` most likely with ``temperature``."""
        t = _tokens(tokens, self)
        rows = [
            self._m.trace(r[None, :], [], max_new_tokens, top_k, temperature, seed, 0)[1]
            for r in t
        ]
        return np.asarray(rows, dtype=np.int64)

    def to_hooked_transformer(self) -> Any:
        """A ``transformer_lens.HookedTransformer`` with this blob's weights as the device
        stores them (dequantized) and ``use_attn_result=True``. For f32 and f16 blobs its
        outputs are tinylens's (to float rounding); int8 and int4 blobs also quantize the
        activations of their matrix products on the device, which TL does not, so there
        they agree closely, not exactly. Needs torch and transformer_lens."""
        import torch
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        cfg = HookedTransformerConfig(
            **{**self.cfg, "dtype": torch.float32, "device": "cpu", "use_attn_result": True}
        )
        ht = HookedTransformer(cfg)
        sd = {k: torch.from_numpy(v) for k, v in self.state_dict().items()}
        ht.load_state_dict(sd, strict=False)
        ht.eval()
        return ht


def _ablations(ablate: Any) -> List[Tuple[int, int, str]]:
    if ablate is None:
        return []
    items: List[Any]
    if isinstance(ablate, Mapping):
        items = [(k[0], k[1], v) for k, v in ablate.items()]
    elif isinstance(ablate, (str, tuple)):
        items = [ablate]
    else:
        items = list(ablate)
    out = []
    for it in items:
        if isinstance(it, str):  # the CLI's L.H or L.H=zero|mean
            head, _, mode = it.partition("=")
            l, _, h = head.partition(".")
            try:
                out.append((int(l), int(h), mode or "zero"))
            except ValueError:
                raise Error(
                    f"invalid argument: --ablate `{it}`: expected L.H, L.H=zero or L.H=mean"
                ) from None
        elif isinstance(it, (tuple, list)) and len(it) in (2, 3):
            l, h = int(it[0]), int(it[1])
            if l < 0 or h < 0:
                raise Error(f"invalid argument: --ablate {l}.{h}: not a head")
            out.append((l, h, str(it[2]) if len(it) == 3 else "zero"))
        else:
            raise Error(f"invalid argument: ablate: {it!r} is not a (layer, head) pair")
    return out


def _as_model(model: Union[Model, PathLike, bytes]) -> Model:
    return model if isinstance(model, Model) else Model(model)


# ---------------------------------------------------------------------------------------
# Conversion from TransformerLens
# ---------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "b1": "BOOL",
    "u1": "U8",
    "i1": "I8",
    "i2": "I16",
    "u2": "U16",
    "i4": "I32",
    "u4": "U32",
    "i8": "I64",
    "u8": "U64",
    "f2": "F16",
    "f4": "F32",
    "f8": "F64",
}


def _tensor_entry(name: str, t: Any) -> Tuple[str, str, List[int], bytes]:
    """One state_dict tensor as (name, safetensors dtype, shape, little-endian bytes)."""
    if hasattr(t, "detach") and hasattr(t, "cpu"):  # torch
        import torch

        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: keep its bits
            return name, "BF16", list(t.shape), t.view(torch.int16).numpy().astype("<i2").tobytes()
        t = t.numpy()
    a = np.asarray(t)
    code = _SAFETENSORS_DTYPES.get(a.dtype.str[1:])
    if code is None:
        raise Error(f"tensor `{name}` has dtype {a.dtype}, expected a float type")
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return name, code, list(a.shape), a.tobytes()


def _jsonable(v: Any) -> Any:
    """A TL config value made JSON (TL's ``cfg.to_dict()`` holds a torch dtype, numpy
    scalars, a device)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)  # JSON has no infinities (as scripts/tl_ref.py writes them)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)  # torch.dtype, torch.device, ...


def _cfg_json(cfg: Any) -> str:
    if isinstance(cfg, (str, os.PathLike)) and not str(cfg).lstrip().startswith("{"):
        try:
            return Path(cfg).read_text()
        except OSError as e:
            raise Error(f"{cfg}: {e.strerror}") from None
    if isinstance(cfg, str):
        return cfg
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    if not isinstance(cfg, Mapping):
        raise Error(
            "config: expected a TransformerLens config (HookedTransformerConfig, its "
            f"to_dict(), or a JSON file), got {type(cfg).__name__}"
        )
    return json.dumps(_jsonable(cfg))


def convert(
    model_or_state_dict: Any,
    cfg: Any = None,
    *,
    quant: str = "int8",
    embed_quant: Optional[str] = None,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
    vocab: Union[None, Sequence[str], PathLike] = None,
    tokenizer: Any = None,
    output: Optional[PathLike] = None,
) -> Union[bytes, Path]:
    """TransformerLens weights -> a tinylens blob, exactly as ``tinylens convert``.

    ``model_or_state_dict`` is a live ``HookedTransformer`` (its ``state_dict()`` and
    ``cfg`` are used) or a state_dict (a mapping of names to torch tensors or numpy
    arrays) with ``cfg`` a ``HookedTransformerConfig``, its ``to_dict()`` (dtype and
    all), or a path to the config JSON. ``quant``/``embed_quant``: f32, f16, int8, int4
    (int4 keeps W_E, W_pos, W_U in int8 unless ``embed_quant`` says otherwise).
    ``fold_ln`` ... ``fold_value_biases``: TL's weight processing, with TL's conditions
    (the blob records what was applied: ``Model(blob).processing``). ``vocab``: token
    strings (a list, or a file with one per line). ``tokenizer``: a Hugging Face
    ``tokenizer.json`` (path, text or bytes), as ``convert --tokenizer``: the vocabulary
    becomes its token strings and the tokenizer rides in the blob's host-only trailer, so
    the model then takes text. Returns the blob's bytes, or writes it atomically to
    ``output`` and returns that path.
    """
    tok = None
    if tokenizer is not None:  # a tokenizer.json: a path, its text or its bytes
        if isinstance(tokenizer, (bytes, bytearray)):
            tok = (bytes(tokenizer), "<tokenizer bytes>")
        elif isinstance(tokenizer, str) and tokenizer.lstrip().startswith("{"):
            tok = (tokenizer.encode(), "<tokenizer JSON>")
        elif isinstance(tokenizer, (str, os.PathLike)):
            try:
                tok = (Path(tokenizer).read_bytes(), str(tokenizer))
            except OSError as e:
                raise Error(f"{tokenizer}: {e.strerror}") from None
        else:
            raise Error(
                "invalid argument: tokenizer: a tokenizer.json path, its text or bytes, not "
                f"{type(tokenizer).__name__}"
            )
        if vocab is not None:
            raise Error("invalid argument: give vocab or tokenizer, not both (the tokenizer makes the vocabulary)")
    if hasattr(model_or_state_dict, "state_dict") and hasattr(model_or_state_dict, "cfg"):
        sd = model_or_state_dict.state_dict()
        if cfg is None:
            cfg = model_or_state_dict.cfg
    elif isinstance(model_or_state_dict, Mapping):
        sd = model_or_state_dict
        if cfg is None:
            raise Error("config: a state_dict needs its cfg (convert(state_dict, cfg))")
    else:
        raise Error(
            "invalid argument: convert() takes a HookedTransformer or a state_dict, not "
            f"{type(model_or_state_dict).__name__}"
        )
    tensors = [_tensor_entry(str(k), v) for k, v in sd.items()]
    if isinstance(vocab, (str, os.PathLike)):
        try:
            vocab = Path(vocab).read_text().splitlines()
        except OSError as e:
            raise Error(f"{vocab}: {e.strerror}") from None
    blob, _report = _native.convert(
        tensors,
        _cfg_json(cfg),
        quant,
        embed_quant,
        fold_ln,
        center_writing_weights,
        center_unembed,
        fold_value_biases,
        None if vocab is None else [str(s) for s in vocab],
        tok,
    )
    if output is None:
        return blob
    _native.write_file(os.fspath(output), blob)
    return Path(output)


# ---------------------------------------------------------------------------------------
# Device traces
# ---------------------------------------------------------------------------------------


def load_trace(
    path_or_bytes: Union[PathLike, bytes, bytearray, memoryview], run: int = 0
) -> Tuple[np.ndarray, Dict[str, np.ndarray], Dict[str, Any]]:
    """Decodes run ``run`` of a trace stream (a device's serial capture, QEMU's output,
    ``tinylens run --trace``), as ``tinylens decode`` does.

    Returns ``(tokens, cache, report)``: ``tokens`` int64 [1, pos] (-1 for a token frame
    that was lost); ``cache`` hook name -> float32 array with TL's shape and a batch of
    1 (values that were not recorded or were lost are NaN, never a guess; ``logits``
    [1, pos, d_vocab_out] when the device recorded them); ``report`` what decoding found:
    ``stream`` (good, bad, orphan frames), ``run`` (lost and duplicate frames, records
    dropped on the device, whether the end frame came, missing records), ``run_id``,
    ``model_crc`` (compare with ``Model.checksum``), ``positions``, ``cfg``.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        tokens, cache, report = _native.load_trace(None, bytes(path_or_bytes), run)
    elif isinstance(path_or_bytes, (str, os.PathLike)):
        tokens, cache, report = _native.load_trace(os.fspath(path_or_bytes), None, run)
    else:
        raise Error(
            "invalid argument: load_trace() takes a trace path or bytes, not "
            f"{type(path_or_bytes).__name__}"
        )
    return tokens, cache, json.loads(report)


def to_activation_cache(cache: Mapping[str, Any], model: Any) -> Any:
    """A ``transformer_lens.ActivationCache`` of a tinylens cache (from
    :meth:`Model.run_with_cache` or :func:`load_trace`), so that ``act["pattern", 1]``,
    ``act.decompose_resid()``, ``act.stack_head_results()`` work. ``model`` is the
    ``HookedTransformer`` the cache belongs to, or a :class:`Model` (then its
    :meth:`Model.to_hooked_transformer` is used). Needs torch and transformer_lens."""
    try:
        import torch
        from transformer_lens import ActivationCache
    except ImportError as e:
        raise Error(
            f"to_activation_cache needs transformer_lens and torch ({e}); "
            "pip install transformer-lens"
        ) from None
    if isinstance(model, Model):
        model = model.to_hooked_transformer()
    tensors = {
        k: torch.from_numpy(np.ascontiguousarray(v))
        for k, v in cache.items()
        if k not in ("logits", "tokens")
    }
    return ActivationCache(tensors, model, has_batch_dim=True)


# ---------------------------------------------------------------------------------------
# Circuit analysis (the CLI's `circuits` and `heads`)
# ---------------------------------------------------------------------------------------


def copying_scores(model: Union[Model, PathLike, bytes]) -> np.ndarray:
    """Copying score of every head ``[n_layers, n_heads]``: ``Re(sum λ) / sum |λ|`` over
    the eigenvalues of the full OV circuit ``W_E W_V W_O W_U`` (TL's
    ``(W_E @ model.OV @ W_U).eigenvalues``), on the weights the device uses."""
    return np.asarray(_native.copying_scores(_as_model(model)._m), dtype=np.float64)


def composition_scores(
    model: Union[Model, PathLike, bytes], kind: str = "Q", *, subtract_baseline: bool = False
) -> np.ndarray:
    """TL's ``model.all_composition_scores(kind)`` ``[n_layers, n_heads, n_layers,
    n_heads]`` for kind ``"Q"``, ``"K"`` or ``"V"`` (0 unless layer1 < layer2). With
    ``subtract_baseline`` the paper's random-matrix baseline is subtracted."""
    m = _as_model(model)
    s = np.asarray(
        _native.composition_scores(m._m, kind, subtract_baseline), dtype=np.float64
    )
    return s.reshape(m.cfg["n_layers"], m.cfg["n_heads"], m.cfg["n_layers"], m.cfg["n_heads"])


def head_scores(
    model: Union[Model, PathLike, bytes],
    tokens: Any,
    kind: str = "induction",
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> np.ndarray:
    """TL's ``head_detector.detect_head(model, seq, "<kind>_head")`` ('mul' measure)
    ``[n_layers, n_heads]`` for kind ``previous_token``, ``duplicate_token`` or
    ``induction``; for a batch, the mean of the per-sequence scores (as TL for a list)."""
    m = _as_model(model)
    return np.asarray(
        _native.head_scores(
            m._m, _tokens(tokens, m), kind, exclude_bos, exclude_current_token
        ),
        dtype=np.float64,
    )
