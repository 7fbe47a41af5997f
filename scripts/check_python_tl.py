"""The Python package against TransformerLens itself (needs torch; CI never runs this).

Checks, with TransformerLens 3.9 installed next to `tinylens` (pip install ./host-tools/python):
1. `tinylens.convert(HookedTransformer)` gives the same blob, byte for byte, as
   `tinylens convert` on the files `scripts/make_fixtures.py` writes for that model
   (`safetensors.torch.save_file(model.state_dict())` + `cfg.to_dict()` as JSON), for the
   three fixture models and a freshly built one, every storage kind, with and without
   TL's weight processing;
2. `tinylens.to_activation_cache` returns a real `transformer_lens.ActivationCache` that
   TL's own methods accept (`cache["pattern", 1]`, `decompose_resid`,
   `stack_head_results`, `accumulated_resid`, `apply_ln_to_stack`), and they give what
   they give on TL's own cache of the same prompts (≤ 1e-4, f32 blob), for a
   `run_with_cache` cache and for a decoded trace;
3. `Model.to_hooked_transformer()` runs the blob's weights in TL with the same logits
   (f16 blob; an int8/int4 blob also quantizes activations, so there they only agree
   closely).

    python3 scripts/check_python_tl.py          # prints each check; exits 1 on a failure

The CLI is target/debug/tinylens (`cargo build -p tinylens-host`) or $TINYLENS_CLI.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import tl_ref  # noqa: E402  (scripts/tl_ref.py: TL setup, config JSON as the fixtures write it)
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file as load_torch
from transformer_lens import ActivationCache, HookedTransformer, HookedTransformerConfig

import tinylens

REPO = tl_ref.REPO
FIXTURES = REPO / "tests" / "fixtures"
CLI = Path(os.environ.get("TINYLENS_CLI", REPO / "target" / "debug" / "tinylens"))
TOL = 1e-4
failures = 0


def check(ok: bool, what: str, detail: str = "") -> None:
    global failures
    print(("ok   " if ok else "FAIL ") + what + (f" ({detail})" if detail else ""))
    failures += not ok


def close(a, b) -> float:
    a = np.asarray(a.detach().numpy() if hasattr(a, "detach") else a, dtype=np.float64)
    b = np.asarray(b.detach().numpy() if hasattr(b, "detach") else b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    fin = np.isfinite(b)
    if not np.array_equal(np.isfinite(a), fin):
        return float("inf")
    return float((np.abs(a[fin] - b[fin]) / np.maximum(1.0, np.abs(b[fin]))).max())


def load_fixture(name: str) -> HookedTransformer:
    cfg = json.loads((FIXTURES / name / "config.json").read_text())
    cfg.update(dtype=torch.float32, device="cpu")
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    model.load_state_dict(load_torch(FIXTURES / name / "model.safetensors"), strict=False)
    model.eval()
    return model


def cli_blob(model: HookedTransformer, quant: str, flags: dict, tmp: Path) -> bytes:
    """`tinylens convert` on the files make_fixtures.py would write for `model`."""
    tl_ref.save_tensors(tmp / "model.safetensors", tl_ref.state_dict_tensors(model))
    tl_ref.write_json(tmp / "config.json", tl_ref.cfg_json(model.cfg))
    out = tmp / "cli.tlm"
    args = [str(CLI), "convert", "--weights", str(tmp / "model.safetensors"), "--config",
            str(tmp / "config.json"), "--quant", quant, "-o", str(out)]
    args += ["--" + k.replace("_", "-") for k, v in flags.items() if v]
    subprocess.run(args, check=True, capture_output=True)
    return out.read_bytes()


def check_convert(models: dict) -> None:
    all_flags = dict(fold_ln=True, center_writing_weights=True, center_unembed=True,
                     fold_value_biases=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, model in models.items():
            for quant in ("f32", "f16", "int8", "int4"):
                for flags in ({}, all_flags):
                    ours = tinylens.convert(model, quant=quant, **flags)
                    theirs = cli_blob(model, quant, flags, tmp)
                    check(ours == theirs, f"convert({name}, quant={quant}{', all processing' if flags else ''}) == CLI blob",
                          f"{len(ours)} bytes")
            # state_dict + a live TL config object, as well.
            ours = tinylens.convert(model.state_dict(), model.cfg, quant="int8")
            check(ours == tinylens.convert(model, quant="int8"), f"convert({name} state_dict, cfg) == convert(model)")


def check_activation_cache(name: str, model: HookedTransformer) -> None:
    model.set_use_attn_result(True)
    blob = tinylens.Model(tinylens.convert(model, quant="f32"))
    ref = load_numpy(FIXTURES / name / "reference.safetensors")
    tokens = torch.tensor(ref["tokens"][[0, 8]], dtype=torch.long)
    tl_logits, tl_cache = model.run_with_cache(tokens)
    logits, cache = blob.run_with_cache(tokens.numpy())
    check(close(logits, tl_logits) <= TOL, f"{name}: run_with_cache logits vs TL", f"{close(logits, tl_logits):.2e}")
    for source, c in (("run_with_cache", cache), ("load_trace", None)):
        if c is None:  # a trace of prompt 0, decoded
            _, c, _ = tinylens.load_trace(blob.trace(tokens[0].numpy()))
            ref_cache = model.run_with_cache(tokens[:1])[1]
        else:
            ref_cache = tl_cache
        act = tinylens.to_activation_cache(c, model)
        check(isinstance(act, ActivationCache), f"{name} ({source}): a transformer_lens.ActivationCache")
        n = model.cfg.n_layers
        pairs = [
            ('act["pattern", L]', act["pattern", n - 1], ref_cache["pattern", n - 1]),
            ('act["z", 0]', act["z", 0], ref_cache["z", 0]),
            ("decompose_resid()", act.decompose_resid(), ref_cache.decompose_resid()),
            ("accumulated_resid()", act.accumulated_resid(), ref_cache.accumulated_resid()),
            ("stack_head_results()", act.stack_head_results(), ref_cache.stack_head_results()),
            ("apply_ln_to_stack(stack_head_results())",
             act.apply_ln_to_stack(act.stack_head_results(), layer=-1),
             ref_cache.apply_ln_to_stack(ref_cache.stack_head_results(), layer=-1)),
        ]
        for what, ours, theirs in pairs:
            e = close(ours, theirs)
            check(e <= TOL, f"{name} ({source}): {what} vs TL's", f"shape {tuple(ours.shape)}, {e:.2e}")
    # The blob as a HookedTransformer (dequantized weights), f16 this time (int8/int4
    # blobs also quantize the activations on the device: close, not equal).
    q = tinylens.Model(tinylens.convert(model, quant="f16"))
    ht = q.to_hooked_transformer()
    e = close(ht(tokens), q.run(tokens.numpy()))
    check(e <= TOL, f"{name}: Model.to_hooked_transformer() logits == tinylens logits (f16 blob)", f"{e:.2e}")
    # A tinylens Model in place of the HookedTransformer.
    act = tinylens.to_activation_cache(q.run_with_cache(tokens.numpy())[1], q)
    e = close(act.stack_head_results(), ht.run_with_cache(tokens)[1].stack_head_results())
    check(e <= TOL, f"{name}: to_activation_cache(cache, tinylens.Model).stack_head_results()", f"{e:.2e}")


def main() -> int:
    tl_ref.setup_torch()
    # TL logs "Tried to compute head results when they were already cached" for every
    # stack_head_results() on a cache with hook_result (ours always has it).
    logging.getLogger().setLevel(logging.ERROR)
    print("versions:", tl_ref.check_versions(), "tinylens", tinylens.__version__)
    if not CLI.exists():
        print(f"{CLI} is missing: cargo build -p tinylens-host --bin tinylens", file=sys.stderr)
        return 2
    models = {name: load_fixture(name) for name in ("attn2_standard_noln", "attn2_shortformer_ln", "attn1_ln")}
    fresh = HookedTransformer(tl_ref.make_cfg(seed=7, n_layers=2, d_model=48, d_head=12, n_heads=4,
                                              d_vocab=70, n_ctx=20, normalization_type="LN"))
    models["fresh (seed 7, untrained)"] = fresh
    check_convert(models)
    for name in ("attn2_standard_noln", "attn2_shortformer_ln", "attn1_ln"):
        check_activation_cache(name, models[name])
    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
