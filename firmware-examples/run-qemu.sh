#!/usr/bin/env bash
# Runs a tinylens firmware ELF in QEMU with its output channels kept apart.
#
# usage: run-qemu.sh [options] <app.elf> [firmware-arg ...]
#
#   stdout   the trace channel only: raw bytes exactly as the firmware wrote them
#            (semihosting stdout), e.g. `run-qemu.sh app.elf | tinylens decode -`
#   stderr   QEMU's own messages, the firmware's panic/fault text, the defmt log
#            decoded live by `defmt-print -e app.elf` and, with --icount, the counts
#   status   QEMU's: 0 = firmware exited with success, 1 = failure (panic, fault),
#            124 = killed by the timeout, 2 = bad usage of this script
#
# firmware-arg: key=value words handed to the firmware on the semihosting command
# line (the QEMU example reads steps=N and trace=PATH; defmt=PATH is set here).
#
# options:
#   --timeout SECS     kill QEMU after SECS seconds (default $QEMU_TIMEOUT or 30)
#   --machine NAME     QEMU machine (default from the ELF's CPU architecture and load
#                      address: v7E-M at 0x0800_0000 -> netduinoplus2 (STM32F405),
#                      other v7E-M -> mps2-an386 (Cortex-M4F), v6-M -> microbit
#                      (Cortex-M0), v8-M.mainline -> mps2-an505 (Cortex-M33),
#                      v8.1-M.mainline -> mps3-an547 (Cortex-M55, Helium),
#                      v7-M -> mps2-an385 (Cortex-M3)); mps2-an500 (Cortex-M7)
#                      runs the v7E-M builds
#   --serial FILE      capture the machine's first UART (serial0) into FILE
#                      (`-serial file:FILE`; the firmware's transport=uart), or
#                      `--serial pty` for a pseudo-terminal (QEMU prints its path)
#   --defmt-out FILE   also keep the raw defmt stream in FILE
#   --no-decode        do not run defmt-print (raw stream goes to --defmt-out, or to
#                      <app.elf>.defmt)
#   --icount[=FILE]    count executed guest instructions with the TCG plugin
#                      (scripts/qemu/icount.c, built on first use with gcc): one
#                      "mark <n> <count>" line per call of tinylens_icount_mark and a
#                      "total <count>" line go to FILE, or to stderr after the run,
#                      followed by the instruction count of each begin/end mark pair
#   --plugin PATH      the icount plugin .so (default <repo>/target/qemu-icount/libicount.so)
#   --qemu-arg ARG     pass ARG to qemu-system-arm (repeatable)
#
# A RISC-V ELF (riscv32imac) runs on qemu-system-riscv32 -machine virt -bios none
# (Debian's qemu-system-misc); everything else is the same.
#
# Always on: -icount shift=0 (guest time follows the instruction count, so runs are
# repeatable), semihosting with target=native, no display/monitor, UART to null
# unless --serial, stdin from /dev/null.
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

die() { echo "run-qemu.sh: $*" >&2; exit 2; }

timeout_s="${QEMU_TIMEOUT:-30}"
machine=""
serial=null
defmt_keep=""
decode=1
icount=0
icount_out=""
plugin="$root/target/qemu-icount/libicount.so"
qemu_extra=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --timeout) timeout_s="${2:?}"; shift 2 ;;
        --machine) machine="${2:?}"; shift 2 ;;
        --defmt-out) defmt_keep="${2:?}"; shift 2 ;;
        --serial) serial="${2:?}"; shift 2 ;;
        --no-decode) decode=0; shift ;;
        --icount) icount=1; shift ;;
        --icount=*) icount=1; icount_out="${1#--icount=}"; shift ;;
        --plugin) plugin="${2:?}"; shift 2 ;;
        --qemu-arg) qemu_extra+=("${2:?}"); shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done
[[ $# -ge 1 ]] || die "missing <app.elf> (see --help)"
elf="$(realpath "$1")"; shift
[[ -f "$elf" ]] || die "no such file: $elf"
command -v readelf >/dev/null || die "readelf not found (apt-get install binutils)"
qemu_bin=qemu-system-arm
if readelf -h "$elf" | grep -q 'Machine: *RISC-V'; then
    qemu_bin=qemu-system-riscv32
    machine="${machine:-virt}"
    command -v "$qemu_bin" >/dev/null || die "$qemu_bin not found (apt-get install qemu-system-misc)"
else
    command -v "$qemu_bin" >/dev/null || die "$qemu_bin not found (apt-get install qemu-system-arm)"
fi

# Machine from the ELF's build attributes.
if [[ -z "$machine" ]]; then
    arch="$(readelf -A "$elf" | sed -n 's/^ *Tag_CPU_arch: *//p' | head -n1)"
    case "$arch" in
        v7E-M)
            # The STM32 memory map links the vector table at 0x0800_0000.
            vectors="$(readelf -SW "$elf" | sed -n 's/.*\.vector_table  *PROGBITS  *\([0-9a-f]*\) .*/\1/p')"
            if [[ "$vectors" == 08000000 ]]; then machine=netduinoplus2; else machine=mps2-an386; fi ;;
        v8-M.mainline) machine=mps2-an505 ;;
        v8.1-M.mainline) machine=mps3-an547 ;;
        v6-M|v6S-M) machine=microbit ;;
        v7-M) machine=mps2-an385 ;;
        *) die "cannot tell the machine for CPU architecture '$arch'; pass --machine" ;;
    esac
fi
case "$machine" in
    mps2-an386) cpu=cortex-m4 ;;
    mps2-an385|mps2-an511) cpu=cortex-m3 ;;
    mps2-an500) cpu=cortex-m7 ;;
    mps2-an505) cpu=cortex-m33 ;;
    mps3-an547) cpu=cortex-m55 ;;
    microbit) cpu=cortex-m0 ;;
    virt) cpu=""; qemu_extra=(-bios none "${qemu_extra[@]}") ;;
    *) cpu="" ;;
esac

work="$(mktemp -d "${TMPDIR:-/tmp}/run-qemu.XXXXXX")"
decoder_pid=""
# A decoder blocked opening the FIFO (the firmware never opened its log) wakes up
# when any writer appears; opening read-write never blocks, closing gives it EOF.
release_decoder() {
    if [[ -n "$decoder_pid" ]]; then
        { exec 9<>"$work/defmt.fifo"; exec 9>&-; } 2>/dev/null || true
        wait "$decoder_pid" 2>/dev/null || true
        decoder_pid=""
    fi
}
cleanup() { release_decoder; rm -rf "$work"; }
trap cleanup EXIT

# defmt channel: a FIFO read live by defmt-print, or a plain file.
have_decoder=0
if [[ $decode == 1 ]] && command -v defmt-print >/dev/null; then
    have_decoder=1
elif [[ $decode == 1 ]]; then
    echo "run-qemu.sh: defmt-print not found (cargo install defmt-print --locked); raw defmt log in ${defmt_keep:-$elf.defmt}" >&2
fi
if [[ $have_decoder == 1 ]]; then
    defmt_path="$work/defmt.fifo"
    mkfifo "$defmt_path"
    if [[ -n "$defmt_keep" ]]; then
        ( tee "$defmt_keep" <"$defmt_path" | defmt-print -e "$elf" >&2 ) &
    else
        ( defmt-print -e "$elf" <"$defmt_path" >&2 ) &
    fi
    decoder_pid=$!
else
    defmt_path="$(realpath -m "${defmt_keep:-$elf.defmt}")"
fi
# Semihosting arguments are split at spaces by the firmware, and QEMU option
# values need commas doubled.
[[ "$defmt_path" != *" "* ]] || die "path with a space: $defmt_path"
qarg() { printf ',arg=%s' "${1//,/,,}"; }
semi="enable=on,target=native$(qarg "$(basename "$elf")")$(qarg "defmt=$defmt_path")"
for a in "$@"; do
    [[ "$a" != *" "* ]] || die "firmware argument with a space: '$a'"
    semi+="$(qarg "$a")"
done

case "$serial" in
    null|pty) serial_args=(-serial "$serial") ;;
    *) serial_args=(-serial "file:$(realpath -m "$serial")") ;;
esac

# QEMU 7.2's -kernel on netduinoplus2 reads the reset vector at 0 before the image
# at 0x0800_0000 shows through its alias there (the core locks up); the generic
# loader device places the ELF as ROM data that the reset does see.
load=(-kernel "$elf")
[[ $machine != netduinoplus2 ]] || load=(-device "loader,file=$elf")

plugin_args=()
if [[ $icount == 1 ]]; then
    if [[ ! -f "$plugin" ]]; then
        "$root/scripts/qemu/build-plugin.sh" "$(dirname "$plugin")" >/dev/null
    fi
    # awk reads to the end: an early `exit` could kill readelf with SIGPIPE, which
    # pipefail and errexit would turn into this script's status (141).
    mark="$(readelf -sW "$elf" | awk '$8 == "tinylens_icount_mark" && !m { m = "0x" $2 } END { print m }')"
    popt="$plugin"
    if [[ -n "$mark" ]]; then
        popt+=",mark=$mark"
    else
        echo "run-qemu.sh: no tinylens_icount_mark symbol in the ELF: total count only" >&2
    fi
    counts="${icount_out:-$work/icount.txt}"
    popt+=",out=$(realpath -m "$counts")"
    plugin_args=(-plugin "$popt")
fi

qemu=("$qemu_bin" -machine "$machine" ${cpu:+-cpu "$cpu"}
      -display none -monitor none "${serial_args[@]}"
      -icount shift=0
      -semihosting-config "$semi"
      "${plugin_args[@]}"
      "${qemu_extra[@]}"
      "${load[@]}")

status=0
timeout -k 2 "$timeout_s" "${qemu[@]}" </dev/null || status=$?
if [[ $status == 124 ]]; then
    echo "run-qemu.sh: QEMU killed after ${timeout_s}s (firmware hung?)" >&2
fi

release_decoder

if [[ $icount == 1 && -f "$counts" ]]; then
    if [[ -z "$icount_out" ]]; then
        sed 's/^/icount: /' "$counts" >&2
    fi
    # Marks come in begin/end pairs (tinylens_fw::Stepper): cost of each pair.
    awk '$1 == "mark" { m[$2] = $3; n = $2 }
         END { for (i = 2; i <= n; i += 2)
                   printf "icount: region %d (marks %d..%d): %d instructions\n",
                          i / 2, i - 1, i, m[i] - m[i - 1] }' "$counts" >&2
fi
exit "$status"
