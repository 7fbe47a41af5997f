#!/usr/bin/env python3
"""Build the TransformerLens reference fixtures under tests/fixtures/.

    pip install transformer-lens==3.9.0 safetensors
    python3 scripts/make_fixtures.py

Deterministic (fixed seeds, CPU, 2 threads). Builds three small attention-only
HookedTransformers from a HookedTransformerConfig (never from the hub), trains each
briefly on an induction task (random tokens repeated twice) so that weights and biases
are not at their initial values, and writes per model:

    tests/fixtures/<name>/model.safetensors      model.state_dict()
    tests/fixtures/<name>/config.json            cfg.to_dict(), JSON-serializable
    tests/fixtures/<name>/reference.safetensors  logits, caches, circuit and head scores,
                                                 mean/zero ablation references

and, for attn1_ln (all four processing steps) and attn2_standard_noln (center_unembed +
fold_value_biases only), TL's weight-processing references. See scripts/FIXTURES.md for
every file and key. CI never runs this script; its outputs are committed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tl_ref  # noqa: E402
from tl_ref import HookedTransformer  # noqa: E402

OUT = tl_ref.REPO / "tests" / "fixtures"

COMMON = dict(d_model=32, n_heads=4, d_head=8, d_vocab=50, n_ctx=24)
MODELS = [
    # name, seed, config
    ("attn2_standard_noln", 1, dict(n_layers=2, normalization_type=None, positional_embedding_type="standard")),
    ("attn2_shortformer_ln", 2, dict(n_layers=2, normalization_type="LN", positional_embedding_type="shortformer")),
    ("attn1_ln", 3, dict(n_layers=1, normalization_type="LN", positional_embedding_type="standard")),
]
TRAIN_STEPS = 1500
TRAIN_BATCH = 64
TRAIN_LR = 1e-3
PROMPT_SEED = 1234
N_RANDOM, N_REPEATED = 8, 8
CACHE_PROMPTS = (0, 8)
ABLATE_FIRST = (0, 1)  # (layer, head); the second is (n_layers - 1, 2)

PROCESSING_FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


def repeated_batch(gen, batch, n_ctx, d_vocab):
    half = torch.randint(0, d_vocab, (batch, n_ctx // 2), generator=gen)
    return torch.cat([half, half], dim=1)


def make_prompts(n_ctx, d_vocab):
    gen = torch.Generator().manual_seed(PROMPT_SEED)
    rand = torch.randint(0, d_vocab, (N_RANDOM, n_ctx), generator=gen)
    rep = repeated_batch(gen, N_REPEATED, n_ctx, d_vocab)
    return torch.cat([rand, rep], dim=0)  # [16, n_ctx], int64


@torch.no_grad()
def forward_refs(model: HookedTransformer, tokens: torch.Tensor, cache_prompts) -> dict:
    """logits for all prompts and the full run_with_cache contents for some, batch dim dropped."""
    model.set_use_attn_result(True)
    logits, cache = model.run_with_cache(tokens)
    out = {"tokens": tokens.to(torch.int32), "logits": logits}
    for i in cache_prompts:
        for name, value in cache.items():
            out[f"cache.{i}.{name}"] = value[i]
    return out, cache


@torch.no_grad()
def ablation_refs(model: HookedTransformer, tokens: torch.Tensor, cache) -> dict:
    L, H = model.cfg.n_layers, model.cfg.n_heads
    means = torch.stack(
        [cache[f"blocks.{l}.attn.hook_result"].mean(dim=(0, 1)) for l in range(L)]
    )  # [L, H, d_model]
    heads = [ABLATE_FIRST, (L - 1, 2)]

    def mean_hook(layer):
        def hook(result, hook):
            for l, h in heads:
                if l == layer:
                    result[:, :, h, :] = means[l, h]
            return result

        return hook

    def zero_hook(result, hook):
        return torch.zeros_like(result)

    p0 = tokens[0:1]
    layers = sorted({l for l, _ in heads})
    mean_logits = model.run_with_hooks(
        p0, fwd_hooks=[(f"blocks.{l}.attn.hook_result", mean_hook(l)) for l in layers]
    )[0]
    zero_logits = model.run_with_hooks(
        p0, fwd_hooks=[(f"blocks.{l}.attn.hook_result", zero_hook) for l in range(L)]
    )[0]
    return {
        "means.hook_result": means,
        "ablation.mean.heads": torch.tensor(heads, dtype=torch.int32),
        "ablation.mean.logits": mean_logits,
        "ablation.zero_all.logits": zero_logits,
    }


def build(seed, spec) -> HookedTransformer:
    cfg = tl_ref.make_cfg(seed, **COMMON, **spec)
    return HookedTransformer(cfg)


def processed_model(seed, spec, raw_sd, **flags) -> HookedTransformer:
    """A fresh model of the same (unprocessed) config, loaded through TL's
    load_and_process_state_dict. TL itself switches normalization_type LN -> LNPre
    (and swaps the LN modules) when fold_ln is applied."""
    m = build(seed, spec)
    sd = {k: v.clone() for k, v in raw_sd.items()}
    m.load_and_process_state_dict(sd, refactor_factored_attn_matrices=False, **flags)
    m.eval()
    return m


def max_logprob_diff(a, b):
    return (a.log_softmax(-1) - b.log_softmax(-1)).abs().max().item()


def write_processed(folder, tag, model, tokens, raw_logits):
    cfg_dict = tl_ref.cfg_json(model.cfg)  # before use_attn_result is switched on
    tl_ref.save_tensors(folder / f"processed_{tag}.safetensors", tl_ref.state_dict_tensors(model))
    tl_ref.write_json(folder / f"processed_{tag}.config.json", cfg_dict)
    refs, _ = forward_refs(model, tokens, cache_prompts=(0,))
    d_lp = max_logprob_diff(refs["logits"], raw_logits)
    d_l = (refs["logits"] - raw_logits).abs().max().item()
    print(f"  processed_{tag}: max |logit diff| {d_l:.2e}, max |log-prob diff| {d_lp:.2e}")
    assert d_lp < 1e-4, f"TL processing {tag} changed the log-probs by {d_lp}"
    return refs, d_l, d_lp


def main():
    tl_ref.setup_torch()
    versions = tl_ref.check_versions()
    print("versions:", versions)
    t0 = time.time()
    manifest = {
        "generator": "scripts/make_fixtures.py",
        "versions": versions,
        "train": {"steps": TRAIN_STEPS, "batch": TRAIN_BATCH, "lr": TRAIN_LR, "optimizer": "Adam"},
        "prompt_seed": PROMPT_SEED,
        "detect_head": {"error_measure": "mul", "exclude_bos": False, "exclude_current_token": False},
        "models": {},
    }

    for name, seed, spec in MODELS:
        print(f"== {name}")
        folder = OUT / name
        folder.mkdir(parents=True, exist_ok=True)
        model = build(seed, spec)
        cfg = model.cfg
        gen = torch.Generator().manual_seed(10_000 + seed)
        losses = tl_ref.train(
            model,
            lambda: repeated_batch(gen, TRAIN_BATCH, cfg.n_ctx, cfg.d_vocab),
            TRAIN_STEPS,
            TRAIN_LR,
        )

        # -- weights and config (config saved with use_attn_result as trained: False)
        raw_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        tl_ref.save_tensors(folder / "model.safetensors", tl_ref.state_dict_tensors(model))
        tl_ref.write_json(folder / "config.json", tl_ref.cfg_json(cfg))

        # -- forward references
        tokens = make_prompts(cfg.n_ctx, cfg.d_vocab)
        ref, cache = forward_refs(model, tokens, CACHE_PROMPTS)
        ref.update(tl_ref.circuit_refs(model))

        # detect_head asserts 1 < seq_len < n_ctx, so a full-length prompt is refused:
        # use prompt 8 without its last token.
        head_prompt = tokens[8, : cfg.n_ctx - 1]
        vocab = [str(i) for i in range(cfg.d_vocab)]
        for k, v in tl_ref.head_scores(model, [head_prompt.tolist()], vocab).items():
            ref[f"heads.{k}"] = v
        ref["heads.tokens"] = head_prompt.to(torch.int32)

        ref.update(ablation_refs(model, tokens, cache))
        tl_ref.save_tensors(folder / "reference.safetensors", ref)

        entry = {
            "seed": seed,
            "train_loss_first_50_mean": float(sum(losses[:50]) / 50),
            "train_loss_last_50_mean": float(sum(losses[-50:]) / 50),
            "heads.induction": ref["heads.induction"].tolist(),
            "heads.previous_token": ref["heads.previous_token"].tolist(),
            "copying": ref["copying"].tolist(),
        }

        # -- TL weight processing references
        raw_logits = ref["logits"]
        if name == "attn1_ln":
            m = processed_model(
                seed, spec, raw_sd,
                fold_ln=True, center_writing_weights=False, center_unembed=False, fold_value_biases=False,
            )
            _, d_l, _ = write_processed(folder, "fold_ln", m, tokens, raw_logits)
            assert d_l < 1e-4, "fold_ln alone should leave the logits unchanged"
            m = processed_model(
                seed, spec, raw_sd,
                fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True,
            )
            refs, _, _ = write_processed(folder, "all", m, tokens, raw_logits)
            tl_ref.save_tensors(folder / "reference_processed_all.safetensors", refs)
            entry["processed"] = {
                "processed_fold_ln": dict(fold_ln=True, center_writing_weights=False, center_unembed=False, fold_value_biases=False),
                "processed_all": dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True),
            }
        elif name == "attn2_standard_noln":
            # normalization_type=None: TL would skip fold_ln (with a warning) and
            # center_writing_weights (silently); only these two apply.
            m = processed_model(
                seed, spec, raw_sd,
                fold_ln=False, center_writing_weights=False, center_unembed=True, fold_value_biases=True,
            )
            refs, _, _ = write_processed(folder, "cu_fvb", m, tokens, raw_logits)
            tl_ref.save_tensors(folder / "reference_processed_cu_fvb.safetensors", refs)
            entry["processed"] = {
                "processed_cu_fvb": dict(fold_ln=False, center_writing_weights=False, center_unembed=True, fold_value_biases=True),
            }
            # What TL does if asked for everything on a model without LN (not saved):
            m = processed_model(
                seed, spec, raw_sd,
                fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True,
            )
            same = all(
                torch.equal(m.state_dict()[k], refs_k)
                for k, refs_k in processed_model(
                    seed, spec, raw_sd,
                    fold_ln=False, center_writing_weights=False, center_unembed=True, fold_value_biases=True,
                ).state_dict().items()
            )
            entry["all_flags_on_noln_equals_cu_fvb"] = bool(same)
            print(f"  all four flags on a no-LN model == center_unembed+fold_value_biases only: {same}")
        elif name == "attn2_shortformer_ln":
            # Diagnostic only (nothing saved): load_and_process_state_dict does NOT refuse
            # fold_ln / center_writing_weights on a shortformer model (only from_pretrained
            # does); measure how far the result is from the raw model.
            diag = {}
            for tag, flags in {
                "fold_ln": dict(fold_ln=True, center_writing_weights=False, center_unembed=False, fold_value_biases=False),
                "center_writing_weights": dict(fold_ln=False, center_writing_weights=True, center_unembed=False, fold_value_biases=False),
                "center_unembed": dict(fold_ln=False, center_writing_weights=False, center_unembed=True, fold_value_biases=False),
                "fold_value_biases": dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=True),
            }.items():
                m = processed_model(seed, spec, raw_sd, **flags)
                with torch.no_grad():
                    lg = m(tokens)
                diag[tag] = max_logprob_diff(lg, raw_logits)
                print(f"  shortformer + load_and_process_state_dict({tag}): max |log-prob diff| {diag[tag]:.3e}")
            entry["shortformer_processing_max_logprob_diff"] = diag

        manifest["models"][name] = entry
        print(
            f"  loss {entry['train_loss_first_50_mean']:.3f} -> {entry['train_loss_last_50_mean']:.3f}; "
            f"{time.time() - t0:.1f}s"
        )

    tl_ref.write_json(OUT / "manifest.json", manifest)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"done in {time.time() - t0:.1f}s; tests/fixtures total {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
