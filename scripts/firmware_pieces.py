#!/usr/bin/env python3
"""The device step piece by piece: joins a `record=pieces` run's icount marks (one at
every hook point, see `tinylens_fw::Pieces`) with its log and prints instructions per
token per piece. Called by scripts/bench_firmware.sh.

usage: firmware_pieces.py ICOUNT LOG PLAIN_TSV ROOT [JSON_OUT]
  ICOUNT     the plugin's marks of the pieces run
  LOG        the decoded defmt log of the pieces run (`pieces [...]` and `pos ...` lines)
  PLAIN_TSV  icount-per-token.sh --tsv of the same firmware with record=0 (the plain
             step: each step's markers and hook checks are the difference to it)
"""
import json
import re
import sys

icount, log, plain, root = sys.argv[1:5]
json_out = sys.argv[5] if len(sys.argv) > 5 else ""
cfg = json.load(open(f"{root}/models/demo/config.json"))
L, H, D, dh, V = (cfg[k] for k in ["n_layers", "n_heads", "d_model", "d_head", "d_vocab_out"])
NAMES = ["Embed", "PosEmbed", "ResidPre", "Ln1Scale", "Ln1Normalized", "Q", "K", "V", "AttnScores",
         "Pattern", "Z", "Result", "AttnOut", "ResidPost", "LnFinalScale", "LnFinalNormalized", "Logits"]

marks = [int(line.split()[2]) for line in open(icount) if line.startswith("mark ")]
steps = []  # (kind, pos, [points])
pending = None
for line in open(log):
    m = re.search(r"pieces \[([0-9, ]*)\]", line)
    if m:
        pending = [int(x) for x in m.group(1).replace(" ", "").split(",") if x]
        continue
    m = re.search(r"pos (\d+) (prompt|generated) token", line)
    if m and pending is not None:
        steps.append((m.group(2), int(m.group(1)), pending))
        pending = None
plain_of = {int(r[0]): int(r[4]) for r in (l.split("\t") for l in open(plain).read().splitlines() if l)}
if not steps or len(marks) != sum(len(p) + 2 for _, _, p in steps):
    sys.exit(f"firmware_pieces.py: {len(steps)} steps, {len(marks)} marks: the log and the marks do not match")

EMB = "embeddings (W_E, W_pos rows, their sum)"
LN = "LayerNorm (mean, variance, scale)"
QKV = "LN weight/bias, input quantization, W_V W_K W_Q"
SCORES = "scores q·k (+ adding the previous head's result)"
SOFT = "softmax (expf)"
WSUM = "weighted sum of values"
WO = "z quantization + W_O (16-column rows)"
BO = "last head's result, b_O, residual add"
UNEMB = "LN weight/bias, input quantization, W_U, b_U (unembed)"
GREEDY = "finite check, greedy choice (sampling)"
CHECKS = "between consecutive hook checks"
ORDER = [EMB, LN, QKV, SCORES, SOFT, WSUM, WO, BO, UNEMB, GREEDY, CHECKS]


def piece(prev, cur):
    """The piece a stretch between marks is, by the hook points it goes from and to."""
    if cur is None:
        return GREEDY
    c, p = NAMES[cur], (None if prev is None else NAMES[prev])
    if c in ("Embed", "PosEmbed") or (c == "ResidPre" and p == "PosEmbed"):
        return EMB
    if c in ("Ln1Scale", "Ln1Normalized", "LnFinalScale", "LnFinalNormalized"):
        return LN
    return {"Q": QKV, "AttnScores": SCORES, "Pattern": SOFT, "Z": WSUM, "Result": WO,
            "AttnOut": BO, "ResidPost": BO, "Logits": UNEMB}.get(c, CHECKS)


sums = {"prompt": {}, "generated": {}}
counts = {"prompt": 0, "generated": 0}
i = 0
for kind, pos, pts in steps:
    ms = marks[i:i + len(pts) + 2]
    i += len(pts) + 2
    # Every stretch holds one marker (and the `wants` call around it): the difference
    # to the plain step, spread evenly over the stretches.
    extra = (ms[-1] - ms[0] - plain_of[pos]) / (len(pts) + 1)
    counts[kind] += 1
    prev = None
    for k in range(len(pts) + 1):
        cur = pts[k] if k < len(pts) else None
        name = piece(prev, cur)
        sums[kind][name] = sums[kind].get(name, 0) + (ms[k + 1] - ms[k]) - extra
        prev = cur
gen_pos = [p for k, p, _ in steps if k == "generated"]
keys = sum(p + 1 for p in gen_pos) / max(len(gen_pos), 1)
macs = {QKV: L * 3 * H * dh * D, WO: L * H * D * dh, UNEMB: V * D, SCORES: L * H * dh * keys,
        WSUM: L * H * dh * keys}
all_macs = L * 4 * H * dh * D + V * D + 2 * L * H * dh * keys
print("\n## The step piece by piece, Cortex-M4, int8 blob, probes off\n")
print(f"Instructions per token between hook points (`record=pieces`: a marker at every hook point; "
      f"the markers' own cost is taken out so that each step adds up to the plain step), mean over "
      f"{counts['prompt']} prompt and {counts['generated']} generated tokens; attention MACs at the "
      f"generated positions' mean of {keys:.1f} keys.\n")
print("| piece | prompt instr/token | generated instr/token | generated per MAC |")
print("|---|---:|---:|---:|")
out = []
tot = {"prompt": 0.0, "generated": 0.0}
for name in ORDER:
    p = sums["prompt"].get(name, 0) / max(counts["prompt"], 1)
    g = sums["generated"].get(name, 0) / max(counts["generated"], 1)
    tot["prompt"] += p
    tot["generated"] += g
    per = f"{g / macs[name]:.2f}" if name in macs else ""
    print(f"| {name} | {p:,.0f} | {g:,.0f} | {per} |")
    out.append({"piece": name, "prompt": p, "generated": g, "macs": macs.get(name)})
print(f"| **whole step** | {tot['prompt']:,.0f} | {tot['generated']:,.0f} | {tot['generated'] / all_macs:.2f} |")
if json_out:
    json.dump({"pieces": out, "attention_keys_mean": keys}, open(json_out, "w"), indent=1)
