#!/usr/bin/env python3
"""Train the English demo model (models/english/): a two-layer attention-only transformer
with a byte-level BPE tokenizer, trained in TransformerLens on real English text, sized for
an nRF52840-class microcontroller (int8 weights <= 1 MiB of flash, working memory <= 200 KiB).

    /opt/tlenv/bin/python scripts/train_english.py          # or any python with
    pip install transformer-lens==3.9.0 safetensors tokenizers

Corpus: the documentation that ships inside CPython's standard library, i.e. every docstring
of the pure-Python stdlib modules (module, class and function docstrings, read with `ast`, no
code is imported or run) and the Language Reference topics of `pydoc_data.topics` (what
`help('if')` shows). It comes with the Python package itself (Debian `python3`, or any
CPython build), under the Python Software Foundation License 2.0 (PSF-2.0). The script
rebuilds it deterministically from the running interpreter and records its size and SHA-256
in TRAINING.md; another CPython version gives a slightly different corpus.

Deterministic (fixed seeds, CPU, 1 thread). The machine is shared: run it under `nice`.
Two phases (see PHASES): `--phase1-out FILE` keeps the weights after phase 1 (and its log
as FILE.log), `--init-from FILE` starts from them and runs phase 2 only.
Writes models/english/{tokenizer.json, heldout.txt, config.json, model.safetensors,
TRAINING.md, samples.json} (or `--out DIR`). CI never runs this script.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tl_ref  # noqa: E402

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

OUT = tl_ref.REPO / "models" / "english"
SEED = 11
VOCAB = 1024
BOS_TOKEN = "<|endoftext|>"
CFG = dict(
    n_layers=2,
    d_model=128,
    n_heads=4,
    d_head=32,
    d_vocab=VOCAB,
    n_ctx=64,
    normalization_type="LN",
    positional_embedding_type="standard",
)
BATCH = 32
WEIGHT_DECAY = 0.01
# Two phases, each a fresh AdamW (gradient norm clipped to 1) on its own data stream.
#
# Induction heads need a previous-token head in layer 0 and a layer-1 head whose keys read
# it; each half is useless without the other, so a plain run sits on a loss plateau until
# both grow together (Olsson et al.'s "phase change"). The first version of this script
# trained 3000 steps at lr 4e-3 on a mix with 8% repeated random tokens and never left the
# plateau: its layer-0 heads settled on attending to their own token (an extended
# embedding), and continuing from it with more repeats (up to 80% for 650 steps) moved no
# head. So phase 1 grows the circuit first, from the initialisation, on sequences most of
# which repeat random tokens, where only a copy of an earlier occurrence predicts the next
# token; phase 2 then trains on the text mix (which still has repeats, so the heads are
# kept) to bring the English back.
#
# The kinds of sequence (each starts with BOS; n is the span length):
#   span:    text in which a span of 8-31 tokens is copied to a later place (names and
#            phrases that come back, at a random distance);
#   prefix:  a span of 10-31 tokens of text twice, then the text that follows it (a repeated
#            sentence, the shape of the demo's prompts);
#   random:  10-31 uniformly random tokens repeated `copies` times at most (as many as fit),
#            then text (Olsson et al.'s repeated random tokens);
#   the rest is the plain training stream.
PHASES = [
    dict(name="induction", steps=1500, lr=2e-3, warmup=50, final=1.0, seed=SEED + 1,
         span=0.10, prefix=0.10, random=0.60, copies=4),
    dict(name="english", steps=2000, lr=2e-3, warmup=50, final=0.1, seed=SEED + 2,
         span=0.30, prefix=0.12, random=0.08, copies=2),
]
# Every MONITOR steps the training log prints the best layer-1 induction score and layer-0
# previous-token score on held-out repeated text (the measure of the results below, on 8
# prompts) and on repeated random tokens, to see the heads form.
MONITOR = 100

SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "site-packages",
             "dist-packages", "ensurepip", "pydoc_data", "__pycache__"}


def clean(doc: str) -> str:
    """One docstring as prose: ASCII only, doctest and indented code blocks dropped, the lines
    of each paragraph joined."""
    paras = []
    for para in re.split(r"\n\s*\n", doc):
        lines = para.split("\n")
        if any(l.lstrip().startswith((">>>", "...")) for l in lines):
            continue
        if lines and lines[0].startswith(("    ", "\t")):
            continue  # an indented block: code or a table
        text = " ".join(l.strip() for l in lines if l.strip())
        text = text.encode("ascii", "ignore").decode()
        text = re.sub(r"\s+", " ", text).strip()
        if len(text) >= 20:
            paras.append(text)
    return "\n".join(paras)


def build_corpus() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            try:
                tree = ast.parse(Path(root, f).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    d = ast.get_docstring(node)
                    if d:
                        c = clean(d)
                        if c:
                            docs.append(c)
    import pydoc_data.topics as topics  # the Language Reference, as text

    for key in sorted(topics.topics):
        c = clean(topics.topics[key])
        if c:
            docs.append(c)
    # Deduplicate (many methods share a docstring) keeping the first occurrence.
    seen, out = set(), []
    for d in docs:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def train_tokenizer(docs: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[BOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    bos = tok.token_to_id(BOS_TOKEN)
    assert bos == 0, bos
    # encode(text) prepends BOS, as TransformerLens's to_tokens does (prepend_bos=True).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", special_tokens=[(BOS_TOKEN, bos)]
    )
    return tok


def token_stream(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    ids: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.extend(tok.encode("\n", add_special_tokens=False).ids)
    return np.array(ids, dtype=np.int64)


def make_batch_fn(stream: np.ndarray, phase: dict):
    """Training batches of `phase`'s mix, drawn from its own generator."""
    L = CFG["n_ctx"]
    gen = torch.Generator().manual_seed(phase["seed"])
    span_p, prefix_p, random_p = phase["span"], phase["prefix"], phase["random"]

    def randint(lo: int, hi: int) -> int:  # lo <= x < hi
        return int(torch.randint(lo, hi, (1,), generator=gen))

    def batch():
        rows = torch.empty((BATCH, L), dtype=torch.long)
        rows[:, 0] = 0
        starts = torch.randint(0, len(stream) - L, (BATCH,), generator=gen)
        kind = torch.rand((BATCH,), generator=gen)
        for i in range(BATCH):
            s = int(starts[i])
            row = torch.from_numpy(stream[s : s + L - 1]).clone()
            u = float(kind[i])
            if u < span_p:
                # text, then a span of it again: [a .. a+n) copied to start at c >= a+n
                n = randint(8, 32)
                a = randint(0, L - 1 - 2 * n + 1)
                c = randint(a + n, L - 1 - n + 1)
                row[c : c + n] = row[a : a + n].clone()
            elif u < span_p + prefix_p:
                n = randint(10, 32)
                row = torch.cat([row[:n], row[: L - 1 - n]])
            elif u < span_p + prefix_p + random_p:
                n = randint(10, 32)
                span = torch.randint(1, VOCAB, (n,), generator=gen)
                k = max(2, min(phase["copies"], (L - 1) // n))
                row = torch.cat([span] * k + [row[: L - 1 - k * n]])
            rows[i, 1:] = row
        return rows

    return batch


def write_heldout(test_docs: list[str], n: int = 64) -> None:
    """heldout.txt: the first `n` held-out paragraphs of 200+ characters, one per line, which
    the demo repeats to measure induction on real text the model never saw."""
    paras = [p for d in test_docs for p in d.split("\n") if len(p) >= 200][:n]
    (OUT / "heldout.txt").write_text("\n".join(paras) + "\n")


def lr_at(phase: dict, step: int) -> float:
    """Linear warm-up, then a cosine from the peak down to `final` x the peak (1: constant)."""
    lr, warmup, f = phase["lr"], phase["warmup"], phase["final"]
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, phase["steps"] - warmup)
    return lr * (f + (1 - f) * 0.5 * (1 + np.cos(np.pi * p)))


def train(model, phase: dict, stream: np.ndarray, monitor):
    """One phase; returns its training losses, its monitor lines and its seconds."""
    make_batch = make_batch_fn(stream, phase)
    opt = torch.optim.AdamW(model.parameters(), lr=phase["lr"], weight_decay=WEIGHT_DECAY)
    losses, log, t0 = [], [], time.time()
    model.train()
    for step in range(phase["steps"]):
        for g in opt.param_groups:
            g["lr"] = lr_at(phase, step)
        loss = model(make_batch(), return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 20 == 0:
            el = time.time() - t0
            line = f"step {step + 1:5d}  loss {np.mean(losses[-20:]):.4f}"
            if (step + 1) % MONITOR == 0:
                line += monitor()
                log.append(f"{phase['name']} {line}")
            print(f"  {phase['name']} {line}  {el / (step + 1) * 1e3:.0f} ms/step", flush=True)
    model.eval()
    return losses, log, time.time() - t0


@torch.no_grad()
def induction_monitor(model, stream: np.ndarray):
    """A cheap look during training, on 8 held-out paragraphs repeated (BOS + 31 tokens + the
    same 31) and on 8 sequences of 31 random tokens repeated: the best layer-1 head's mean
    attention from the second copy to the token after the first occurrence, the best layer-0
    head's mean attention to the previous token, and the loss on each copy."""
    text, _, _ = repeated_text(model, stream, n=8)
    gen = torch.Generator().manual_seed(4321)
    span = torch.randint(1, VOCAB, (8, 31), generator=gen)
    rand = torch.cat([torch.zeros(8, 1, dtype=torch.long), span, span], 1)
    was = model.training
    model.eval()
    out = []
    for what, toks in (("text", text), ("random", rand)):
        half = (toks.shape[1] - 1) // 2
        logits, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
        lp = logits.log_softmax(-1)
        nll = -lp[:, :-1].gather(-1, toks[:, 1:, None])[..., 0]
        q = torch.arange(half + 1, 2 * half + 1)
        ind = cache["blocks.1.attn.hook_pattern"][:, :, q, q - half + 1].mean((0, 2))
        qp = torch.arange(1, 2 * half + 1)
        prev = cache["blocks.0.attn.hook_pattern"][:, :, qp, qp - 1].mean((0, 2))
        out.append(f"{what}: L1 induction {ind.max():.2f} L0 prev {prev.max():.2f} "
                   f"loss {nll[:, 1:half].mean():.2f} -> {nll[:, half + 1:].mean():.2f}")
    model.train(was)
    return "  | " + "  | ".join(out)


@torch.no_grad()
def eval_loss(model, stream: np.ndarray, n: int = 64) -> float:
    L = CFG["n_ctx"]
    gen = torch.Generator().manual_seed(99)
    starts = torch.randint(0, len(stream) - L, (n,), generator=gen)
    rows = torch.stack([torch.cat([torch.zeros(1, dtype=torch.long),
                                   torch.from_numpy(stream[int(s): int(s) + L - 1])]) for s in starts])
    return float(model(rows, return_type="loss"))


@torch.no_grad()
def repeated_text(model, stream: np.ndarray, half: int = 31, n: int = 32):
    """Held-out real text, repeated: BOS + 31 tokens + the same 31. Returns the prompts and
    the loss on each copy (the first copy's first prediction left out)."""
    gen = torch.Generator().manual_seed(1234)
    starts = torch.randint(0, len(stream) - half, (n,), generator=gen)
    rows = []
    for s in starts:
        span = torch.from_numpy(stream[int(s): int(s) + half])
        rows.append(torch.cat([torch.zeros(1, dtype=torch.long), span, span]))
    toks = torch.stack(rows)
    lp = model(toks).log_softmax(-1)
    nll = -lp[:, :-1].gather(-1, toks[:, 1:, None])[..., 0]  # predicting tokens 1..
    first = nll[:, 1:half].mean().item()  # predicting tokens 2..half
    second = nll[:, half + 1:].mean().item()  # predicting tokens half+2..2*half
    return toks, first, second


@torch.no_grad()
def sample(model, tok: Tokenizer, prompt: str, n: int, gen: torch.Generator,
           temperature=0.8, top_k=40) -> str:
    ids = tok.encode(prompt).ids
    for _ in range(n):
        if len(ids) >= CFG["n_ctx"]:
            break
        logits = model(torch.tensor([ids]))[0, -1] / temperature
        v, i = logits.topk(top_k)
        p = torch.softmax(v, -1)
        ids.append(int(i[torch.multinomial(p, 1, generator=gen)]))
    return tok.decode(ids)


@torch.no_grad()
def greedy(model, tok: Tokenizer, prompt: str, n: int) -> str:
    ids = tok.encode(prompt).ids
    for _ in range(n):
        if len(ids) >= CFG["n_ctx"]:
            break
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return tok.decode(ids)


SAMPLE_PROMPTS = [
    "The function",
    "This module provides",
    "Return the number of",
    "If the file",
]
# Names to complete from their first occurrence. "Hendricks" is a hard case for a two-layer
# model: its tokens are " H" "end" "r" "ic" "k" "s", and the induction head matches one
# token, so after "r" it also sees the "r" of "Mr" (followed by " H") and of "wrote".
NAME_PROMPTS = [
    "Mr Rossum wrote the parser and the tokenizer. The tests were written by Mr Ro",
    "Mr Hendricks wrote the parser and the tokenizer. The tests were written by Mr Hend",
]


def main():
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="output folder (default models/english)")
    ap.add_argument("--init-from", type=Path,
                    help="weights at the end of phase 1 (from --phase1-out): run phase 2 only")
    ap.add_argument("--phase1-out", type=Path, help="also save the weights at the end of phase 1")
    for i in (1, 2):
        ap.add_argument(f"--phase{i}", nargs="*", default=[], metavar="KEY=VALUE",
                        help=f"override phase {i}'s settings (steps, lr, span, random, ...)")
    args = ap.parse_args()
    OUT = args.out
    tl_ref.setup_torch()
    # One thread: on the shared machine a second thread mostly spins waiting for a core,
    # and one thread makes the run's float sums independent of the core count.
    torch.set_num_threads(1)
    versions = tl_ref.check_versions()
    import tokenizers as _t

    versions["tokenizers"] = _t.__version__
    OUT.mkdir(parents=True, exist_ok=True)

    docs = build_corpus()
    corpus = "\n".join(docs)
    corpus_sha = hashlib.sha256(corpus.encode()).hexdigest()
    print(f"corpus: {len(docs)} documents, {len(corpus)} characters, sha256 {corpus_sha[:16]}")
    # Hold out every 20th document.
    train_docs = [d for i, d in enumerate(docs) if i % 20 != 0]
    test_docs = [d for i, d in enumerate(docs) if i % 20 == 0]

    tok = train_tokenizer(train_docs)
    tok.save(str(OUT / "tokenizer.json"))
    write_heldout(test_docs)
    train_ids = token_stream(tok, train_docs)
    test_ids = token_stream(tok, test_docs)
    print(f"tokens: {len(train_ids)} train, {len(test_ids)} held out "
          f"({len(corpus) / (len(train_ids) + len(test_ids)):.2f} characters/token)")

    torch.manual_seed(SEED)
    model = tl_ref.HookedTransformer(tl_ref.make_cfg(SEED, **CFG))
    phases = [dict(p) for p in PHASES]
    for phase, sets in zip(phases, (args.phase1, args.phase2)):
        for kv in sets:
            k, v = kv.split("=", 1)
            phase[k] = type(phase[k])(v)
    monitor = lambda: induction_monitor(model, test_ids)  # noqa: E731
    runs = []  # (phase, losses, monitor lines, seconds) of the phases run here
    for i, phase in enumerate(phases):
        if i == 0 and args.init_from:
            # Phase 1 is deterministic: its weights can be kept and phase 2 run again.
            print(f"phase 1 ({phase['name']}): weights from {args.init_from}")
            print(model.load_state_dict(load_file(str(args.init_from)), strict=True))
            # Its log (`--phase1-out`'s `.log`) is read when TRAINING.md is written.
            runs.append((phase, None, Path(str(args.init_from) + ".log"), None))
            continue
        losses, log, seconds = train(model, phase, train_ids, monitor)
        print(f"phase {i + 1} ({phase['name']}): {phase['steps']} steps in {seconds:.0f} s")
        runs.append((phase, losses, log, seconds))
        if i == 0 and args.phase1_out:
            tl_ref.save_tensors(args.phase1_out, tl_ref.state_dict_tensors(model))
            Path(str(args.phase1_out) + ".log").write_text("\n".join(log) + "\n")
    model.eval()

    tl_ref.save_tensors(OUT / "model.safetensors", tl_ref.state_dict_tensors(model))
    tl_ref.write_json(OUT / "config.json", tl_ref.cfg_json(model.cfg))

    held_out = eval_loss(model, test_ids)
    toks, first, second = repeated_text(model, test_ids)
    pseudo = [f"t{i}" for i in range(VOCAB)]
    scores = tl_ref.head_scores(model, toks.tolist(), pseudo)
    scores_xb = tl_ref.head_scores(model, toks.tolist(), pseudo, exclude_bos=True)
    gen = torch.Generator().manual_seed(5)
    samples = [{"prompt": p, "sampled": sample(model, tok, p, 40, gen), "greedy": greedy(model, tok, p, 24)}
               for p in SAMPLE_PROMPTS]
    names = [{"prompt": p, "greedy": greedy(model, tok, p, 4)} for p in NAME_PROMPTS]
    print(f"held-out loss {held_out:.3f}; repeated text: first copy {first:.3f}, second {second:.3f}")
    for k, v in scores.items():
        print(f"{k}:\n{v.numpy().round(2)}")
    for s in samples:
        print(repr(s["sampled"]))
    for n in names:
        print(repr(n["greedy"]))

    def table(t):
        rows = ["| layer | " + " | ".join(f"H{h}" for h in range(t.shape[1])) + " |",
                "|---|" + "---:|" * t.shape[1]]
        for l in range(t.shape[0]):
            rows.append(f"| {l} | " + " | ".join(f"{x:.2f}" for x in t[l].tolist()) + " |")
        return "\n".join(rows)

    (OUT / "samples.json").write_text(json.dumps({"samples": samples, "names": names}, indent=2) + "\n")
    md = f"""# English demo model: two-layer attention-only transformer on Python's documentation

Generated by `scripts/train_english.py` (do not edit by hand). Reproduce with

    nice /opt/tlenv/bin/python scripts/train_english.py [--phase1-out phase1.safetensors]
    nice /opt/tlenv/bin/python scripts/train_english.py --init-from phase1.safetensors  # phase 2 again

(CPU, `torch.set_num_threads(1)`, {sum(p['steps'] for p in phases)} steps in two phases, about 0.5 s each on the shared 2-core machine;
versions: transformer-lens {versions['transformer-lens']}, torch {versions['torch']},
tokenizers {versions['tokenizers']}, safetensors {versions['safetensors']}, Python {versions['python']}.)

## Corpus
The documentation inside CPython {versions['python']}'s standard library (PSF License 2.0): every
docstring of the pure-Python stdlib modules (read with `ast`; `test`, `idlelib`, `tkinter`,
`lib2to3`, `turtledemo`, `ensurepip` left out) and the Language Reference topics of
`pydoc_data.topics`. Paragraphs with doctests and indented blocks are dropped, the lines of a
paragraph joined, non-ASCII characters removed, duplicates removed: {len(docs)} documents,
{len(corpus)} characters, SHA-256 `{corpus_sha}`. Every 20th document is held out.

## Tokenizer
`tokenizer.json`: byte-level BPE (Hugging Face `tokenizers`), {VOCAB} tokens trained on the
training documents; token 0 is `{BOS_TOKEN}`, which a `TemplateProcessing` post-processor
prepends (`encode(text)` gives TransformerLens's `to_tokens(text)` with prepend_bos).
{len(train_ids)} training tokens, {len(test_ids)} held out.

## Model
TransformerLens `HookedTransformer` from a config (no hub): n_layers=2, d_model=128,
n_heads=4, d_head=32, d_vocab={VOCAB}, n_ctx=64, attn_only=True, normalization_type="LN",
positional_embedding_type="standard", float32, init seed {SEED}.

## Training
Batches of {BATCH} x {CFG['n_ctx']} tokens (BOS + 63 tokens of the training stream at a random
place, some rewritten with repeats; loss: TL's `model(tokens, return_type="loss")`), AdamW
(weight decay {WEIGHT_DECAY}, gradient norm clipped to 1), in two phases, each with a fresh optimizer:

| phase | steps | peak lr | warm-up | then | span copied | text twice | random tokens repeated | plain text |
|---|---:|---:|---:|---|---:|---:|---:|---:|
""" + "\n".join(
        f"| {i + 1}: {p['name']} | {p['steps']} | {p['lr']} | {p['warmup']} | "
        + ("constant" if p['final'] == 1 else f"cosine to {p['final']:.0%}")
        + f" | {p['span']:.0%} | {p['prefix']:.0%} | {p['random']:.0%} (up to {p['copies']} copies) | "
        f"{1 - p['span'] - p['prefix'] - p['random']:.0%} |" for i, p in enumerate(phases)) + f"""

Span copied: a span of 8-31 tokens of the text copied to a later place; text twice: the
sequence starts with a span of 10-31 tokens of text twice; random tokens repeated: 10-31
uniformly random tokens, repeated as often as fit (at most the copies given), then text.
Why two phases: the first version of this script trained 3000 steps of the phase-2 mix (lr
4e-3) and its induction heads never formed (best layer-1 induction score 0.07): its layer-0
heads attend to their own token, and more repeats from there moved no head. Phase 1 grows
the previous-token -> induction circuit from the initialisation on mostly repeated random
tokens; phase 2 brings the English back on the text mix, whose repeats keep the heads.

""" + "\n".join(f"{ph['name']}: {sec:.0f} s, final training loss {np.mean(ls[-20:]):.3f} "
                f"(mean of the last 20 steps)." for ph, ls, _, sec in runs if ls) + (f"""
Phase 1 was not run with phase 2: its weights came from `{args.init_from.name}` (made by this
script with `--phase1-out`; its log, from that file's `.log`, is below).""" if args.init_from else "") + f"""

Training log every {MONITOR} steps (8 held-out paragraphs repeated, 8 random sequences
repeated: best layer-1 induction attention, best layer-0 previous-token attention, loss on
the first copy -> the second):

```
""" + "\n".join(l for _, _, log, _ in runs for l in
                (log.read_text().splitlines() if isinstance(log, Path) and log.exists()
                 else [] if isinstance(log, Path) else log)) + f"""
```

## Results (TransformerLens, float32)
- Held-out loss (64 sequences of BOS + 63 held-out tokens): {held_out:.3f}.
- Held-out real text repeated (32 prompts: BOS + 31 tokens + the same 31): loss on the first
  copy {first:.3f}, on the second copy {second:.3f}.

Head-detector scores (`detect_head`, 'mul') on those 32 prompts:

previous-token
{table(scores['previous_token'])}

induction
{table(scores['induction'])}

induction with exclude_bos
{table(scores_xb['induction'])}

## Samples (temperature 0.8, top-k 40; then greedy)
""" + "\n".join(f"- `{s['sampled']!r}`\n  - greedy: `{s['greedy']!r}`" for s in samples) + f"""

Name completion (greedy, 4 tokens; see NAME_PROMPTS in the script for why Hendricks is hard):
""" + "\n".join(f"- `{n['greedy']!r}`" for n in names) + """
"""
    (OUT / "TRAINING.md").write_text(md)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
