#!/usr/bin/env python3
"""Circuit analysis at research scale: every analysis command on random-init TransformerLens models, timed beside TransformerLens.

Makes the ladder's attention-only models with random weights (seed 0, TransformerLens 3.9,
scripts/make_model_ladder.py; generated on the fly, never committed):
  mid          2 layers x 8 heads, d_model 256, d_head 32, vocab 5000, n_ctx 256, LN, standard positions
  attn-only-2l TL's attn-only-2l shape: d_model 512, 8 x 64, vocab 48262, n_ctx 2048, LN, shortformer
converts them with `tinylens convert --quant f32`,
then runs every analysis command under /usr/bin/time -v (wall time and peak RSS) and, in the same
run and on the same weights, TransformerLens's FactoredMatrix eigenvalues (copying scores) and
all_composition_scores (1 thread). tinylens's copying and composition scores are compared with TL's.

Usage (from the repository root, with the TransformerLens venv):
  /opt/tlenv/bin/python scripts/bench_analysis.py [--models mid,attn-only-2l] [--markdown]
Prints one table per model (and, with --markdown, the rows for scripts/BENCHMARKS.md).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_model_ladder import LADDER, make  # noqa: E402


def build(name: str, out: Path):
    """The ladder's random-init TL model (scripts/make_model_ladder.py), its
    safetensors/config files and its f32 blob (made once per work directory)."""
    kw = LADDER[name]()
    kw.update(attn_only=True, act_fn=None, seed=0, device="cpu", dtype=torch.float32)
    model = HookedTransformer(HookedTransformerConfig(**kw))
    model.eval()
    d = out / name
    blob = d / "model.tlm"
    if not blob.exists():
        make(name, out)
        subprocess.run([str(tinylens()), "convert", "--weights", str(d / "model.safetensors"),
                        "--config", str(d / "config.json"), "--quant", "f32", "-o", str(blob)],
                       check=True, stdout=subprocess.DEVNULL)
    # The same seed gives the same weights; check it against what was converted.
    saved = load_file(str(d / "model.safetensors"))
    for k, v in model.state_dict().items():
        if k in saved and not torch.equal(saved[k], v):
            raise SystemExit(f"{d}: {k} differs from a fresh seed-0 model; delete {d}")
    return model, blob


_BIN = None


def tinylens() -> Path:
    global _BIN
    if _BIN is None:
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "tinylens-host"],
                       cwd=REPO, check=True)
        _BIN = REPO / "target" / "release" / "tinylens"
    return _BIN


def timed(args, timeout: float):
    """Runs tinylens with args under /usr/bin/time -v: (wall s, CPU s, peak RSS MB, stdout or
    None, note). CPU = user + system time of the process and its threads."""
    cmd = ["/usr/bin/time", "-v", str(tinylens())] + [str(a) for a in args]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, None, None, None, f"killed after {timeout:.0f} s"
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    rss = int(m.group(1)) / 1024 if m else float("nan")
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", p.stderr))
    if p.returncode != 0:
        tail = [l for l in p.stderr.splitlines() if not l.startswith("\t")][-2:]
        return wall, cpu, rss, None, "failed: " + " | ".join(tail)
    return wall, cpu, rss, p.stdout, ""


def tl_weight_scores(model):
    """TL's copying scores (FactoredMatrix eigenvalues) and Q/K/V composition scores, timed
    (CPU seconds of this process, 1 thread: wall time measures the load)."""
    torch.set_num_threads(1)
    with torch.inference_mode():
        t0 = time.process_time()
        ev = (model.W_E @ model.OV @ model.W_U).eigenvalues
        copying = (ev.sum(-1).real / ev.abs().sum(-1)).double()
        t_copy = time.process_time() - t0
        t0 = time.process_time()
        comp = {m: model.all_composition_scores(m).double() for m in "QKV"}
        t_comp = time.process_time() - t0
    return copying, comp, t_copy, t_comp


def max_diff(ours, ref: torch.Tensor) -> float:
    a = torch.tensor(ours, dtype=torch.float64)
    mask = ~torch.isnan(ref)
    return float((a - ref).abs()[mask].max())


def bench_model(name: str, work: Path, threads: int, timeout: float, commands):
    print(f"\n== {name} ==", flush=True)
    model, blob = build(name, work)
    n_params = sum(p.numel() for p in model.parameters())
    copying, comp, t_copy, t_comp = tl_weight_scores(model)
    rows = []

    def row(label, args, tl=""):
        if args[0] not in commands:
            return None
        wall, cpu, rss, out, note = timed(args, timeout)
        rows.append((label, wall, cpu, rss, tl, note))
        shown = "-" if wall is None else f"{wall:.2f} s ({cpu:.2f} s CPU), {rss:.0f} MB"
        print(f"  {label:<48} {shown:>32}  {tl} {note}", flush=True)
        return out

    # Weight-only scores, 1 thread, no vocab x vocab scans: the work TL does.
    out = row("circuits --json --no-scans --threads 1", [
        "circuits", blob, "--json", "--no-scans", "--threads", "1"],
        tl=f"TL (CPU s, same run) copying {t_copy:.2f} s + all_composition_scores {t_comp:.2f} s"
           f" = {t_copy + t_comp:.2f} s")
    if out:
        j = json.loads(out)
        d_copy = max_diff(j["copying"], copying)
        d_comp = max(max_diff(j["composition"][m], comp[m]) for m in "QKV")
        print(f"    vs TL: copying max |diff| {d_copy:.1e}, composition max |diff| {d_comp:.1e}")
        rows.append(("  values vs TL (max abs diff)", None, None, None,
                     f"copying {d_copy:.1e}, composition {d_comp:.1e}", ""))
    row("circuits --json (default scans) --threads 1", ["circuits", blob, "--json", "--threads", "1"])
    row(f"circuits --json --full-scans --threads {threads}",
        ["circuits", blob, "--json", "--full-scans", "--threads", str(threads)])
    prompt = ["--repeated", "128"]  # 256 tokens
    row("paths --repeated 128 (256 tokens) --threads 1",
        ["paths", blob, *prompt, "--json", "--threads", "1"])
    row("attribute --repeated 128 (256 tokens)", ["attribute", blob, *prompt, "--json"])
    row("heads --repeated 128", ["heads", blob, *prompt, "--json"])
    row(f"ablate --repeated 128 --batch 128 --threads {threads}",
        ["ablate", blob, "--repeated", "128", "--batch", "128", "--json", "--threads", str(threads)])
    html = work / name / "report.html"
    row("report --repeated 128 (256 tokens)", ["report", blob, *prompt, "-o", html])
    if "report" in commands and html.exists():
        rows.append(("  report HTML size", None, None, None, f"{html.stat().st_size / 1e6:.2f} MB", ""))
    return n_params, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mid,attn-only-2l")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tinylens-bench-analysis"))
    ap.add_argument("--threads", type=int, default=2, help="threads of the parallel runs")
    ap.add_argument("--timeout", type=float, default=600, help="seconds before a run is killed")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--commands", default="circuits,paths,attribute,heads,ablate,report",
                    help="which tinylens commands to time")
    a = ap.parse_args()
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    results = {}
    for name in a.models.split(","):
        results[name] = bench_model(name, a.work, a.threads, a.timeout, a.commands.split(","))
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if a.markdown:
        for name, (n_params, rows) in results.items():
            print(f"\n### {name} ({n_params / 1e6:.1f}M parameters)\n")
            print("| command | wall | CPU | peak RSS | TransformerLens / note |\n"
                  "|---|---:|---:|---:|---|")
            for label, wall, cpu, rss, tl, note in rows:
                t = "" if wall is None else f"{wall:.2f} s"
                c = "" if cpu is None else f"{cpu:.2f} s"
                r = "" if rss is None else f"{rss:.0f} MB"
                print(f"| `{label.strip()}` | {t} | {c} | {r} | {' '.join(x for x in (tl, note) if x)} |")


if __name__ == "__main__":
    sys.exit(main())
