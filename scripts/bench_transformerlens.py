#!/usr/bin/env python3
"""tinylens vs TransformerLens: tokens/s of the same model, side by side, from one run.

    python3 scripts/bench_transformerlens.py                      # demo model, f32 + int8 blobs
    python3 scripts/bench_transformerlens.py --seconds 5 --kinds f32,f16,int8,int4
    python3 scripts/bench_transformerlens.py --weights tests/fixtures/attn2_shortformer_ln/model.safetensors \\
        --config tests/fixtures/attn2_shortformer_ln/config.json
    python3 scripts/bench_transformerlens.py --json               # one JSON object
    python3 scripts/bench_transformerlens.py --grid               # the ladder x batch x threads grid
    python3 scripts/bench_transformerlens.py --grid --ladder mid --batches 1,32 --threads 1,2

Grid mode (``--grid``): the model ladder of ``scripts/make_model_ladder.py`` (demo, "mid",
the attn-only-2l shape; random-init TransformerLens configs, generated into a temporary
directory, never committed), prefill only, for every batch size B, prompt length L and
thread count T: ``tinylens bench --batch B --prompt-tokens L --decode-tokens 0 --threads
T`` against TransformerLens on ``[B, L]`` tokens with ``torch.set_num_threads(T)``:
``model(tokens)``, ``run_with_cache(tokens)`` and ``run_with_cache`` with
``use_attn_result=True``. tokens/s count B x L tokens.

TransformerLens side (PyTorch on the CPU, ``torch.set_num_threads(1)``, batch 1,
``torch.inference_mode()``, the model built from its config and ``load_state_dict``):
- prefill: one forward over the whole prompt ``[1, P]`` (what ``model(tokens)`` does),
  plain (``model(tokens)``) and with every hook cached (``model.run_with_cache(tokens)``,
  no names filter);
- decode: token by token with TransformerLens's own KV cache
  (``TransformerLensKeyValueCache``, as ``HookedTransformer.generate`` uses it): the
  prompt fills the cache, then each step runs ``[1, 1]`` with ``past_kv_cache`` and takes
  the argmax (greedy), plain and with ``run_with_cache`` (every hook of that step).

tinylens side: ``tinylens bench BLOB --json`` for each storage kind's blob (converted
from the same weights with ``tinylens convert``, or ``--blob``), with the same prompt
(it reports it; both sides use it) and the same prompt/decode split. Both measure
samples for ``--seconds`` per configuration and report medians.

Ratios are tinylens tokens/s over TransformerLens tokens/s of the same phase and
hook setting (TL f32 for every blob). TransformerLens computes ``hook_result`` only with
``use_attn_result=True``; the default run (without it, faster) is the reference, and
the run with it is reported too. tinylens records ``hook_result`` in every all-hooks run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

try:  # TransformerLens 3.x
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache as KVCache
except ImportError:  # older layouts
    try:
        from transformer_lens.past_key_value_caching import (  # type: ignore
            HookedTransformerKeyValueCache as KVCache,
        )
    except ImportError:
        KVCache = None

REPO = Path(__file__).resolve().parent.parent
CFG_KEYS = [
    "n_layers", "d_model", "d_head", "n_heads", "d_vocab", "d_vocab_out", "n_ctx",
    "normalization_type", "positional_embedding_type", "eps", "use_attn_scale",
    "attn_scale", "attn_only", "seed", "original_architecture",
]


def load_tl(weights: Path, config: Path, use_attn_result: bool) -> HookedTransformer:
    raw = json.loads(config.read_text())
    kw = {k: raw[k] for k in CFG_KEYS if k in raw and raw[k] is not None}
    kw.update(act_fn=None, device="cpu", dtype=torch.float32, use_attn_result=use_attn_result)
    cfg = HookedTransformerConfig(**kw)
    model = HookedTransformer(cfg)
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    real_missing = [m for m in missing if not m.endswith((".mask", ".IGNORE"))]
    if real_missing:
        sys.exit(f"weights lack {real_missing}")
    model.eval()
    return model


def timed_samples(fn, seconds: float, min_samples: int):
    """Runs fn() (which returns (prefill_s, decode_s)) for `seconds` after a warm-up."""
    end = time.perf_counter() + seconds / 10
    while time.perf_counter() < end:
        fn()
    pre, dec = [], []
    start = time.perf_counter()
    while len(pre) < min_samples or time.perf_counter() - start < seconds:
        p, d = fn()
        pre.append(p)
        dec.append(d)
    return statistics.median(pre), statistics.median(dec), len(pre)


def bench_tl(model: HookedTransformer, prompt, decode: int, seconds: float, min_samples: int,
             hooks: bool):
    tokens = torch.tensor([prompt], dtype=torch.long)
    kv = KVCache is not None

    def run(inp, cache):
        # Without a tokenizer TL cannot derive the attention mask the KV cache keeps:
        # pass it (all ones, batch 1, no padding).
        kwargs = ({"past_kv_cache": cache, "attention_mask": torch.ones_like(inp)}
                  if cache is not None else {})
        if hooks:
            logits, act = model.run_with_cache(inp, **kwargs)
            return logits, act
        return model(inp, **kwargs), None

    def sample():
        cache = KVCache.init_cache(model.cfg, model.cfg.device, 1) if kv else None
        t0 = time.perf_counter()
        logits, _ = run(tokens, cache)
        nxt = logits[0, -1].argmax()
        t1 = time.perf_counter()
        seq = tokens
        for _ in range(decode):
            step = nxt.view(1, 1)
            if kv:
                logits, _ = run(step, cache)
            else:  # no KV cache: rerun the whole sequence, as users then do
                seq = torch.cat([seq, step], dim=1)
                logits, _ = run(seq, None)
            nxt = logits[0, -1].argmax()
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    with torch.inference_mode():
        p, d, n = timed_samples(sample, seconds, min_samples)
    P = len(prompt)
    return {"prefill_tokens_per_s": P / p, "decode_tokens_per_s": decode / d if decode else 0.0,
            "prefill_ns_per_token": p * 1e9 / P, "decode_ns_per_token": d * 1e9 / max(decode, 1),
            "samples": n}


def bench_tl_prefill(model: HookedTransformer, prompt, batch: int, seconds: float,
                     min_samples: int, hooks: bool) -> dict:
    """Tokens/s of one forward over ``[batch, len(prompt)]`` (plain or run_with_cache)."""
    tokens = torch.tensor([prompt] * batch, dtype=torch.long)
    cpu = []

    def sample():
        t0, c0 = time.perf_counter(), time.process_time()
        if hooks:
            out = model.run_with_cache(tokens)
        else:
            out = model(tokens)
        t1, c1 = time.perf_counter(), time.process_time()
        del out
        cpu.append(c1 - c0)
        return t1 - t0, 0.0

    with torch.inference_mode():
        p, _, n = timed_samples(sample, seconds, min_samples)
    c = statistics.fmean(cpu[-n:])
    return {"prefill_tokens_per_s": batch * len(prompt) / p,
            "prefill_tokens_per_cpu_s": batch * len(prompt) / c, "samples": n}


def grid(args, exe: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    from make_model_ladder import make  # noqa: E402

    tmp = tempfile.TemporaryDirectory()
    out = Path(tmp.name)
    rows = []
    for name in [m for m in args.ladder.split(",") if m]:
        d = make(name, out)
        weights, config = d / "model.safetensors", d / "config.json"
        n_ctx = json.loads(config.read_text())["n_ctx"]
        blobs = {}
        for kind in [k for k in args.kinds.split(",") if k]:
            blob = d / f"model-{kind}.tlm"
            subprocess.run([str(exe), "convert", "--weights", str(weights), "--config",
                            str(config), "--quant", kind, "-o", str(blob), "--json"],
                           check=True, stdout=subprocess.DEVNULL)
            blobs[kind] = blob
        tl_models = {flag: load_tl(weights, config, flag) for flag in (False, True)}
        for length in [int(x) for x in args.lengths.split(",") if x]:
            length = min(length, n_ctx)
            for batch in [int(x) for x in args.batches.split(",") if x]:
                for threads in [int(x) for x in args.threads.split(",") if x]:
                    row = {"model": name, "batch": batch, "prompt_tokens": length,
                           "threads": threads}
                    for kind, blob in blobs.items():
                        cmd = [str(exe), "bench", str(blob), "--json", "--seconds",
                               str(args.seconds), "--min-samples", str(args.min_samples),
                               "--batch", str(batch), "--prompt-tokens", str(length),
                               "--decode-tokens", "0", "--threads", str(threads),
                               "--only", "off"]
                        o = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                                      text=True).stdout)
                        cmd[-1] = "all"
                        a = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                                      text=True).stdout)
                        row[f"tinylens_{kind}"] = o["prefill_tokens_per_s"]
                        row[f"tinylens_{kind}_cpu"] = o["prefill_tokens_per_cpu_s"]
                        row[f"tinylens_{kind}_all_hooks_cpu"] = a["prefill_tokens_per_cpu_s_all_hooks"]
                        row[f"tinylens_{kind}_gflops_cpu"] = o["prefill_gflops_per_cpu_s"]
                        row[f"tinylens_{kind}_all_hooks_gflops_cpu"] = a["prefill_gflops_per_cpu_s_all_hooks"]
                        row[f"tinylens_{kind}_all_hooks"] = a["prefill_tokens_per_s_all_hooks"]
                        row[f"tinylens_{kind}_gflops"] = o["prefill_gflops_per_s"]
                        row[f"tinylens_{kind}_all_hooks_gflops"] = a["prefill_gflops_per_s_all_hooks"]
                        row["kernels"] = o["kernels"]
                        prompt = o["prompt"]
                    torch.set_num_threads(threads)
                    for key, flag, hooks in [("tl_plain", False, False),
                                             ("tl_run_with_cache", False, True),
                                             ("tl_run_with_cache_attn_result", True, True)]:
                        r = bench_tl_prefill(tl_models[flag], prompt, batch, args.seconds,
                                             args.min_samples, hooks)
                        row[key] = r["prefill_tokens_per_s"]
                        row[key + "_cpu"] = r["prefill_tokens_per_cpu_s"]
                    for kind in blobs:
                        row[f"ratio_{kind}_all_hooks_vs_tl_attn_result"] = (
                            row[f"tinylens_{kind}_all_hooks"] / row["tl_run_with_cache_attn_result"])
                        row[f"ratio_{kind}_vs_tl_plain"] = row[f"tinylens_{kind}"] / row["tl_plain"]
                        row[f"ratio_{kind}_all_hooks_vs_tl_attn_result_cpu"] = (
                            (row[f"tinylens_{kind}_all_hooks_cpu"] or 0.0)
                            / row["tl_run_with_cache_attn_result_cpu"])
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    load = open("/proc/loadavg").read().split()[:3]
    import importlib.metadata as md
    result = {"machine": {"nproc": os.cpu_count(), "loadavg": load,
                          "torch": torch.__version__,
                          "transformer_lens": md.version("transformer-lens")},
              "grid": rows}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    kinds = list(blobs)
    print(f"# prefill tokens/s (B x L tokens), load average {' '.join(load)}; "
          f"tinylens kernels {rows[0]['kernels'] if rows else '?'}")
    head = (f"{'model':<13} {'B':>3} {'L':>5} {'T':>2} "
            + "".join(f"{'tl ' + k:>10} {k + ' all':>10} " for k in kinds)
            + f"{'TL plain':>10} {'TL rwc':>10} {'TL rwc+res':>10} "
            + "".join(f"{k + ' all/TL':>11} " for k in kinds))
    print(head)
    for r in rows:
        print(f"{r['model']:<13} {r['batch']:>3} {r['prompt_tokens']:>5} {r['threads']:>2} "
              + "".join(f"{r[f'tinylens_{k}']:>10,.0f} {r[f'tinylens_{k}_all_hooks']:>10,.0f} "
                        for k in kinds)
              + f"{r['tl_plain']:>10,.0f} {r['tl_run_with_cache']:>10,.0f} "
              f"{r['tl_run_with_cache_attn_result']:>10,.0f} "
              + "".join(f"{r[f'ratio_{k}_all_hooks_vs_tl_attn_result']:>10.2f}x " for k in kinds)
              + " cpu: " + "".join(f"{r[f'ratio_{k}_all_hooks_vs_tl_attn_result_cpu']:.2f}x "
                                   for k in kinds))


def tinylens_bin(args) -> Path:
    if args.tinylens:
        return Path(args.tinylens)
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "tinylens-host"],
                   cwd=REPO, check=True)
    return REPO / "target" / "release" / "tinylens"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, default=REPO / "models/demo/model.safetensors")
    ap.add_argument("--config", type=Path, default=REPO / "models/demo/config.json")
    ap.add_argument("--kinds", default="f32,int8",
                    help="storage kinds of the tinylens blobs converted from --weights")
    ap.add_argument("--blob", action="append", default=[],
                    help="use this blob (instead of converting; repeatable)")
    ap.add_argument("--seconds", type=float, default=2.0, help="per configuration and side")
    ap.add_argument("--min-samples", type=int, default=10)
    ap.add_argument("--prompt-tokens", type=int, help="default: half the context")
    ap.add_argument("--tinylens", help="path of the tinylens binary (default: cargo build --release)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--grid", action="store_true",
                    help="prefill grid over the model ladder, batches, lengths and threads")
    ap.add_argument("--ladder", default="demo,mid,attn-only-2l")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--lengths", default="256", help="prompt lengths (clamped to n_ctx)")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()

    torch.set_num_threads(1)
    exe = tinylens_bin(args)
    if args.grid:
        if args.min_samples == 10:
            args.min_samples = 3
        grid(args, exe)
        return
    tmp = tempfile.TemporaryDirectory()
    blobs = [Path(b) for b in args.blob]
    if not blobs:
        for kind in [k for k in args.kinds.split(",") if k]:
            out = Path(tmp.name) / f"model-{kind}.tlm"
            subprocess.run([str(exe), "convert", "--weights", str(args.weights), "--config",
                            str(args.config), "--quant", kind, "-o", str(out), "--json"],
                           check=True, stdout=subprocess.DEVNULL)
            blobs.append(out)

    ours = []
    for b in blobs:
        cmd = [str(exe), "bench", str(b), "--json", "--seconds", str(args.seconds)]
        if args.prompt_tokens:
            cmd += ["--prompt-tokens", str(args.prompt_tokens)]
        ours.append(json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                              text=True).stdout))
    prompt = ours[0]["prompt"]
    decode = ours[0]["decode_tokens"]

    tl = {}
    for name, attn_result, hooks in [("plain", False, False), ("all_hooks", False, True),
                                     ("all_hooks_attn_result", True, True)]:
        model = load_tl(args.weights, args.config, attn_result)
        tl[name] = bench_tl(model, prompt, decode, args.seconds, args.min_samples, hooks)

    rows = []
    for o in ours:
        kind = "+".join(o["storage_kinds"])
        for phase in ["prefill", "decode"]:
            for hk, tk in [("", "plain"), ("_all_hooks", "all_hooks")]:
                ty = o[f"{phase}_tokens_per_s{hk}"]
                tt = tl[tk][f"{phase}_tokens_per_s"]
                if not tt:
                    continue  # no decoding when the prompt fills the context
                rows.append({"blob": kind, "phase": phase,
                             "hooks": "all" if hk else "off", "tinylens_tokens_per_s": ty,
                             "transformerlens_tokens_per_s": tt, "ratio": ty / tt,
                             "ratio_vs_tl_with_attn_result": (
                                 ty / tl["all_hooks_attn_result"][f"{phase}_tokens_per_s"]
                                 if hk else None)})
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), platform.processor())
    import importlib.metadata as md
    result = {
        "machine": {"nproc": os.cpu_count(), "cpu": cpu,
                    "rustc": subprocess.run(["rustc", "--version"], capture_output=True,
                                            text=True).stdout.strip(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "transformer_lens": md.version("transformer-lens"),
                    "torch_threads": torch.get_num_threads()},
        "prompt_tokens": len(prompt), "decode_tokens": decode,
        "transformerlens_kv_cache": KVCache is not None,
        "transformerlens": tl, "tinylens": ours, "ratios": rows,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    m = result["machine"]
    print(f"# {m['cpu']}, {m['nproc']} CPUs; {m['rustc']}; torch {m['torch']} "
          f"({m['torch_threads']} thread), transformer-lens {m['transformer_lens']}")
    print(f"# {args.weights}: prompt {len(prompt)} tokens, then {decode} decoded greedily "
          f"({'TL KV cache' if KVCache else 'TL without KV cache: whole sequence per token'});"
          f" medians over >= {args.seconds} s per configuration")
    print(f"{'blob':<10} {'phase':<8} {'hooks':<6} {'tinylens tok/s':>15} {'TL tok/s':>11} "
          f"{'ratio':>8} {'vs TL+result':>13}")
    for r in rows:
        extra = r["ratio_vs_tl_with_attn_result"]
        print(f"{r['blob']:<10} {r['phase']:<8} {r['hooks']:<6} "
              f"{r['tinylens_tokens_per_s']:>15,.0f} {r['transformerlens_tokens_per_s']:>11,.0f} "
              f"{r['ratio']:>7.1f}x {'' if extra is None else f'{extra:>12.1f}x'}")
    print("TL all hooks with use_attn_result=True: prefill "
          f"{tl['all_hooks_attn_result']['prefill_tokens_per_s']:,.0f} tok/s, decode "
          f"{tl['all_hooks_attn_result']['decode_tokens_per_s']:,.0f} tok/s")
    for o in ours:
        print(f"tinylens {'+'.join(o['storage_kinds'])}: trace {o['trace_bytes_per_token']:,.0f} bytes/token "
              f"with every hook; workspace {o['workspace_bytes']:,} bytes "
              f"(minimum {o['minimum_bytes']:,}); blob {o['blob_bytes']:,} bytes")


if __name__ == "__main__":
    main()
