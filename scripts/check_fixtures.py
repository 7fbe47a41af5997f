#!/usr/bin/env python3
"""Check the committed fixtures: shapes, no NaN, and agreement with a plain-numpy
re-implementation of the forward pass and circuit quantities described in
/work/shared/notes/transformerlens.md (float64). Needs only numpy + safetensors.

    python3 scripts/check_fixtures.py

This is the same arithmetic the Rust side implements, written independently of TL, so it
also confirms that the notes describe what TL 3.9 actually computes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "tests" / "fixtures"
DEMO = REPO / "models" / "demo"
TOL = 2e-4
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL", msg)


def close(a, b, what, tol=TOL):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    check(a.shape == b.shape, f"{what}: shape {a.shape} vs {b.shape}")
    if a.shape != b.shape:
        return
    fin = np.isfinite(b)
    check(np.array_equal(np.isfinite(a), fin), f"{what}: finite masks differ")
    d = np.abs(a[fin] - b[fin]).max() if fin.any() else 0.0
    scale = max(1.0, np.abs(b[fin]).max() if fin.any() else 1.0)
    check(d <= tol * scale, f"{what}: max diff {d:.3e}")


def layer_norm(x, w, b, eps, kind):
    """Returns (output, hook_scale, hook_normalized). NB: TL's hook_normalized is x/scale
    BEFORE the LN weight and bias are applied; the LN output itself has no hook."""
    if kind is None:
        return x, None, None
    x = x - x.mean(-1, keepdims=True)
    scale = np.sqrt((x**2).mean(-1, keepdims=True) + eps)
    normalized = x / scale
    out = normalized * w + b if kind == "LN" else normalized
    return out, scale, normalized


def forward(sd, cfg, toks, result_hook=None):
    """Returns logits [pos, vocab] and a cache dict with TL's hook names (batch dim dropped)."""
    kind = cfg["normalization_type"]
    eps = cfg["eps"]
    attn_scale = cfg["attn_scale"] if cfg["use_attn_scale"] else 1.0
    n = len(toks)
    c = {}
    embed = sd["embed.W_E"][toks]
    pos = sd["pos_embed.W_pos"][:n]
    c["hook_embed"], c["hook_pos_embed"] = embed, pos
    short = cfg["positional_embedding_type"] == "shortformer"
    resid = embed if short else embed + pos
    for l in range(cfg["n_layers"]):
        p = f"blocks.{l}."
        c[p + "hook_resid_pre"] = resid
        h, scale, normed = layer_norm(resid, sd.get(p + "ln1.w"), sd.get(p + "ln1.b"), eps, kind)
        if kind is not None:
            c[p + "ln1.hook_scale"], c[p + "ln1.hook_normalized"] = scale, normed
        qk_in = h + pos if short else h
        q = np.einsum("pd,hde->phe", qk_in, sd[p + "attn.W_Q"]) + sd[p + "attn.b_Q"]
        k = np.einsum("pd,hde->phe", qk_in, sd[p + "attn.W_K"]) + sd[p + "attn.b_K"]
        v = np.einsum("pd,hde->phe", h, sd[p + "attn.W_V"]) + sd[p + "attn.b_V"]
        scores = np.einsum("qhe,khe->hqk", q, k) / attn_scale
        scores = np.where(np.triu(np.ones((n, n), bool), 1)[None], -np.inf, scores)
        pat = np.exp(scores - scores.max(-1, keepdims=True))
        pat = pat / pat.sum(-1, keepdims=True)
        z = np.einsum("hqk,khe->qhe", pat, v)
        result = np.einsum("qhe,hed->qhd", z, sd[p + "attn.W_O"])
        if result_hook is not None:
            result = result_hook(l, result)
        out = result.sum(1) + sd[p + "attn.b_O"]
        c.update({p + "attn.hook_q": q, p + "attn.hook_k": k, p + "attn.hook_v": v,
                  p + "attn.hook_attn_scores": scores, p + "attn.hook_pattern": pat,
                  p + "attn.hook_z": z, p + "attn.hook_result": result, p + "hook_attn_out": out})
        resid = resid + out
        c[p + "hook_resid_post"] = resid
    h, scale, normed = layer_norm(resid, sd.get("ln_final.w"), sd.get("ln_final.b"), eps, kind)
    if kind is not None:
        c["ln_final.hook_scale"], c["ln_final.hook_normalized"] = scale, normed
    c["unembed.hook_in"] = h
    logits = h @ sd["unembed.W_U"] + sd["unembed.b_U"]
    c["unembed.hook_out"] = logits
    return logits, c


def circuits(sd, cfg):
    L, H = cfg["n_layers"], cfg["n_heads"]
    WE, WU = sd["embed.W_E"], sd["unembed.W_U"]
    cop = np.zeros((L, H))
    eigs = np.zeros((L, H, cfg["d_head"]), complex)
    OV, QK = {}, {}
    for l in range(L):
        for h in range(H):
            WV, WO = sd[f"blocks.{l}.attn.W_V"][h], sd[f"blocks.{l}.attn.W_O"][h]
            WQ, WK = sd[f"blocks.{l}.attn.W_Q"][h], sd[f"blocks.{l}.attn.W_K"][h]
            # eigenvalues of (W_O W_U)(W_E W_V): the small d_head x d_head factor product
            e = np.linalg.eigvals((WO @ WU) @ (WE @ WV))
            cop[l, h] = (e.sum() / np.abs(e).sum()).real
            order = np.lexsort((-e.real, -e.imag, -np.abs(e)))
            eigs[l, h] = e[order]
            OV[l, h], QK[l, h] = WV @ WO, WQ @ WK.T
    comp = {m: np.zeros((L, H, L, H)) for m in "QKV"}
    for l1 in range(L):
        for h1 in range(H):
            for l2 in range(l1 + 1, L):
                for h2 in range(H):
                    left = OV[l1, h1]
                    for m, right in (("Q", QK[l2, h2]), ("K", QK[l2, h2].T), ("V", OV[l2, h2])):
                        comp[m][l1, h1, l2, h2] = np.linalg.norm(left @ right) / (
                            np.linalg.norm(left) * np.linalg.norm(right))
    return cop, eigs, comp


def head_scores(pattern_by_layer, toks, exclude_bos=False):
    n = len(toks)
    prev = np.eye(n, k=-1)
    dup = (toks[:, None] == toks[None, :]) & np.tril(np.ones((n, n), bool), -1)
    ind = np.zeros((n, n))
    ind[:, 1:] = dup[:, :-1]
    out = {}
    for name, P in (("previous_token", prev), ("duplicate_token", dup.astype(float)), ("induction", ind)):
        s = []
        for pat in pattern_by_layer:
            pat = pat.copy()
            if exclude_bos:
                pat[:, :, 0] = 0
            s.append((pat * P).sum((-1, -2)) / pat.sum((-1, -2)))
        out[name] = np.array(s)
    return out


def check_model(folder: Path, ref_name="reference.safetensors", model_name="model.safetensors",
                cfg_name="config.json", full=True):
    what = f"{folder.name}/{ref_name}"
    print("checking", what)
    sd = {k: v.astype(np.float64) if v.dtype == np.float32 else v
          for k, v in load_file(folder / model_name).items()}
    cfg = json.loads((folder / cfg_name).read_text())
    ref = load_file(folder / ref_name)
    for k, v in ref.items():
        if v.dtype.kind == "f":
            # masked attention scores are -inf by design; nothing else may be non-finite
            bad = ~np.isfinite(v)
            if k.endswith("hook_attn_scores"):
                check(np.all(np.isneginf(v[bad])), f"{what}:{k} has NaN/+inf")
            else:
                check(not bad.any(), f"{what}:{k} non-finite")
    toks = ref["tokens"].astype(np.int64)
    for i in range(toks.shape[0]):
        logits, cache = forward(sd, cfg, toks[i])
        close(logits, ref["logits"][i], f"{what} logits[{i}]")
        prefix = f"cache.{i}."
        keys = [k[len(prefix):] for k in ref if k.startswith(prefix)]
        if keys:
            check(set(keys) == set(cache), f"{what} cache {i} key set: {sorted(set(keys) ^ set(cache))}")
            for k in keys:
                mine = cache[k]
                close(mine, ref[prefix + k], f"{what} {prefix}{k}")
    if not full:
        return
    cop, eigs, comp = circuits(sd, cfg)
    close(cop, ref["copying"], f"{what} copying", tol=1e-3)
    close(eigs.real, ref["ov_eigenvalues.real"], f"{what} ov_eigenvalues.real", tol=1e-3)
    close(eigs.imag, ref["ov_eigenvalues.imag"], f"{what} ov_eigenvalues.imag", tol=1e-3)
    for m in "QKV":
        if f"composition.{m}" in ref:
            close(comp[m], ref[f"composition.{m}"], f"{what} composition.{m}", tol=1e-3)
    ht = ref["heads.tokens"].astype(np.int64)
    _, c = forward(sd, cfg, ht)
    pats = [c[f"blocks.{l}.attn.hook_pattern"] for l in range(cfg["n_layers"])]
    for prefix, ex in (("heads.", False), ("heads_exclude_bos.", True)):
        if prefix + "induction" in ref:
            for name, s in head_scores(pats, ht, exclude_bos=ex).items():
                close(s, ref[prefix + name], f"{what} {prefix}{name}", tol=1e-4)
    if "means.hook_result" in ref:
        L = cfg["n_layers"]
        res = [forward(sd, cfg, t)[1] for t in toks]
        means = np.stack([np.mean([r[f"blocks.{l}.attn.hook_result"] for r in res], axis=(0, 1))
                          for l in range(L)])
        close(means, ref["means.hook_result"], f"{what} means.hook_result")
        heads = [tuple(x) for x in ref["ablation.mean.heads"]]

        def mean_hook(l, result):
            result = result.copy()
            for hl, hh in heads:
                if hl == l:
                    result[:, hh] = means[l, hh]
            return result

        close(forward(sd, cfg, toks[0], mean_hook)[0], ref["ablation.mean.logits"], f"{what} ablation.mean")
        close(forward(sd, cfg, toks[0], lambda l, r: 0 * r)[0], ref["ablation.zero_all.logits"],
              f"{what} ablation.zero_all")


def main():
    for name in ("attn2_standard_noln", "attn2_shortformer_ln", "attn1_ln"):
        check_model(FIX / name)
    check_model(FIX / "attn1_ln", "reference_processed_all.safetensors",
                "processed_all.safetensors", "processed_all.config.json", full=False)
    check_model(FIX / "attn2_standard_noln", "reference_processed_cu_fvb.safetensors",
                "processed_cu_fvb.safetensors", "processed_cu_fvb.config.json", full=False)
    # fold_ln-only weights: same logits as the raw model
    f = FIX / "attn1_ln"
    ref = load_file(f / "reference.safetensors")
    sd = {k: v.astype(np.float64) for k, v in load_file(f / "processed_fold_ln.safetensors").items()
          if v.dtype == np.float32}
    cfg = json.loads((f / "processed_fold_ln.config.json").read_text())
    check(cfg["normalization_type"] == "LNPre", "processed_fold_ln config is not LNPre")
    close(forward(sd, cfg, ref["tokens"][0].astype(np.int64))[0], ref["logits"][0], "attn1_ln processed_fold_ln logits")
    if (DEMO / "reference.safetensors").exists():
        vocab = (DEMO / "vocab.txt").read_text().splitlines()
        cfg = json.loads((DEMO / "config.json").read_text())
        check(len(vocab) == cfg["d_vocab"], "demo vocab.txt has d_vocab lines")
        ref = load_file(DEMO / "reference.safetensors")
        sd = {k: v.astype(np.float64) if v.dtype == np.float32 else v
              for k, v in load_file(DEMO / "model.safetensors").items()}
        print("checking models/demo")
        close(forward(sd, cfg, ref["tokens"].astype(np.int64))[0], ref["logits"], "demo logits")
        # reuse the circuit / head checks with a tokens tensor of one prompt
        ref2 = dict(ref)
        ref2["tokens"] = ref["tokens"][None]
        ref2["logits"] = ref["logits"][None]
        from safetensors.numpy import save_file
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            save_file(ref2, str(d / "reference.safetensors"))
            (d / "model.safetensors").write_bytes((DEMO / "model.safetensors").read_bytes())
            (d / "config.json").write_text((DEMO / "config.json").read_text())
            check_model(d)
    print(f"{len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
