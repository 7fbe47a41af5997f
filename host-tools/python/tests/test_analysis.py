"""copying_scores, composition_scores, head_scores against TransformerLens's values
(FactoredMatrix eigenvalues in float32, all_composition_scores, head_detector)."""

import numpy as np
import pytest

import tinylens
from conftest import NAMES, blob, model, reference

# TL computes the eigenvalues in float32; tinylens in float64 from the same weights.
TOL = 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_copying_scores(name):
    got = tinylens.copying_scores(model(name))
    want = reference(name)["copying"]
    assert got.shape == want.shape and got.dtype == np.float64
    assert np.abs(got - want).max() <= TOL


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["Q", "K", "V"])
def test_composition_scores(name, kind):
    got = tinylens.composition_scores(model(name), kind)
    want = reference(name)[f"composition.{kind}"]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOL
    sub = tinylens.composition_scores(model(name), kind, subtract_baseline=True)
    later = np.zeros_like(got, dtype=bool)
    n = got.shape[0]
    for l1 in range(n):
        later[l1, :, l1 + 1 :, :] = True
    assert np.all(sub[~later] == 0)
    if later.any():
        baseline = (got - sub)[later]
        assert np.allclose(baseline, baseline[0]) and 0 < baseline[0] < 1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["previous_token", "duplicate_token", "induction"])
def test_head_scores(name, kind):
    ref = reference(name)
    got = tinylens.head_scores(model(name), ref["heads.tokens"], kind)
    want = ref[f"heads.{kind}"]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOL
    # TL's names and a path to the blob work as well.
    assert np.array_equal(tinylens.head_scores(blob(name), ref["heads.tokens"], kind + "_head"), got)


def test_head_scores_of_a_batch_are_the_mean_of_its_sequences():
    m = model("attn2_standard_noln")
    t = reference("attn2_standard_noln")["tokens"][8:11, :20]
    each = [tinylens.head_scores(m, row, "induction") for row in t]
    assert np.allclose(tinylens.head_scores(m, t, "induction"), np.mean(each, axis=0))
