"""Model.run / run_with_cache against TransformerLens's own outputs (the committed
fixtures): TL's shapes with the batch leading, float32, values within 1e-4 (f32 blobs)."""

import numpy as np
import pytest

import tinylens
from conftest import NAMES, TL_ONLY, assert_close, cache_entries, model, reference


@pytest.mark.parametrize("name", NAMES)
def test_logits_of_the_whole_batch_match_transformerlens(name):
    ref = reference(name)
    logits = model(name).run(ref["tokens"])
    assert logits.dtype == np.float32
    assert logits.shape == ref["logits"].shape == (16, 24, 50)
    assert_close(logits, ref["logits"], what=f"{name} logits")


@pytest.mark.parametrize("name", NAMES)
def test_cache_has_tls_names_shapes_and_values(name):
    ref = reference(name)
    tokens = ref["tokens"][[0, 8]]
    logits, cache = model(name).run_with_cache(tokens)
    for b, i in enumerate([0, 8]):
        want = cache_entries(ref, i)
        assert set(cache) == set(want) - set(TL_ONLY), f"{name}: hook names differ from TL's"
        for hook, v in want.items():
            if hook in TL_ONLY:
                continue
            got = cache[hook]
            assert got.dtype == np.float32, hook
            assert got.shape == (2,) + v.shape, f"{hook}: {got.shape} vs TL {(2,) + v.shape}"
            assert_close(got[b], v, what=f"{name} prompt {i} {hook}")
        assert_close(logits[b], want["unembed.hook_out"], what="logits vs unembed.hook_out")


def test_shapes_are_tls_with_batch_first():
    m = model("attn2_shortformer_ln")
    _, cache = m.run_with_cache(np.zeros((3, 7), dtype=np.int32))
    c = m.cfg
    nh, dh, dm = c["n_heads"], c["d_head"], c["d_model"]
    assert cache["hook_embed"].shape == (3, 7, dm)
    assert cache["blocks.0.ln1.hook_scale"].shape == (3, 7, 1)
    assert cache["blocks.1.attn.hook_q"].shape == (3, 7, nh, dh)
    assert cache["blocks.1.attn.hook_pattern"].shape == (3, nh, 7, 7)
    assert cache["blocks.1.attn.hook_attn_scores"].shape == (3, nh, 7, 7)
    assert cache["blocks.1.attn.hook_result"].shape == (3, 7, nh, dm)
    assert cache["ln_final.hook_normalized"].shape == (3, 7, dm)
    # TL's masking: future keys are 0 in the pattern and -inf in the scores.
    assert np.all(np.triu(cache["blocks.0.attn.hook_pattern"][0, 0], 1) == 0)
    assert np.all(np.isneginf(cache["blocks.0.attn.hook_attn_scores"][0, 0][np.triu_indices(7, 1)]))
    assert np.allclose(cache["blocks.0.attn.hook_pattern"].sum(-1), 1, atol=1e-5)


def test_one_dimensional_tokens_and_lists_get_a_batch_of_one():
    m = model("attn1_ln")
    ref = reference("attn1_ln")
    row = ref["tokens"][3]
    for tokens in (row, row.tolist(), row.astype(np.uint8), row[None, :]):
        logits = m.run(tokens)
        assert logits.shape == (1, 24, 50)
        assert_close(logits[0], ref["logits"][3], what="logits")
    assert np.array_equal(m(row), m.run(row))


def test_processed_weights_match_transformerlens_processing():
    # attn1_ln with TL's four processing steps (fold_ln, center_writing_weights,
    # center_unembed, fold_value_biases) vs TL's load_and_process_state_dict.
    flags = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)
    m = model("attn1_ln", **flags)
    assert m.processing == flags
    assert m.cfg["normalization_type"] == "LNPre"
    ref = reference("attn1_ln", "reference_processed_all.safetensors")
    logits, cache = m.run_with_cache(ref["tokens"][:1])
    assert_close(logits[0], ref["logits"][0], what="processed logits")
    for hook, v in cache_entries(ref, 0).items():
        if hook not in TL_ONLY:
            assert_close(cache[hook][0], v, what=f"processed {hook}")


def test_quantized_blob_stays_close_to_transformerlens():
    ref = reference("attn2_standard_noln")
    logits = model("attn2_standard_noln", "int8").run(ref["tokens"])
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    rp = ref["logits"] - np.log(np.exp(ref["logits"]).sum(-1, keepdims=True))
    assert np.abs(lp - rp).max() < 0.5
    assert (logits.argmax(-1) == ref["logits"].argmax(-1)).mean() > 0.9
