"""run_with_hooks: the CLI's interventions (ablation, frozen patterns, patching) against
TransformerLens's run_with_hooks references, and names_filter as TL's."""

import numpy as np
import pytest

import tinylens
from conftest import NAMES, assert_close, model, reference


@pytest.mark.parametrize("name", NAMES)
def test_mean_ablation_matches_transformerlens(name):
    ref = reference(name)
    heads = [tuple(int(x) for x in h) for h in ref["ablation.mean.heads"]]
    logits = model(name).run_with_hooks(
        ref["tokens"][0],
        ablate={h: "mean" for h in heads},
        means=ref["means.hook_result"],
    )
    assert_close(logits[0], ref["ablation.mean.logits"], what="mean ablation")


@pytest.mark.parametrize("name", NAMES)
def test_zero_ablation_of_every_head_matches_transformerlens(name):
    ref = reference(name)
    m = model(name)
    heads = [(l, h) for l in range(m.cfg["n_layers"]) for h in range(m.cfg["n_heads"])]
    logits = m.run_with_hooks(ref["tokens"][0], ablate=heads)
    assert_close(logits[0], ref["ablation.zero_all.logits"], what="zero ablation")
    # The CLI's strings mean the same.
    cli_style = [f"{l}.{h}" for l, h in heads]
    assert np.array_equal(m.run_with_hooks(ref["tokens"][0], ablate=cli_style), logits)


def test_frozen_patterns_and_patches_from_a_batch():
    m = model("attn2_shortformer_ln")
    ref = reference("attn2_shortformer_ln")
    clean, corrupt = ref["tokens"][[8, 9]], ref["tokens"][[0, 1]]
    clean_logits, clean_cache = m.run_with_cache(clean)
    # The clean run's own patterns, imposed on it, change nothing.
    same = m.run_with_hooks(clean, freeze_patterns=clean_cache)
    assert_close(same, clean_logits, tol=1e-5, what="frozen own patterns")
    # Patching every layer's residual stream input of the last layer with the clean
    # run's makes the corrupted run produce the clean logits.
    hook = "blocks.1.hook_resid_pre"
    patched, cache = m.run_with_hooks(
        corrupt, patch={hook: clean_cache[hook]}, return_cache=True, names_filter=hook
    )
    assert_close(patched, clean_logits, tol=1e-5, what="patched resid_pre")
    assert np.array_equal(cache[hook], clean_cache[hook])
    # Frozen patterns from another run change the logits.
    other = m.run_with_hooks(corrupt, freeze_patterns=clean_cache)
    assert np.abs(other - m.run(corrupt)).max() > 1e-3
    # An unbatched patch applies to every row.
    one = m.run_with_hooks(corrupt, patch={hook: clean_cache[hook][0]})
    assert_close(one[0], clean_logits[0], tol=1e-5, what="broadcast patch")
    assert_close(one[1], clean_logits[0], tol=1e-5, what="broadcast patch")


@pytest.mark.parametrize(
    "names_filter, want",
    [
        ("blocks.0.attn.hook_z", {"blocks.0.attn.hook_z"}),
        (["hook_embed", "blocks.1.attn.hook_pattern"], {"hook_embed", "blocks.1.attn.hook_pattern"}),
        (lambda n: n.endswith("hook_pattern"), {"blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"}),
        ("blocks.*.attn.hook_q", {"blocks.0.attn.hook_q", "blocks.1.attn.hook_q"}),
        (lambda n: False, set()),
    ],
)
def test_names_filter_as_transformerlens(names_filter, want):
    m = model("attn2_standard_noln")
    ref = reference("attn2_standard_noln")
    logits, cache = m.run_with_cache(ref["tokens"][:2], names_filter=names_filter)
    assert set(cache) == want
    _, full = m.run_with_cache(ref["tokens"][:2])
    for k in want:
        assert np.array_equal(cache[k], full[k]), k
    assert np.array_equal(logits, m.run(ref["tokens"][:2]))
