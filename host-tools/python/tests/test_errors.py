"""Hostile input raises tinylens.Error with the CLI's one-line message: never a crash,
a hang, or a half-written file."""

import json

import numpy as np
import pytest

import tinylens
from conftest import FIXTURES, blob, model, reference, run_cli, state_dict, tl_config


def error(fn, *a, **k) -> str:
    with pytest.raises(tinylens.Error) as e:
        fn(*a, **k)
    msg = str(e.value)
    assert msg and "\n" not in msg, f"not one line: {msg!r}"
    return msg


@pytest.mark.parametrize(
    "tokens, says",
    [
        (np.array([0.5, 1.0]), "must be integers"),
        (np.array([True, False]), "must be integers"),
        ([0, -1, 2], "`-1` is not a token id"),
        ([0, 50], "token 50"),
        (np.zeros(25, dtype=np.int64), "exceed the model's context of 24"),
        (np.zeros((2, 2, 2), dtype=np.int64), "[batch, pos] or [pos]"),
        ([], "no tokens given"),
        (np.zeros((3, 0), dtype=np.int64), "no tokens given"),
        ([[1, 2], [3]], "tokens"),
        ("some text", "tokenizer"),
        (["some", "text"], "tokenizer"),
        ({"a": 1}, "integers"),
        (np.array([2**63], dtype=np.uint64), "not a token id"),
    ],
)
def test_bad_tokens(tokens, says):
    m = model("attn1_ln")
    for fn in (m.run, m.run_with_cache):
        assert says in error(fn, tokens)


def test_messages_are_the_clis(tmp_path):
    p = tmp_path / "m.tlm"
    p.write_bytes(blob("attn1_ln", "int8"))
    for tokens in ("0,50", "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24"):
        cli = run_cli("run", p, "--tokens", tokens, check=False)
        assert cli.returncode == 1
        ours = error(tinylens.Model(p).run, [int(t) for t in tokens.split(",")])
        assert cli.stderr.strip() == f"error: {ours}"
    missing = tmp_path / "nope.tlm"
    cli = run_cli("info", missing, check=False)
    assert cli.stderr.strip() == f"error: {error(tinylens.Model, missing)}"


def test_bad_blobs():
    good = blob("attn1_ln", "int8")
    assert error(tinylens.Model, b"")
    assert error(tinylens.Model, b"not a blob at all, just some bytes " * 3)
    assert "truncated" in error(tinylens.Model, good[: len(good) // 2]).lower()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x40
    assert "checksum" in error(tinylens.Model, bytes(flipped)).lower()
    assert error(tinylens.Model, 42)


def test_bad_traces():
    assert "empty trace" in error(tinylens.load_trace, b"")
    assert "no run 0" in error(tinylens.load_trace, b"\x00garbage\x00more garbage\x00")
    m = model("attn1_ln")
    trace = m.trace([1, 2, 3], "blocks.0.attn.hook_pattern")
    assert "no run 1" in error(tinylens.load_trace, trace, run=1)
    # A trace cut short decodes what arrived and says what was lost.
    tokens, cache, report = tinylens.load_trace(trace[: len(trace) * 2 // 3])
    assert not report["run"]["end_seen"]
    n = tokens.shape[1]
    assert 1 <= n <= 3 and tokens[0].tolist() == [1, 2, 3][:n]
    _, full, _ = tinylens.load_trace(trace)
    got, want = cache["blocks.0.attn.hook_pattern"], full["blocks.0.attn.hook_pattern"][..., :n, :n]
    kept = ~np.isnan(got)
    assert np.array_equal(got[kept], want[kept])  # what arrived is the full run's, never a guess
    assert error(tinylens.load_trace, 3.5)


def test_bad_interventions_and_filters():
    m = model("attn2_standard_noln")
    t = reference("attn2_standard_noln")["tokens"][:2, :6]
    assert "`blocks.0.attn.hook_zz`" in error(m.run_with_cache, t, names_filter=["blocks.0.attn.hook_zz"])
    assert "does not have" in error(m.run_with_cache, t, names_filter="blocks.7.attn.hook_z")
    assert "hook_scale" in error(m.run_with_cache, t, names_filter="blocks.0.ln1.hook_scale")
    assert error(m.run_with_cache, t, names_filter=3)
    assert "2 layers of 4 heads" in error(m.run_with_hooks, t, ablate=[(0, 9)])
    assert "means" in error(m.run_with_hooks, t, ablate={(0, 1): "mean"})
    assert error(m.run_with_hooks, t, ablate=["x.y"])
    assert error(m.run_with_hooks, t, ablate={(0, 1): "half"})
    assert error(m.run_with_hooks, t, ablate={(0, 1): "mean"}, means=np.zeros((2, 4, 31)))
    assert "batch" in error(m.run_with_hooks, t, patch={"blocks.0.hook_resid_pre": np.zeros((3, 6, 32))})
    assert "patch" in error(m.run_with_hooks, t, patch={"blocks.0.hook_resid_pre": np.zeros((2, 6, 31))})
    assert "freeze_patterns" in error(m.run_with_hooks, t, freeze_patterns={"blocks.0.attn.hook_pattern": 0})
    assert error(m.run_with_hooks, t, freeze_patterns=np.zeros((2, 2, 4, 5, 5)))
    assert error(m.run_with_hooks, t, patch={"blocks.0.hook_resid_pre": np.array(["a"])})


def test_bad_conversions(tmp_path):
    sd, cfg = state_dict("attn1_ln"), tl_config("attn1_ln")
    assert "attention-only" in error(tinylens.convert, sd, {**cfg, "attn_only": False})
    assert "unknown storage kind `int3`" in error(tinylens.convert, sd, cfg, quant="int3")
    assert "missing tensor `embed.W_E`" in error(
        tinylens.convert, {k: v for k, v in sd.items() if k != "embed.W_E"}, cfg
    )
    bad = dict(sd)
    bad["blocks.0.attn.W_Q"] = bad["blocks.0.attn.W_Q"].copy()
    bad["blocks.0.attn.W_Q"][0, 0, 0] = np.nan
    assert "non-finite" in error(tinylens.convert, bad, cfg)
    assert "has shape" in error(tinylens.convert, {**sd, "embed.W_E": np.zeros((3, 3), np.float32)}, cfg)
    assert "expected a float type" in error(tinylens.convert, {**sd, "embed.W_E": np.zeros((50, 32), np.int32)}, cfg)
    assert "mlp" in error(tinylens.convert, {**sd, "blocks.0.mlp.W_in": np.zeros((32, 128), np.float32)}, cfg).lower()
    assert "cfg" in error(tinylens.convert, sd)
    assert "invalid JSON" in error(tinylens.convert, sd, "{not json")
    assert error(tinylens.convert, sd, tmp_path / "missing.json")
    assert error(tinylens.convert, 7)
    assert error(tinylens.convert, sd, cfg, tokenizer="tok.json")
    assert "vocabulary has 3 entries" in error(tinylens.convert, sd, cfg, vocab=["a", "b", "c"])
    # A failed write leaves nothing behind; a good one replaces the old file whole.
    out = tmp_path / "model.tlm"
    out.write_bytes(b"old")
    error(tinylens.convert, sd, cfg, quant="int3", output=out)
    assert out.read_bytes() == b"old"
    error(tinylens.convert, sd, cfg, output=tmp_path / "no-such-dir" / "m.tlm")
    tinylens.convert(sd, cfg, output=out)
    assert tinylens.Model(out).cfg["n_layers"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tlm"]
