#!/usr/bin/env python3
"""Tokenizer fixtures (tests/fixtures/tokenizers/): two small Hugging Face tokenizers
trained here with the Python `tokenizers` package, and the ids its `encode` gives for a set
of texts, which the Rust tests compare `--text` against.

    /opt/tlenv/bin/python scripts/make_tokenizer_fixtures.py   # needs only `tokenizers`

- `bos_bpe.json`: byte-level BPE (GPT-2 style, 300 tokens) whose `TemplateProcessing`
  post-processor prepends `<|endoftext|>` (id 0), so `encode(text)` starts with BOS.
- `plain_wordpiece.json`: a BERT-style WordPiece without any post-processor: `encode(text)`
  adds nothing, and `[UNK]` stands for what it cannot spell.
- `expected.json`: for each tokenizer and text, `encode(text, add_special_tokens=True).ids`,
  `decode(ids)` and each token decoded alone (TL's `to_str_tokens`).

Deterministic; CI never runs this script.
"""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tokenizers"

CORPUS = [
    "The cat sat on the mat. The dog sat on the log.",
    "Mr Hendricks wrote the parser; Mr Hendricks also wrote the tests.",
    "Return the number of items in a container, or raise TypeError.",
    "def f(x):\n    return x + 1\n",
    "Tabs\tand  double  spaces, newlines\n\nand CRLF\r\n line ends.",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u2014 em dash, \u201cquotes\u201d, emoji \U0001f600",
] * 4

TEXTS = [
    "The cat sat on the mat.",
    "Mr Hendricks wrote the parser. Then Mr Hendricks",
    " leading space and trailing space ",
    "two\nlines\n",
    "tab\tseparated\tvalues",
    "caf\u00e9 \u2014 \u201cquoted\u201d \U0001f600",
    "zero\u200bwidth joiner",
    "back\\slash \"quotes\" 'single'",
    "<|endoftext|>explicit special token",
    "",
]


def bos_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]
    )
    return tok


def plain_wordpiece() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[UNK]", "[PAD]"], show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    expected = {"tokenizers_version": tokenizers.__version__, "tokenizers": {}}
    for name, tok in (("bos_bpe", bos_bpe()), ("plain_wordpiece", plain_wordpiece())):
        tok.save(str(OUT / f"{name}.json"))
        tok = Tokenizer.from_file(str(OUT / f"{name}.json"))  # what the Rust side reads
        cases = []
        for text in TEXTS:
            ids = tok.encode(text, add_special_tokens=True).ids
            cases.append({
                "text": text,
                "ids": ids,
                "ids_without_special": tok.encode(text, add_special_tokens=False).ids,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "str_tokens": [tok.decode([i], skip_special_tokens=False) for i in ids],
            })
        expected["tokenizers"][name] = {
            "vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "cases": cases,
        }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=True) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
