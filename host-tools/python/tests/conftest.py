"""Shared helpers of the Python tests: fixture paths, TransformerLens references, blobs.

The references are the committed TransformerLens 3.9 outputs in tests/fixtures/ (written
by scripts/make_fixtures.py; see scripts/FIXTURES.md). Nothing here needs torch."""

import functools
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import tinylens

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures"
NAMES = ["attn2_standard_noln", "attn2_shortformer_ln", "attn1_ln"]
DEMO = REPO / "models" / "demo"
CI = os.environ.get("CI") == "true"

# Hooks TL records that have no tinylens hook point: the unembedding's input and output
# (`unembed.hook_out` is the logits, which tinylens returns).
TL_ONLY = ("unembed.hook_in", "unembed.hook_out")


def require(path: Path, how: str) -> Path:
    """A file the suite needs: missing fails under CI (scripts/test.sh builds it), else skips."""
    if not path.exists():
        if CI:
            pytest.fail(f"{path} is missing: {how}")
        pytest.skip(f"{path} is missing: {how}")
    return path


def cli() -> Path:
    exe = Path(os.environ.get("TINYLENS_CLI", REPO / "target" / "debug" / "tinylens"))
    return require(exe, "cargo build -p tinylens-host --bin tinylens (scripts/test.sh does this)")


def run_cli(*args, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run([str(cli()), *map(str, args)], capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"tinylens {' '.join(map(str, args))} failed: {p.stderr}")
    return p


@functools.lru_cache(maxsize=None)
def reference(name: str, file: str = "reference.safetensors"):
    return load_file(FIXTURES / name / file)


@functools.lru_cache(maxsize=None)
def state_dict(name: str, file: str = "model.safetensors"):
    return load_file(FIXTURES / name / file)


@functools.lru_cache(maxsize=None)
def tl_config(name: str, file: str = "config.json"):
    return json.loads((FIXTURES / name / file).read_text())


@functools.lru_cache(maxsize=None)
def blob(name: str, quant: str = "f32", **processing) -> bytes:
    """A fixture's TransformerLens weights converted through the Python API."""
    return tinylens.convert(state_dict(name), tl_config(name), quant=quant, **processing)


@functools.lru_cache(maxsize=None)
def model(name: str, quant: str = "f32", **processing) -> tinylens.Model:
    return tinylens.Model(blob(name, quant, **processing))


def cache_entries(ref, i: int):
    """TL's cache of prompt i from a reference file: hook name -> array (no batch)."""
    prefix = f"cache.{i}."
    return {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}


def assert_close(got, want, tol=1e-4, what=""):
    """|got - want| <= tol * max(1, |want|) elementwise; infinities must match exactly."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    inf = ~np.isfinite(want)
    assert np.array_equal(got[inf], want[inf]), f"{what}: non-finite entries differ"
    err = np.abs(got[~inf] - want[~inf]) / np.maximum(1.0, np.abs(want[~inf]))
    worst = float(err.max()) if err.size else 0.0
    assert worst <= tol, f"{what}: max relative error {worst:.3g} > {tol}"
    return worst
