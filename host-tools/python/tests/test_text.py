"""Text in: a blob converted with a tokenizer (as `tinylens convert --tokenizer`) takes
text wherever it takes tokens, with the ids of the Python `tokenizers` package (the
committed tests/fixtures/tokenizers/expected.json)."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

import tinylens
from conftest import REPO, model, run_cli

TOK = REPO / "tests" / "fixtures" / "tokenizers"
EXPECTED = json.loads((TOK / "expected.json").read_text())["tokenizers"]


def random_tl_model(d_vocab: int, seed: int = 0):
    """A one-layer attention-only TL state_dict and cfg (seeded random weights)."""
    rng = np.random.default_rng(seed)
    dm, nh, dh, n_ctx = 16, 2, 8, 64
    r = lambda *shape: (rng.standard_normal(shape) * 0.2).astype(np.float32)
    sd = {
        "embed.W_E": r(d_vocab, dm), "pos_embed.W_pos": r(n_ctx, dm),
        "blocks.0.ln1.w": 1 + r(dm), "blocks.0.ln1.b": r(dm),
        "blocks.0.attn.W_Q": r(nh, dm, dh), "blocks.0.attn.W_K": r(nh, dm, dh),
        "blocks.0.attn.W_V": r(nh, dm, dh), "blocks.0.attn.W_O": r(nh, dh, dm),
        "blocks.0.attn.b_Q": r(nh, dh), "blocks.0.attn.b_K": r(nh, dh),
        "blocks.0.attn.b_V": r(nh, dh), "blocks.0.attn.b_O": r(dm),
        "ln_final.w": 1 + r(dm), "ln_final.b": r(dm),
        "unembed.W_U": r(dm, d_vocab), "unembed.b_U": r(d_vocab),
    }
    cfg = dict(n_layers=1, d_model=dm, n_heads=nh, d_head=dh, d_vocab=d_vocab, n_ctx=n_ctx,
               attn_only=True, normalization_type="LN", act_fn=None, dtype="torch.float32")
    return sd, cfg


@pytest.fixture(scope="module", params=["bos_bpe", "plain_wordpiece"])
def text_model(request, tmp_path_factory):
    name = request.param
    sd, cfg = random_tl_model(EXPECTED[name]["vocab_size"] + 4)
    blob = tinylens.convert(sd, cfg, quant="f32", tokenizer=TOK / f"{name}.json")
    # The same bytes as `tinylens convert --tokenizer` on TL's files.
    d = tmp_path_factory.mktemp(name)
    save_file(sd, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(cfg))
    run_cli("convert", "--weights", d / "model.safetensors", "--config", d / "config.json",
            "--quant", "f32", "--tokenizer", TOK / f"{name}.json", "-o", d / "cli.tlm")
    assert blob == (d / "cli.tlm").read_bytes()
    return name, tinylens.Model(blob)


def test_text_gives_the_tokenizers_ids(text_model):
    name, m = text_model
    assert m.has_tokenizer and not model("attn1_ln").has_tokenizer
    for case in EXPECTED[name]["cases"]:
        if not case["ids"] or len(case["ids"]) > m.cfg["n_ctx"]:
            continue
        ids = m.to_tokens(case["text"])
        assert ids.dtype == np.int64 and ids[0].tolist() == case["ids"], case["text"]
        assert m.to_str_tokens(case["text"]) == case["str_tokens"]
        assert m.to_string(ids[0]) == case["decoded"]


def test_every_method_takes_text(text_model):
    name, m = text_model
    text = EXPECTED[name]["cases"][0]["text"]
    ids = m.to_tokens(text)
    logits, cache = m.run_with_cache(text)
    logits2, cache2 = m.run_with_cache(ids)
    assert np.array_equal(logits, logits2) and cache.keys() == cache2.keys()
    assert np.array_equal(m.run([text, text]), m.run(np.repeat(ids, 2, axis=0)))
    assert m.trace(text) == m.trace(ids)
    assert np.array_equal(tinylens.head_scores(m, text, "previous_token"),
                          tinylens.head_scores(m, ids, "previous_token"))


def test_bos_and_errors(text_model):
    name, m = text_model
    if name == "bos_bpe":
        ids = m.to_tokens("cat", prepend_bos=True)[0].tolist()
        assert ids[0] == 0 and ids.count(0) == 1  # exactly one BOS, as TL
    else:
        with pytest.raises(tinylens.Error, match="no BOS token"):
            m.to_tokens("cat", prepend_bos=True)
    with pytest.raises(tinylens.Error, match="different lengths"):
        m.to_tokens(["cat", "the cat sat on the mat"])
    with pytest.raises(tinylens.Error, match="exceed the model's context"):
        m.run("cat " * 200)
    with pytest.raises(tinylens.Error, match="tokenizer"):
        model("attn1_ln").run("some text")
    sd, cfg = random_tl_model(EXPECTED[name]["vocab_size"] - 10)
    with pytest.raises(tinylens.Error, match="d_vocab"):
        tinylens.convert(sd, cfg, tokenizer=TOK / f"{name}.json")
    with pytest.raises(tinylens.Error, match="not a tokenizer.json"):
        tinylens.convert(sd, cfg, tokenizer=b"{}")
