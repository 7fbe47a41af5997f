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


def test_composition_scores_and_baseline_are_the_clis(tmp_path):
    import json

    from conftest import run_cli

    m = model("attn2_standard_noln", "int8")
    m.save(tmp_path / "m.tlm")
    report = json.loads(run_cli("circuits", tmp_path / "m.tlm", "--json").stdout)
    scores = {}
    for kind in ("Q", "K", "V"):
        scores[kind] = tinylens.composition_scores(m, kind)
        assert np.array_equal(scores[kind], np.asarray(report["composition"][kind]))
    sub = tinylens.composition_scores(m, "K", subtract_baseline=True)
    assert np.array_equal(sub, np.asarray(report["composition_baseline_subtracted"]["K"]))
    later = np.zeros_like(sub, dtype=bool)
    later[0, :, 1:, :] = True
    assert np.allclose((scores["K"] - sub)[later], report["composition_baseline"]["mean"])
    assert np.all(sub[~later] == 0)
    assert np.array_equal(tinylens.copying_scores(m), np.asarray(report["copying"]))


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
