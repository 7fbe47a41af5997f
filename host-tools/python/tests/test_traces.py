"""Traces: Model.trace is the trace `tinylens run --trace` and the firmware write;
load_trace decodes it (and a QEMU device's) into the cache run_with_cache gives."""

import os
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

import tinylens
from conftest import CI, DEMO, REPO, model, reference, require

# The QEMU firmware's compiled-in run (firmware-examples/fw/src/lib.rs DEFAULT_*, the
# same constants tests/tests/firmware_qemu.rs checks).
PROMPT = [0, 5, 12, 33, 7, 21, 40, 9, 5, 12, 33]
GENERATE = 8
PROBES = ["blocks.*.attn.hook_pattern", "blocks.*.attn.hook_result:f16", "logits"]
RUN_ID = 1


def test_host_trace_decodes_to_run_with_cache(tmp_path):
    m = model("attn2_shortformer_ln")
    tokens = reference("attn2_shortformer_ln")["tokens"][8]
    trace = m.trace(tokens)  # every hook, f32
    logits, cache = m.run_with_cache(tokens)
    for src in (trace, tmp_path / "t.tlt"):
        if not isinstance(src, bytes):
            src.write_bytes(trace)
        t, decoded, report = tinylens.load_trace(src)
        assert t.dtype == np.int64 and np.array_equal(t, tokens[None, :])
        assert report["run"]["end_seen"] and not report["run"]["missing_records"]
        assert report["stream"]["bad_frames"] == 0 and report["model_crc"] == m.checksum
        assert report["cfg"] == m.cfg
        assert set(decoded) == set(cache)
        for k, v in cache.items():
            assert decoded[k].shape == v.shape
            assert np.array_equal(decoded[k], v), k


def test_trace_precision_and_cli_equality(tmp_path):
    from conftest import run_cli

    p = tmp_path / "m.tlm"
    m = model("attn1_ln", "int8")
    m.save(p)
    probes = ["blocks.0.attn.hook_z:f16", "logits"]
    ours = m.trace([3, 1, 4, 1, 5], probes, generate=3, run_id=7)
    out = tmp_path / "cli.tlt"
    run_cli("run", p, "--tokens", "3,1,4,1,5", "--generate", 3, "--run-id", 7,
            "--probe", probes[0], "--probe", probes[1], "--trace", out)
    assert ours == out.read_bytes()
    tokens, cache, report = tinylens.load_trace(ours)
    assert tokens.shape == (1, 8) and report["run_id"] == 7
    gen = m.generate([3, 1, 4, 1, 5], 3)
    assert np.array_equal(tokens, gen)
    _, full = m.run_with_cache(tokens, "blocks.0.attn.hook_z")
    z = full["blocks.0.attn.hook_z"]
    assert np.array_equal(cache["blocks.0.attn.hook_z"], z.astype(np.float16).astype(np.float32))
    assert np.array_equal(cache["logits"], m.run(tokens))


def qemu_trace(triple: str, tmp_path) -> bytes:
    elf = require(
        REPO / "firmware-examples" / "target" / triple / "release" / "qemu",
        "cd firmware-examples && cargo build --release && cargo build-m0 (scripts/test.sh does this)",
    )
    if shutil.which("qemu-system-arm") is None:
        if CI:
            pytest.fail("qemu-system-arm is missing (scripts/test.sh installs it)")
        pytest.skip("qemu-system-arm is missing")
    p = subprocess.run(
        [str(REPO / "firmware-examples" / "run-qemu.sh"), "--timeout", "30", "--no-decode",
         "--defmt-out", str(tmp_path / "log.defmt"), str(elf)],
        capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return p.stdout


def embedded_model(crc: int) -> tinylens.Model:
    """The blob the firmware embeds, found by the CRC its trace names (as
    tests/tests/firmware_qemu.rs finds it; firmware-examples/fw/build.rs picks it)."""
    candidates = [DEMO / "demo-int8.tlm", *sorted((REPO / "firmware-examples" / "models").glob("*"))]
    for path in candidates:
        try:
            m = tinylens.Model(path)
        except tinylens.Error:
            continue
        if m.checksum == crc:
            return m
    pytest.fail(f"the firmware embeds a model with crc {crc:08x}, none of {candidates}")


@pytest.mark.parametrize("triple", ["thumbv7em-none-eabihf", "thumbv6m-none-eabi"])
def test_qemu_device_trace_equals_run_with_cache(triple, tmp_path):
    trace = qemu_trace(triple, tmp_path)
    tokens, cache, report = tinylens.load_trace(trace)
    m = embedded_model(report["model_crc"])
    assert report["run"]["lost_frames"] == 0 and report["run"]["end_seen"]
    assert not report["run"]["missing_records"] and report["stream"]["bad_frames"] == 0
    n = len(PROMPT) + GENERATE
    assert tokens.shape == (1, n) and tokens[0, : len(PROMPT)].tolist() == PROMPT
    # The host writes the device's trace byte for byte ...
    assert m.trace(PROMPT, PROBES, generate=GENERATE, run_id=RUN_ID) == trace
    # ... and the decoded device cache is the host's run_with_cache on the same tokens
    # (hook_result went over the wire as f16).
    logits, host = m.run_with_cache(tokens)
    for l in range(m.cfg["n_layers"]):
        pat = f"blocks.{l}.attn.hook_pattern"
        res = f"blocks.{l}.attn.hook_result"
        assert cache[pat].shape == host[pat].shape == (1, m.cfg["n_heads"], n, n)
        assert np.array_equal(cache[pat], host[pat]), pat
        assert np.array_equal(cache[res], host[res].astype(np.float16).astype(np.float32)), res
    assert np.array_equal(cache["logits"], logits)


def test_the_gil_is_released_while_the_model_runs():
    m = tinylens.Model(DEMO / "demo-int8.tlm")
    tokens = np.random.default_rng(0).integers(0, m.cfg["d_vocab"], size=(8, m.cfg["n_ctx"]))
    done = threading.Event()
    took = []

    def work():
        t0 = time.perf_counter()
        m.run_with_cache(tokens)  # one native call
        took.append(time.perf_counter() - t0)
        done.set()

    th = threading.Thread(target=work)
    ticks = 0
    th.start()
    time.sleep(0.01)
    while not done.is_set():
        ticks += 1  # Python bytecode: runs only if the native call let go of the GIL
        time.sleep(0.0005)
    th.join()
    assert took[0] > 0.05, "the batch ran too fast to tell"
    assert ticks > 10, f"the main thread ran {ticks} times in {took[0]:.2f} s"


def test_cli_decoded_files_agree_with_load_trace(tmp_path):
    """`tinylens decode --format npy|safetensors` writes what load_trace returns: TL's
    batch dimension and int64 tokens (-1 for a lost token)."""
    from safetensors.numpy import load_file

    from conftest import run_cli

    m = model("attn2_standard_noln")
    trace = tmp_path / "t.tlt"
    trace.write_bytes(m.trace([4, 8, 15, 16, 23, 42 % 50], ["blocks.*.attn.hook_pattern", "hook_embed", "logits"]))
    tokens, cache, _ = tinylens.load_trace(trace)
    for fmt, load in (("npy", lambda p: dict(np.load(p))), ("safetensors", load_file)):
        out = tmp_path / f"cache.{fmt}"
        run_cli("decode", trace, "--format", fmt, "-o", out)
        files = load(out)
        assert files["tokens"].dtype == np.int64 and np.array_equal(files["tokens"], tokens)
        assert set(files) == set(cache) | {"tokens"}
        for k, v in cache.items():
            assert files[k].dtype == np.float32 and files[k].shape == v.shape, k
            assert np.array_equal(files[k], v), k
