#!/usr/bin/env python3
"""The benchmark model ladder, made on the fly from random-init TransformerLens configs.

    python3 scripts/make_model_ladder.py OUT_DIR [--models demo,mid,attn-only-2l]

Writes OUT_DIR/NAME/model.safetensors and OUT_DIR/NAME/config.json for each model
(TransformerLens 3.9 ``HookedTransformer(HookedTransformerConfig(..., seed=0))``, the
state dict saved as contiguous f32 tensors, the config as ``cfg.to_dict()`` with the
dtype as a string), ready for ``tinylens convert``. Nothing here is committed: the
attn-only-2l shape is 210 MB of f32.

- ``demo``: the shape of the bundled demo model (models/demo/config.json), random weights;
- ``mid``: 2 layers x 8 heads x 32, d_model 256, vocab 5000, n_ctx 256, LN (3.2M params);
- ``attn-only-2l``: TransformerLens's attn-only-2l shape: d_model 512, 8 x 64, vocab
  48262, n_ctx 2048, LN, shortformer positions (52.6M params).
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def demo_config() -> dict:
    raw = json.loads((REPO / "models/demo/config.json").read_text())
    keys = ["n_layers", "d_model", "d_head", "n_heads", "d_vocab", "d_vocab_out", "n_ctx",
            "normalization_type", "positional_embedding_type", "eps"]
    return {k: raw[k] for k in keys if raw.get(k) is not None}


LADDER = {
    "demo": demo_config,
    "mid": lambda: dict(n_layers=2, d_model=256, d_head=32, n_heads=8, d_vocab=5000,
                        n_ctx=256, normalization_type="LN",
                        positional_embedding_type="standard"),
    "attn-only-2l": lambda: dict(n_layers=2, d_model=512, d_head=64, n_heads=8,
                                 d_vocab=48262, n_ctx=2048, normalization_type="LN",
                                 positional_embedding_type="shortformer"),
}


def make(name: str, out: Path) -> Path:
    kw = LADDER[name]()
    kw.update(attn_only=True, act_fn=None, seed=0, device="cpu", dtype=torch.float32)
    model = HookedTransformer(HookedTransformerConfig(**kw))
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / "model.safetensors"))
    cfg = model.cfg.to_dict()
    cfg = {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in cfg.items()}
    (d / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--models", default=",".join(LADDER))
    args = ap.parse_args()
    for name in [m for m in args.models.split(",") if m]:
        if name not in LADDER:
            raise SystemExit(f"unknown model {name!r} (known: {', '.join(LADDER)})")
        print(make(name, args.out))


if __name__ == "__main__":
    main()
