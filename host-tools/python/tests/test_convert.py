"""tinylens.convert: the same blob bytes as `tinylens convert` for the same weights."""

import json

import numpy as np
import pytest

import tinylens
from conftest import FIXTURES, run_cli, state_dict, tl_config

CASES = [
    ("attn2_standard_noln", "int8", {}),
    ("attn2_shortformer_ln", "int4", {}),
    ("attn1_ln", "f16", {"fold_ln": True, "center_writing_weights": True,
                         "center_unembed": True, "fold_value_biases": True}),
]


@pytest.mark.parametrize("name, quant, flags", CASES)
def test_same_blob_as_the_cli(tmp_path, name, quant, flags):
    out = tmp_path / "cli.tlm"
    args = ["convert", "--weights", FIXTURES / name / "model.safetensors",
            "--config", FIXTURES / name / "config.json", "--quant", quant, "-o", out]
    args += ["--" + k.replace("_", "-") for k, v in flags.items() if v]
    run_cli(*args)
    ours = tinylens.convert(state_dict(name), tl_config(name), quant=quant, **flags)
    assert ours == out.read_bytes()
    # The config as a JSON string or a file path, and output to a file.
    path = tinylens.convert(state_dict(name), FIXTURES / name / "config.json", quant=quant,
                            output=tmp_path / "py.tlm", **flags)
    assert path.read_bytes() == ours
    assert tinylens.convert(state_dict(name), json.dumps(tl_config(name)), quant=quant, **flags) == ours


def test_state_dict_dtypes_are_converted_as_the_cli_does():
    sd = state_dict("attn1_ln")
    f32 = tinylens.convert(sd, tl_config("attn1_ln"), quant="f32")
    f64 = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in sd.items()}
    assert tinylens.convert(f64, tl_config("attn1_ln"), quant="f32") == f32
    # Non-contiguous and big-endian arrays are read by value.
    odd = {k: (np.asfortranarray(v).astype(">f4") if v.dtype == np.float32 else v) for k, v in sd.items()}
    assert tinylens.convert(odd, tl_config("attn1_ln"), quant="f32") == f32


def test_vocab_and_embed_quant():
    vocab = [f"tok{i}" for i in range(50)]
    m = tinylens.Model(
        tinylens.convert(state_dict("attn1_ln"), tl_config("attn1_ln"), quant="int4",
                         embed_quant="f16", vocab=vocab)
    )
    assert m.vocab == vocab
    assert m.storage["embed.W_E"] == "f16" and m.storage["blocks.0.attn.W_V"] == "int4"


def test_a_live_object_with_state_dict_and_cfg():
    class Hooked:  # the two attributes convert() reads from a HookedTransformer
        cfg = tl_config("attn1_ln")

        def state_dict(self):
            return state_dict("attn1_ln")

    assert tinylens.convert(Hooked(), quant="int8") == tinylens.convert(
        state_dict("attn1_ln"), tl_config("attn1_ln"), quant="int8"
    )
