#!/usr/bin/env bash
# Runs every cargo-fuzz target for a set time, one after the other.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The targets
# live in core/fuzz (blob, trace_frame, trace_stream, probe_pattern, probe_bytes) and
# host-tools/fuzz (tl_config, tl_safetensors); their bodies are in tests/fuzz_targets.rs.
#
# Each target starts from the committed regression corpus tests/fuzz_corpus/<target>
# plus seeds made here from real files: the attn1_ln fixture converted at every storage
# kind (with and without a vocabulary), the other fixtures at int8, traces of
# `tinylens run --probe '*' --trace` at every precision (whole, and split into frames),
# and the fixtures' TransformerLens configs and state dicts. The working corpus grows in
# target/fuzz/corpus/<target>; crashes land in target/fuzz/artifacts/<target>/ and are
# listed at the end (exit status 1). Logs: target/fuzz/logs/<target>.log.
#
# After a run, to refresh a committed corpus with a minimized one (keep it small):
#   cargo +nightly fuzz cmin --fuzz-dir core/fuzz --target-dir target/fuzz -O blob \
#       target/fuzz/corpus/blob
# then copy the smallest useful files into tests/fuzz_corpus/blob/ (total < 1 MB for all
# targets) and run `cargo test -p tinylens-tests --test fuzz_regressions`.
#
# Targets run one at a time in a single libFuzzer process each. Environment: FUZZ_ARGS,
# extra libFuzzer flags (e.g. FUZZ_ARGS=-max_len=4096); RSS_LIMIT_MB, the memory limit
# (default 1024: an allocation bomb is a finding).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECONDS_PER_TARGET="${1:-60}"
shift || true
CORE_TARGETS=(blob trace_frame trace_stream probe_pattern probe_bytes)
HOST_TARGETS=(tl_config tl_safetensors)
if [ "$#" -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${CORE_TARGETS[@]}" "${HOST_TARGETS[@]}"); fi
WORK="$ROOT/target/fuzz"
TARGET_DIR="$WORK"
mkdir -p "$WORK/seeds" "$WORK/logs"

fuzz_dir_of() {
    case " ${HOST_TARGETS[*]} " in
        *" $1 "*) echo host-tools/fuzz ;;
        *) echo core/fuzz ;;
    esac
}

# ---- seeds from real models ------------------------------------------------------------
echo "== making seeds"
cargo build -q -p tinylens-host --bin tinylens
TL="$ROOT/target/debug/tinylens"
S="$WORK/seeds"
rm -rf "$S"
mkdir -p "$S"/{blob,trace_stream,trace_frame,tl_config,tl_safetensors}
FIX="$ROOT/tests/fixtures"
seq 0 49 | sed 's/^/tok/' >"$S/vocab50.txt"
for q in f32 f16 int8 int4; do
    "$TL" convert --weights "$FIX/attn1_ln/model.safetensors" --config "$FIX/attn1_ln/config.json" \
        --quant "$q" -o "$S/blob/attn1_ln_$q.tlm" >/dev/null
done
"$TL" convert --weights "$FIX/attn1_ln/model.safetensors" --config "$FIX/attn1_ln/config.json" \
    --quant int4 --embed-quant int4 --vocab "$S/vocab50.txt" -o "$S/blob/attn1_ln_int4_vocab.tlm" >/dev/null
for m in attn2_standard_noln attn2_shortformer_ln; do
    "$TL" convert --weights "$FIX/$m/model.safetensors" --config "$FIX/$m/config.json" \
        --quant int8 -o "$S/blob/${m}_int8.tlm" >/dev/null
done
for p in f32 f16 int8; do
    # Every hook of the LayerNorm model; every hook but the LayerNorm ones without.
    "$TL" run "$S/blob/attn1_ln_int8.tlm" --tokens 1,2,3,1 --probe "*:$p" \
        --trace "$S/trace_stream/attn1_ln.$p.tlt" >/dev/null 2>&1
    "$TL" run "$S/blob/attn2_standard_noln_int8.tlm" --tokens 1,2,3,1 --probe "hook_*:$p" \
        --probe "blocks.*.attn.*:$p" --probe "blocks.*.hook_*:$p" --probe logits \
        --trace "$S/trace_stream/attn2_standard_noln.$p.tlt" >/dev/null 2>&1
done
# Split the traces into single frames (without their 0x00) for the frame decoder.
for t in "$S"/trace_stream/*.tlt; do
    [ -s "$t" ] || continue
    python3 - "$t" "$S/trace_frame/$(basename "$t")" <<'EOF'
import sys
data = open(sys.argv[1], 'rb').read()
for i, f in enumerate(data.split(b'\0')[:40]):
    if f:
        open(f"{sys.argv[2]}.{i:03}", 'wb').write(f)
EOF
done
for m in attn1_ln attn2_shortformer_ln attn2_standard_noln; do
    cp "$FIX/$m/config.json" "$S/tl_config/$m.json"
done
# tl_safetensors: first byte = config index in tl_configs() (0..2 are the fixtures).
j=0
for m in attn1_ln attn2_shortformer_ln attn2_standard_noln; do
    for flags in 0 176; do # 176 = 0xb0: int4, every processing
        sel=$((j | flags))
        { printf "\\$(printf '%03o' "$sel")"; cat "$FIX/$m/model.safetensors"; } >"$S/tl_safetensors/$m.$sel"
    done
    j=$((j + 1))
done

# ---- fuzzing ---------------------------------------------------------------------------
declare -A EXECS
CRASHED=()
for t in "${TARGETS[@]}"; do
    dir="$(fuzz_dir_of "$t")"
    corpus="$WORK/corpus/$t"
    artifacts="$WORK/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    seeds=("$ROOT/tests/fuzz_corpus/$t")
    [ -d "$S/$t" ] && seeds+=("$S/$t")
    echo "== $t (${SECONDS_PER_TARGET}s, $dir)"
    log="$WORK/logs/$t.log"
    set +e
    cargo +nightly fuzz run --fuzz-dir "$dir" --target-dir "$TARGET_DIR" -O "$t" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=20 -rss_limit_mb="${RSS_LIMIT_MB:-1024}" -max_len=262144 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" ${FUZZ_ARGS:-} >"$log" 2>&1
    status=$?
    set -e
    execs="$(awk '/stat::number_of_executed_units:/ {s += $2} END {print s + 0}' "$log")"
    EXECS[$t]="$execs"
    if [ "$status" -ne 0 ] || ls "$artifacts"/crash-* "$artifacts"/oom-* "$artifacts"/timeout-* >/dev/null 2>&1; then
        CRASHED+=("$t")
        echo "   FAILED (status $status): see $log and $artifacts"
    fi
    echo "   $execs executions"
done

echo "== summary"
for t in "${TARGETS[@]}"; do
    printf '%-16s %12s execs\n' "$t" "${EXECS[$t]}"
done
if [ "${#CRASHED[@]}" -gt 0 ]; then
    echo "crashes in: ${CRASHED[*]}"
    exit 1
fi
echo "no crashes"
