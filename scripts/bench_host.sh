#!/usr/bin/env bash
# Host tokens/s of `tinylens bench` for the demo model's blobs, with the normal build
# against the build without hook code (`--features tinylens-core/strip-hooks`): the
# two binaries run in alternation, ROUNDS times each, and the medians are compared,
# so that load on the machine affects both alike.
#
#   scripts/bench_host.sh [--rounds N] [--seconds S] [--kinds f32,int8] [--json FILE]
#
# Prints a Markdown table: per storage kind, prefill and decode tokens/s probes off
# (normal build), probes off (strip-hooks build), their ratio, and with every hook
# recorded (normal build).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rounds=5 seconds=1 kinds=f32,f16,int8,int4 json=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds="${2:?}"; shift 2 ;;
        --seconds) seconds="${2:?}"; shift 2 ;;
        --kinds) kinds="${2:?}"; shift 2 ;;
        --json) json="${2:?}"; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench_host.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
cd "$root"
cargo build --release --quiet -p tinylens-host
cargo build --release --quiet -p tinylens-host --features tinylens-core/strip-hooks --target-dir target/strip-hooks
normal="$root/target/release/tinylens"
stripped="$root/target/strip-hooks/release/tinylens"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
IFS=, read -ra kind_list <<<"$kinds"
for k in "${kind_list[@]}"; do
    "$normal" convert --weights models/demo/model.safetensors --config models/demo/config.json \
        --vocab models/demo/vocab.txt --quant "$k" -o "$work/demo-$k.tlm" --json > /dev/null
    for r in $(seq "$rounds"); do
        "$normal" bench "$work/demo-$k.tlm" --json --seconds "$seconds" > "$work/$k-normal-$r.json"
        "$stripped" bench "$work/demo-$k.tlm" --json --seconds "$seconds" --only off > "$work/$k-stripped-$r.json"
    done
done
python3 - "$work" "$kinds" "$rounds" "$json" <<'EOF'
import json, statistics, sys
work, kinds, rounds, out = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4]
def runs(k, build):
    return [json.load(open(f"{work}/{k}-{build}-{r}.json")) for r in range(1, rounds + 1)]
res = {}
print("| blob | phase | probes off tok/s | strip-hooks build tok/s | probes off / build without hooks (time) | all hooks tok/s | all hooks / probes off (time) | trace bytes/token |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for k in kinds:
    n, s = runs(k, "normal"), runs(k, "stripped")
    assert all(r["hooks_compiled"] for r in n) and not any(r["hooks_compiled"] for r in s)
    for phase in ["prefill", "decode"]:
        off = statistics.median(r[f"{phase}_tokens_per_s"] for r in n)
        strip = statistics.median(r[f"{phase}_tokens_per_s"] for r in s)
        allh = statistics.median(r[f"{phase}_tokens_per_s_all_hooks"] for r in n)
        tb = n[0]["trace_bytes_per_token"]
        print(f"| {k} | {phase} | {off:,.0f} | {strip:,.0f} | {strip / off:.3f} | {allh:,.0f} | {off / allh:.2f} | {tb:,.0f} |")
        res[f"{k}/{phase}"] = {"probes_off": off, "strip_hooks": strip, "all_hooks": allh,
                               "ratio_probes_off_to_stripped_time": strip / off,
                               "ratio_all_hooks_to_probes_off_time": off / allh,
                               "trace_bytes_per_token": tb}
print(f"\nmedians of {rounds} alternating runs per build; prompt {n[0]['prompt_tokens']} tokens, "
      f"{n[0]['decode_tokens']} decoded; workspace {n[0]['workspace_bytes']} bytes "
      f"(minimum {n[0]['minimum_bytes']}, {n[0]['workspace_over_minimum']:.3f}x)")
if out:
    json.dump(res, open(out, "w"), indent=1)
EOF
