#!/usr/bin/env python3
"""Train the demo model (models/demo/): a two-layer attention-only transformer that grows
induction heads.

    pip install transformer-lens==3.9.0 safetensors
    python3 scripts/train_demo.py

Deterministic (fixed seeds, CPU, 2 threads), a few minutes at most. Writes
models/demo/{model.safetensors, config.json, vocab.txt, reference.safetensors, TRAINING.md}.
See scripts/FIXTURES.md for the file contents. CI never runs this script.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tl_ref  # noqa: E402
from tl_ref import HookedTransformer  # noqa: E402

OUT = tl_ref.REPO / "models" / "demo"
SEED = 7
CFG = dict(
    n_layers=2,
    d_model=64,
    n_heads=4,
    d_head=16,
    d_vocab=64,
    n_ctx=32,
    normalization_type="LN",
    positional_embedding_type="standard",
)
BOS = 0
HALF = 15  # test prompts: BOS + 15 random tokens + the same 15 again = 31 tokens (< n_ctx)
SEQ_LEN = 1 + 2 * HALF
STEPS = 3000
BATCH = 64
LR = 1e-3
WEIGHT_DECAY = 0.01
N_EVAL = 64
N_HEAD_EVAL = 16


def vocab_strings(n: int):
    consonants = "k t n m s r p l h b d g y w f z".split()
    vowels = "a i u e o".split()
    syll = [c + v for c in consonants for v in vowels]
    assert len(syll) >= n - 1
    return ["<bos>"] + syll[: n - 1]


def repeated(gen, n, half=HALF, d_vocab=CFG["d_vocab"]):
    s = torch.randint(1, d_vocab, (n, half), generator=gen)
    bos = torch.full((n, 1), BOS, dtype=torch.long)
    return torch.cat([bos, s, s], dim=1)


def make_batch_fn(gen):
    """Training batches of SEQ_LEN tokens, each starting with BOS:
    7/8: random tokens in which a random sequence of random length 4..15 is immediately
         repeated at a random place (the repeat is never at a fixed offset, so position
         alone cannot predict it: the model has to learn induction);
    1/8: BOS + 30 random tokens.
    The test format (BOS + 15 + the same 15) is deliberately not in the training mix: with
    it, the model learned a positional shortcut in layer 0 instead of induction heads."""
    V = CFG["d_vocab"]

    def batch():
        n_rand = BATCH // 8
        n_var = BATCH - n_rand
        rows = torch.randint(1, V, (n_var, SEQ_LEN), generator=gen)
        rows[:, 0] = BOS
        lens = torch.randint(4, HALF + 1, (n_var,), generator=gen)
        for i in range(n_var):
            m = int(lens[i])
            start = 1 + int(torch.randint(0, SEQ_LEN - 1 - 2 * m + 1, (1,), generator=gen))
            rows[i, start + m : start + 2 * m] = rows[i, start : start + m]
        rand = torch.randint(1, V, (n_rand, SEQ_LEN), generator=gen)
        rand[:, 0] = BOS
        return torch.cat([rows, rand], dim=0)

    return batch


@torch.no_grad()
def half_losses(model, toks):
    """Mean next-token loss on the first copy (logits at positions 1..14 predicting tokens
    2..15) and on the second copy (positions 16..29 predicting tokens 17..30)."""
    logits = model(toks)
    lp = logits.log_softmax(-1)
    nll = -lp[:, :-1].gather(-1, toks[:, 1:, None])[..., 0]  # [batch, pos-1]: predicts pos+1
    first = nll[:, 1:HALF].mean().item()
    second = nll[:, HALF + 1 : 2 * HALF].mean().item()
    return first, second


def table(scores: torch.Tensor) -> str:
    L, H = scores.shape
    lines = ["| layer | " + " | ".join(f"H{h}" for h in range(H)) + " |", "|---" * (H + 1) + "|"]
    for l in range(L):
        lines.append(f"| L{l} | " + " | ".join(f"{scores[l, h]:.3f}" for h in range(H)) + " |")
    return "\n".join(lines)


def main():
    tl_ref.setup_torch()
    versions = tl_ref.check_versions()
    t0 = time.time()
    OUT.mkdir(parents=True, exist_ok=True)
    vocab = vocab_strings(CFG["d_vocab"])
    (OUT / "vocab.txt").write_text("\n".join(vocab) + "\n")

    model = HookedTransformer(tl_ref.make_cfg(SEED, **CFG))
    gen = torch.Generator().manual_seed(SEED)
    eval_gen = torch.Generator().manual_seed(SEED + 1000)
    eval_toks = repeated(eval_gen, N_EVAL)

    model.eval()
    init_first, init_second = half_losses(model, eval_toks)
    model.train()
    print(f"init: first half {init_first:.3f}, second half {init_second:.3f}")
    losses = tl_ref.train(model, make_batch_fn(gen), STEPS, LR, log_every=500, weight_decay=WEIGHT_DECAY)
    first, second = half_losses(model, eval_toks)
    print(f"final: first half {first:.3f}, second half {second:.3f}  ({time.time() - t0:.0f}s)")

    cfg_dict = tl_ref.cfg_json(model.cfg)
    tl_ref.save_tensors(OUT / "model.safetensors", tl_ref.state_dict_tensors(model))
    tl_ref.write_json(OUT / "config.json", cfg_dict)

    # Head scores averaged over held-out repeated prompts (detect_head's list form).
    heads_prompts = [p.tolist() for p in eval_toks[:N_HEAD_EVAL]]
    avg = tl_ref.head_scores(model, heads_prompts, vocab)
    avg_nobos = tl_ref.head_scores(model, heads_prompts, vocab, exclude_bos=True)

    # Reference for one test prompt.
    test = eval_toks[0]
    ref = {"tokens": test.to(torch.int32), "heads.tokens": test.to(torch.int32)}
    with torch.no_grad():
        ref["logits"] = model(test[None])[0]
    for k, v in tl_ref.head_scores(model, [test.tolist()], vocab).items():
        ref[f"heads.{k}"] = v
    for k, v in tl_ref.head_scores(model, [test.tolist()], vocab, exclude_bos=True).items():
        ref[f"heads_exclude_bos.{k}"] = v
    circ = tl_ref.circuit_refs(model)
    ref.update(circ)
    tl_ref.save_tensors(OUT / "reference.safetensors", ref)

    prev = avg["previous_token"]
    ind = avg["induction"]
    prev_head = int(prev[0].argmax())
    ind_heads = [h for h in range(CFG["n_heads"]) if ind[1, h] > 0.3]
    comp_k = circ["composition.K"][0, prev_head, 1]  # K-composition of the prev-token head into L1 heads
    print("previous_token:\n" + table(prev))
    print("induction:\n" + table(ind))
    print(f"layer-0 previous-token head: L0H{prev_head}; layer-1 induction heads: {['L1H%d' % h for h in ind_heads]}")
    for h in range(CFG["n_heads"]):
        print(f"  K-composition L0H{prev_head} -> L1H{h}: {comp_k[h]:.3f}")

    md = f"""# Demo model: two-layer attention-only transformer with induction heads

Generated by `scripts/train_demo.py` (do not edit by hand). Reproduce with

    pip install transformer-lens==3.9.0 safetensors
    python3 scripts/train_demo.py

(CPU, `torch.set_num_threads(2)`; the training loop is about 3000 x 17 ms, i.e. 1-2 min on an
idle 2-core machine, longer when the machine is shared; versions used:
transformer-lens {versions['transformer-lens']}, torch {versions['torch']},
safetensors {versions['safetensors']}, Python {versions['python']}.)

## Model
TransformerLens `HookedTransformer` built from a `HookedTransformerConfig` (no hub):
n_layers=2, d_model=64, n_heads=4, d_head=16, d_vocab=64, n_ctx=32, attn_only=True,
normalization_type="LN", positional_embedding_type="standard", float32, init seed {SEED}.
`config.json` is `cfg.to_dict()` made JSON-serializable; `model.safetensors` is
`model.state_dict()` (including TL's `blocks.L.attn.mask` (bool, shape [0, 0]) and
`blocks.L.attn.IGNORE` (f32 scalar -inf) buffers, which carry no weights).

## Vocabulary
`vocab.txt`: line i is token i; token 0 is `<bos>`, tokens 1..63 are syllables (`ka`, `ki`, ...).

## Training
{STEPS} steps of AdamW (lr {LR}, weight decay {WEIGHT_DECAY}), batch {BATCH}, sequences of
{SEQ_LEN} tokens, loss = TL's `model(tokens, return_type="loss")` (mean next-token cross
entropy over all positions). Every sequence starts with `<bos>`; tokens are uniform over 1..63.
Each batch holds
- 7/8: random tokens in which a random sequence of random length 4..15 is immediately
  repeated at a random place (so the repeat is not at a fixed offset and position alone
  cannot predict it);
- 1/8: `<bos>` + 30 random tokens.

The test format (`<bos>` + 15 random + the same 15) is deliberately kept out of training:
a first attempt that included it learned a positional shortcut (layer-0 heads attending
14 positions back, no previous-token head, no layer-1 induction head) instead of induction.
The held-out results below therefore show that induction generalises to the test format.

## Results (held-out: {N_EVAL} prompts `<bos>` + 15 random + the same 15, seed {SEED + 1000})
| | first copy (predicting tokens 2..15) | second copy (predicting tokens 17..30) |
|---|---|---|
| at initialisation | {init_first:.3f} | {init_second:.3f} |
| after training | {first:.3f} | {second:.3f} |

log(63) = {np.log(63):.3f}: the first copy is unpredictable, the second copy is predicted by
induction. Training loss (mean of the last 100 steps, mixed batches): {np.mean(losses[-100:]):.3f}.

## Head scores
TL `transformer_lens.head_detector.detect_head(model, seqs, name, error_measure="mul")`,
averaged over the first {N_HEAD_EVAL} held-out prompts (detect_head's list form).
`detect_head` needs `model.to_tokens`, which needs a tokenizer; the script substitutes a
whitespace tokenizer over `vocab.txt` that adds nothing (the prompt already starts with `<bos>`).

Previous-token score (exclude_bos=False, exclude_current_token=False):

{table(prev)}

Induction score (exclude_bos=False, exclude_current_token=False):

{table(ind)}

Duplicate-token score (exclude_bos=False, exclude_current_token=False):

{table(avg['duplicate_token'])}

With exclude_bos=True (attention to `<bos>` removed from numerator and denominator):

previous-token

{table(avg_nobos['previous_token'])}

induction

{table(avg_nobos['induction'])}

Layer-0 previous-token head: **L0H{prev_head}**. Layer-1 induction heads (score > 0.3):
**{', '.join('L1H%d' % h for h in ind_heads) or 'none'}**.

Copying score (TL: eigenvalues of `model.W_E @ model.OV @ model.W_U`, `sum(l)/sum(|l|)`, real part):

{table(circ['copying'])}

K-composition (`model.all_composition_scores("K")`) of L0H{prev_head} into each layer-1 head:
{', '.join(f'L1H{h} {comp_k[h]:.3f}' for h in range(CFG['n_heads']))}.

`reference.safetensors` holds these quantities for the single test prompt `tokens`
(the first held-out prompt); see `scripts/FIXTURES.md`.
"""
    (OUT / "TRAINING.md").write_text(md)
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
