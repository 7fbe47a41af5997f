#!/usr/bin/env bash
# Executed guest instructions per token of the demo model on the emulated Cortex-M4
# (QEMU mps2-an386), counted exactly by the icount TCG plugin, per storage kind and
# probe set, against a build without hook code; the kernels' instructions per weight
# multiply-accumulate; firmware and RAM sizes. Prints Markdown tables.
#
#   scripts/bench_firmware.sh [--quick] [--json FILE]
#
#   --quick      int8 only (the shipped blob), fewer probe sets
#   --json FILE  also write every figure as JSON
#   --pieces     only the per-piece profile of the int8 blob (quick to iterate on)
#
# Builds what it needs: the host tool (to convert models/demo/model.safetensors to f32,
# f16, int8 and int4 blobs), the icount plugin, and one firmware per blob and variant
# in firmware-examples/target/bench/ (TINYLENS_MODEL=blob; the `strip-hooks` variant
# with `--features tinylens-core/strip-hooks`, which compiles every hook call out).
# Each run: the same 16-token prompt as `tinylens bench`, then 16 greedy tokens (the
# whole context); a token's count covers its step from the marker before to the marker
# after it (forward pass, greedy choice, and with probes the trace frames and their
# semihosting writes). Counts are identical from run to run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fw="$root/firmware-examples"
quick=0
json=""
pieces_only=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) quick=1; shift ;;
        --json) json="${2:?}"; shift 2 ;;
        --pieces) pieces_only=1; quick=1; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench_firmware.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for tool in qemu-system-arm readelf llvm-size gcc python3 defmt-print; do
    command -v "$tool" >/dev/null || { echo "bench_firmware.sh: needs $tool (scripts/test.sh installs the toolchain)" >&2; exit 2; }
done
rustup target list --installed | grep -qx thumbv7em-none-eabihf || rustup target add thumbv7em-none-eabihf

work="$fw/target/bench"
mkdir -p "$work/blobs"
log() { echo "bench_firmware.sh: $*" >&2; }

log "host tool"
(cd "$root" && cargo build --release --quiet -p tinylens-host)
tl="$root/target/release/tinylens"
[[ -f "$root/target/qemu-icount/libicount.so" ]] || "$root/scripts/qemu/build-plugin.sh" >/dev/null

kinds=(f32 f16 int8 int4)
[[ $quick == 1 ]] && kinds=(int8)
for k in "${kinds[@]}"; do
    "$tl" convert --weights "$root/models/demo/model.safetensors" --config "$root/models/demo/config.json" \
        --vocab "$root/models/demo/vocab.txt" --quant "$k" -o "$work/blobs/demo-$k.tlm" --json > "$work/blobs/demo-$k.json"
done
# The prompt `tinylens bench` uses (fixed seed), so host and device figures match.
prompt="$("$tl" bench "$work/blobs/demo-${kinds[0]}.tlm" --json --seconds 0.001 --min-samples 1 \
    | python3 -c 'import json,sys; print(",".join(map(str, json.load(sys.stdin)["prompt"])))')"
n_ctx="$(python3 -c 'import json; print(json.load(open("'"$root"'/models/demo/config.json"))["n_ctx"])')"
n_prompt="$(echo "$prompt" | tr ',' '\n' | wc -l)"
generate=$(( n_ctx - n_prompt ))

# firmware <kind> <variant>: builds (if needed) and prints the ELF path.
firmware() {
    local kind="$1" variant="$2" dir="$work/$1-$2"
    local features=()
    [[ "$variant" == strip-hooks ]] && features=(--features tinylens-core/strip-hooks)
    (cd "$fw" && TINYLENS_MODEL="$work/blobs/demo-$kind.tlm" cargo build --release --quiet \
        -p tinylens-fw-qemu --target thumbv7em-none-eabihf --target-dir "$dir" "${features[@]}")
    echo "$dir/thumbv7em-none-eabihf/release/qemu"
}

probe_sets=(
    "probes off|record=0"
    "recorder, no probe|probe=none"
    "hook_pattern, every head (f32)|probe=blocks.*.attn.hook_pattern"
    "hook_pattern, every head (int8)|probe=blocks.*.attn.hook_pattern:int8"
    "hook_result, every head (f32)|probe=blocks.*.attn.hook_result"
    "every per-head hook (q k v scores pattern z result, f32)|probe=blocks.*.attn.*"
    "firmware default (pattern, result:f16, logits)|"
    "every hook (f32)|probe=*"
    "every hook (f16)|probe=*:f16"
    "every hook (int8)|probe=*:int8"
)
[[ $quick == 1 ]] && probe_sets=("${probe_sets[0]}" "${probe_sets[2]}" "${probe_sets[5]}" "${probe_sets[7]}")

# The step piece by piece (int8 blob, probes off but a marker at every hook point,
# `record=pieces`; see scripts/firmware_pieces.py).
pieces_profile() {
    local elf; elf="$(firmware int8 hooks)"
    "$fw/run-qemu.sh" --icount="$work/pieces.icount" "$elf" "tokens=$prompt" "generate=$generate" \
        record=pieces > /dev/null 2> "$work/pieces.log"
    "$fw/icount-per-token.sh" --elf "$elf" --tsv "tokens=$prompt" "generate=$generate" record=0 > "$work/plain.tsv"
    python3 "$root/scripts/firmware_pieces.py" "$work/pieces.icount" "$work/pieces.log" "$work/plain.tsv" \
        "$root" ${json:+"$json.pieces"}
}
if [[ $pieces_only == 1 ]]; then
    pieces_profile
    exit 0
fi

results="$work/results.tsv"
: > "$results"
run_case() { # kind variant label args...
    local kind="$1" variant="$2" label="$3"; shift 3
    local elf; elf="$(firmware "$kind" "$variant")"
    "$fw/icount-per-token.sh" --elf "$elf" --tsv "tokens=$prompt" "generate=$generate" "$@" > "$work/run.tsv"
    python3 - "$kind" "$variant" "$label" "$work/run.tsv" >> "$results" <<'EOF'
import sys
kind, variant, label, path = sys.argv[1:5]
rows = [l.split("\t") for l in open(path).read().splitlines() if l and not l.startswith("pos")]
p = [int(r[4]) for r in rows if r[1] == "prompt"]
g = [int(r[4]) for r in rows if r[1] == "generated"]
print("\t".join([kind, variant, label, str(sum(p) / len(p)), str(sum(g) / max(len(g), 1)),
                 ",".join(str(int(r[4])) for r in rows)]))
EOF
}

for k in "${kinds[@]}"; do
    log "blob $k: builds and runs"
    run_case "$k" strip-hooks "build without hooks" record=0
    for ps in "${probe_sets[@]}"; do
        label="${ps%%|*}"; args="${ps#*|}"
        if [[ -n "$args" ]]; then run_case "$k" hooks "$label" "$args"; else run_case "$k" hooks "$label"; fi
    done
done

log "kernel micro-benchmarks"
(cd "$fw" && cargo build --release --quiet -p tinylens-fw-kernels --target thumbv7em-none-eabihf)
kelf="$fw/target/thumbv7em-none-eabihf/release/kernels"
"$fw/run-qemu.sh" --no-decode --defmt-out "$work/kernels.defmt" --icount="$work/kernels.icount" "$kelf" \
    > "$work/kernels.out" 2> "$work/kernels.err"

sizes="$work/sizes.tsv"
: > "$sizes"
for k in "${kinds[@]}"; do
    for v in hooks strip-hooks; do
        echo -e "qemu ($k blob, $v)\t$(llvm-size "$work/$k-$v/thumbv7em-none-eabihf/release/qemu" | tail -1)" >> "$sizes"
    done
done
echo -e "kernels (self-test + micro-benchmarks)\t$(llvm-size "$kelf" | tail -1)" >> "$sizes"

python3 - "$results" "$work/kernels.out" "$work/kernels.icount" "$sizes" "$root" "$work/blobs" "$json" "$prompt" <<'EOF'
import json, re, sys
results, kout, kicount, sizes, root, blobs, json_out, prompt = sys.argv[1:9]
cfg = json.load(open(f"{root}/models/demo/config.json"))
L, H, D, dh, V, C = (cfg[k] for k in ["n_layers", "n_heads", "d_model", "d_head", "d_vocab_out", "n_ctx"])
qkv = H * dh
mat_macs = L * (3 * qkv * D + H * D * dh) + V * D
def attn_macs(pos):  # scores and z at position pos
    return L * H * 2 * (pos + 1) * dh
n_prompt = len(prompt.split(","))
gen_pos = list(range(n_prompt, C))
attn_gen = sum(attn_macs(p) for p in gen_pos) / len(gen_pos)

rows = [l.rstrip("\n").split("\t") for l in open(results)]
out = {"prompt_tokens": n_prompt, "generated_tokens": C - n_prompt, "matvec_macs_per_token": mat_macs,
       "attention_macs_per_generated_token": attn_gen, "runs": [], "kernels": [], "sizes": []}
base = {}
for kind, variant, label, p, g, per in rows:
    if label == "probes off":
        base[kind] = (float(p), float(g))
print("## Instructions per token, Cortex-M4 (QEMU mps2-an386), demo model\n")
print(f"Prompt {n_prompt} tokens, then {C - n_prompt} generated greedily (positions {n_prompt}..{C - 1}); "
      f"means per token. MACs per token: {mat_macs} in matrix-vector products + "
      f"{attn_gen:.0f} in attention (mean over the generated positions).\n")
print("| blob | build / probes | prompt instr/token | generated instr/token | × probes off (generated) | instr per MAC (generated) |")
print("|---|---|---:|---:|---:|---:|")
for kind, variant, label, p, g, per in rows:
    p, g = float(p), float(g)
    ratio = g / base[kind][1] if kind in base else float("nan")
    per_mac = g / (mat_macs + attn_gen)
    print(f"| {kind} | {label} | {p:,.0f} | {g:,.0f} | {ratio:.3f} | {per_mac:.2f} |")
    out["runs"].append({"blob": kind, "build": variant, "probes": label, "prompt_instr_per_token": p,
                        "generated_instr_per_token": g, "ratio_to_probes_off": ratio,
                        "instr_per_mac": per_mac, "per_position": [int(x) for x in per.split(",")]})

labels = [l.split() for l in open(kout) if l.startswith("region ")]
counts = {int(m.group(1)): int(m.group(2)) for m in
          re.finditer(r"mark (\d+) (\d+)", open(kicount).read())}
regions = {n // 2: counts[n] - counts[n - 1] for n in counts if n % 2 == 0}
empty = regions[1]
print("\n## Kernels, Cortex-M4: instructions per call (marker overhead subtracted)\n")
print(open(kout).read().splitlines()[1] + "\n")
print("| kernel | shape | instructions | per MAC / element |")
print("|---|---|---:|---:|")
kern = {}
for l in labels:
    n = int(l[1]); name = l[2]; macs = int(l[3].split("=")[1])
    c = regions[n] - empty
    if name == "empty":
        continue
    kern[name] = c
    what, shape = name.rsplit("_", 1)
    print(f"| {what} | {shape} | {c:,} | {c / macs:.2f} |")
    out["kernels"].append({"kernel": what, "shape": shape, "instructions": c, "per_mac": c / macs})

# One step's int8 matrix work from the micro-benchmarks: W_Q, W_K, W_V and W_U as
# one 64x64 product each (per layer for Q/K/V), W_O per head (64x16), and the
# quantization + DSP layout of each input (normed per layer, z per head, final normed).
def k(name):
    return kern.get(name)
if k("qkv_all_heads_int8_dsp_64x64") is not None and (D, qkv, dh) == (64, 64, 16):
    for variant in ["dsp", "portable"]:
        big = k(f"qkv_all_heads_int8_{variant}_64x64"); o = k(f"one_head_o_int8_{variant}_64x16")
        if variant == "dsp" and k("quantize_with_pairs_int8_1x64") is not None:
            # The one-pass quantization with the pair layout, measured at both widths.
            prep, prep_z = k("quantize_with_pairs_int8_1x64"), k("quantize_with_pairs_int8_1x16")
        else:
            prep = k("quantize_input_int8_1x64") + (k("arrange_pairs_int8_1x64") if variant == "dsp" else 0)
            prep_z = prep / 4  # a 16-element z: a quarter of the 64-element cost, roughly
        mat = L * (3 * big + H * o) + big
        inputs = L * (prep + H * prep_z) + prep
        print(f"\nint8 matrix work of one step ({variant} kernel): {mat:,.0f} instructions for {mat_macs:,} MACs = "
              f"**{mat / mat_macs:.2f} per MAC**; with input quantization{' and pair layout' if variant == 'dsp' else ''}: "
              f"{(mat + inputs) / mat_macs:.2f} per MAC")
        out[f"int8_matrix_work_{variant}"] = {"instructions": mat, "macs": mat_macs, "per_mac": mat / mat_macs,
                                             "with_input_prep_per_mac": (mat + inputs) / mat_macs}

print("\n## Sizes\n")
print("| firmware | text | data | bss |")
print("|---|---:|---:|---:|")
for l in open(sizes):
    name, rest = l.rstrip("\n").split("\t", 1)
    t, d, b = rest.split()[:3]
    print(f"| {name} | {int(t):,} | {int(d):,} | {int(b):,} |")
    out["sizes"].append({"firmware": name, "text": int(t), "data": int(d), "bss": int(b)})
print("\n| blob | bytes | parameters | bytes/parameter |")
print("|---|---:|---:|---:|")
import glob, os
for f in sorted(glob.glob(f"{blobs}/demo-*.json")):
    j = json.load(open(f))
    kind = os.path.basename(f)[5:-5]
    print(f"| {kind} | {j['blob_bytes']:,} | {j['parameters']:,} | {j['blob_bytes'] / j['parameters']:.3f} |")
if json_out:
    json.dump(out, open(json_out, "w"), indent=1)
EOF
pieces_profile
