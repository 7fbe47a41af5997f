"""Shared helpers for the TransformerLens reference scripts.

Used by scripts/make_fixtures.py and scripts/train_demo.py. Everything that is a
"reference value" is computed with TransformerLens's own API (HookedTransformer,
FactoredMatrix, all_composition_scores, head_detector.detect_head,
load_and_process_state_dict), so the Rust side is checked against an
independent implementation.

CI never runs this: the outputs are committed as fixtures.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import numpy as np
import torch
from safetensors.torch import save_file

# TL logs (not raises) when it skips a processing step; keep those visible but
# silence the noisy deprecation chatter of its dependencies.
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402
from transformer_lens.head_detector import detect_head  # noqa: E402

TL_VERSION = "3.9.0"
REPO = Path(__file__).resolve().parent.parent


def setup_torch() -> None:
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)


def check_versions() -> Dict[str, str]:
    versions = {
        "transformer-lens": importlib.metadata.version("transformer-lens"),
        "torch": importlib.metadata.version("torch"),
        "safetensors": importlib.metadata.version("safetensors"),
        "python": sys.version.split()[0],
    }
    if versions["transformer-lens"] != TL_VERSION:
        print(
            f"WARNING: transformer-lens {versions['transformer-lens']} installed, "
            f"fixtures are defined against {TL_VERSION}",
            file=sys.stderr,
        )
    return versions


def make_cfg(seed: int, **kw) -> HookedTransformerConfig:
    """An attention-only, float32, CPU HookedTransformerConfig."""
    base = dict(
        attn_only=True,
        act_fn=None,
        device="cpu",
        dtype=torch.float32,
        seed=seed,
    )
    base.update(kw)
    return HookedTransformerConfig(**base)


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return v
    if isinstance(v, np.generic):  # e.g. attn_scale is a numpy float64 in TL 3.9
        return v.item()
    # torch.dtype, torch.device and anything else
    return str(v)


def cfg_json(cfg: HookedTransformerConfig) -> dict:
    """cfg.to_dict() made JSON-serializable (non-JSON values -> str, numpy scalars -> numbers)."""
    d = _jsonable(cfg.to_dict())
    # A few values that JSON can't hold as numbers in general; TL keeps floats as floats.
    for k, v in d.items():
        if isinstance(v, float) and not np.isfinite(v):
            d[k] = str(v)
    return d


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_tensors(path: Path, tensors: Dict[str, torch.Tensor]) -> None:
    out = {k: v.detach().clone().contiguous().cpu() for k, v in tensors.items()}
    save_file(out, str(path), metadata={"format": "pt"})


def state_dict_tensors(model: HookedTransformer) -> Dict[str, torch.Tensor]:
    # Keep TL's buffers (blocks.L.attn.mask: bool [0, 0], blocks.L.attn.IGNORE: f32 scalar -inf)
    # exactly as state_dict() has them; safetensors stores both dtypes as they are.
    return {k: v for k, v in model.state_dict().items()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- circuits


def sort_eigenvalues(eig: torch.Tensor) -> torch.Tensor:
    """Sort the last axis by descending |lambda|; ties (conjugate pairs) by descending imag,
    then descending real."""
    e = eig.detach().cpu().numpy()
    out = np.empty_like(e)
    flat_in = e.reshape(-1, e.shape[-1])
    flat_out = out.reshape(-1, e.shape[-1])
    for i, row in enumerate(flat_in):
        order = np.lexsort((-row.real, -row.imag, -np.abs(row)))
        flat_out[i] = row[order]
    return torch.from_numpy(out)


@torch.no_grad()
def circuit_refs(model: HookedTransformer) -> Dict[str, torch.Tensor]:
    """Copying scores, OV eigenvalues and composition scores, via TL's FactoredMatrix API."""
    full_ov = model.W_E @ model.OV @ model.W_U  # FactoredMatrix [L, H, d_vocab, d_vocab_out]
    eig = full_ov.eigenvalues  # complex [L, H, d_head] (eigenvalues of BA)
    copying = (eig.sum(-1) / eig.abs().sum(-1)).real
    eig_sorted = sort_eigenvalues(eig)
    out = {
        "copying": copying.float(),
        "ov_eigenvalues.real": eig_sorted.real.float(),
        "ov_eigenvalues.imag": eig_sorted.imag.float(),
    }
    for mode in ("Q", "K", "V"):
        out[f"composition.{mode}"] = model.all_composition_scores(mode).float()
    return out


# ---------------------------------------------------------------- head detection


@contextlib.contextmanager
def whitespace_tokenizer(model: HookedTransformer, vocab: Sequence[str]):
    """detect_head() calls model.to_tokens(seq), which needs a HF tokenizer; these models have
    none (no hub). For the duration of the block, model.to_tokens splits the string on
    whitespace and maps each word through `vocab` (no BOS is added: the string is the whole
    prompt). Everything else in detect_head runs unchanged."""
    index = {w: i for i, w in enumerate(vocab)}

    def to_tokens(inp, *args, **kwargs):
        # detect_head calls this once with the whole list (prompts of equal length here)
        # before recursing into one call per string.
        seqs = [inp] if isinstance(inp, str) else list(inp)
        return torch.tensor([[index[w] for w in s.split()] for s in seqs], dtype=torch.long)

    model.to_tokens = to_tokens  # instance attribute shadows the method
    try:
        yield
    finally:
        del model.to_tokens


HEAD_KINDS = (
    ("previous_token", "previous_token_head"),
    ("duplicate_token", "duplicate_token_head"),
    ("induction", "induction_head"),
)


@torch.no_grad()
def head_scores(
    model: HookedTransformer,
    prompts: Iterable[Sequence[int]],
    vocab: Sequence[str],
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> Dict[str, torch.Tensor]:
    """TL detect_head(..., error_measure="mul") for the three built-in head kinds.
    With several prompts, detect_head's list form is used (mean of per-prompt scores)."""
    seqs: List[str] = [" ".join(vocab[t] for t in p) for p in prompts]
    seq = seqs[0] if len(seqs) == 1 else seqs
    out = {}
    with whitespace_tokenizer(model, vocab):
        for key, name in HEAD_KINDS:
            out[key] = detect_head(
                model,
                seq,
                name,
                exclude_bos=exclude_bos,
                exclude_current_token=exclude_current_token,
                error_measure="mul",
            ).float()
    return out


# ---------------------------------------------------------------- training


def train(model, make_batch, steps: int, lr: float, log_every: int = 100, weight_decay=0.0):
    if weight_decay:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        toks = make_batch()
        loss = model(toks, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"  step {step + 1:5d}  loss {np.mean(losses[-log_every:]):.4f}", flush=True)
    model.eval()
    return losses
