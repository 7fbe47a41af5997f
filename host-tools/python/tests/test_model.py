"""tinylens.Model: loading, cfg in TL's to_dict() terms, storage, RAM, hook names."""

import numpy as np
import pytest

import tinylens
from conftest import DEMO, TL_ONLY, blob, cache_entries, model, reference, tl_config

TL_KEYS = [
    "n_layers", "d_model", "d_head", "n_heads", "d_vocab", "d_vocab_out", "n_ctx",
    "attn_only", "normalization_type", "positional_embedding_type", "eps", "attn_scale",
]


@pytest.mark.parametrize("name", ["attn2_standard_noln", "attn2_shortformer_ln", "attn1_ln"])
def test_cfg_has_the_tl_config_values(name):
    m = model(name)
    want = tl_config(name)
    for k in TL_KEYS:
        assert m.cfg[k] == pytest.approx(want[k]) if isinstance(want[k], float) else m.cfg[k] == want[k], k
    assert m.cfg["use_attn_scale"] is True


def test_model_loads_from_a_path_and_from_bytes(tmp_path):
    data = blob("attn1_ln", "int8")
    p = tmp_path / "m.tlm"
    tinylens.Model(data).save(p)
    assert p.read_bytes() == data
    for src in (p, str(p), data, bytearray(data), memoryview(data)):
        m = tinylens.Model(src)
        assert m.to_bytes() == data
        assert m.checksum == tinylens.Model(data).checksum
    assert "1 layers x 4 heads" in repr(tinylens.Model(data))


def test_storage_and_ram_bytes():
    m = model("attn2_shortformer_ln", "int4")
    assert m.storage["blocks.0.attn.W_Q"] == "int4"
    assert m.storage["embed.W_E"] == "int8"  # int4 keeps the embeddings in int8, as the CLI
    assert m.storage["unembed.b_U"] == "f32"
    c = m.cfg
    # The KV cache alone: 2 (K, V) * layers * n_ctx * heads * d_head floats.
    assert m.ram_bytes >= 4 * 2 * c["n_layers"] * c["n_ctx"] * c["n_heads"] * c["d_head"]
    assert model("attn2_shortformer_ln", "f32").ram_bytes == m.ram_bytes


def test_hook_names_are_tls_cache_keys():
    for name in ("attn2_standard_noln", "attn1_ln"):
        want = set(cache_entries(reference(name), 0)) - set(TL_ONLY)
        names = model(name).hook_names()
        assert set(names) == want and len(names) == len(want)
        assert names[0] == "hook_embed" and names[-1].startswith(("blocks.", "ln_final"))


def test_demo_blob_with_vocab():
    m = tinylens.Model(DEMO / "demo-int8.tlm")
    assert m.vocab is not None and len(m.vocab) == m.cfg["d_vocab"]
    assert m.processing == {
        "fold_ln": m.processing["fold_ln"],
        "center_writing_weights": m.processing["center_writing_weights"],
        "center_unembed": m.processing["center_unembed"],
        "fold_value_biases": m.processing["fold_value_biases"],
    }
    assert model("attn1_ln").vocab is None


def test_state_dict_is_the_dequantized_tl_state_dict():
    from conftest import state_dict

    sd = model("attn1_ln", "f32").state_dict()
    raw = state_dict("attn1_ln")
    for k, v in sd.items():
        assert v.dtype == np.float32
        assert v.shape == raw[k].shape, k
        assert np.array_equal(v, raw[k]), k
    assert set(sd) == {k for k in raw if not k.endswith(("attn.mask", "attn.IGNORE"))}
