#!/usr/bin/env python3
"""Which chip fits which model: the README table, generated (not hand-written).

For every model blob given, `tinylens info --json` says the flash it needs (the device
part of the blob) and the RAM of a session for each KV cache storage (f32, f16, int8);
`scripts/chips.tsv` lists chips with their flash and contiguous RAM. A model fits a chip
with a KV option when

    flash: blob + CODE_BYTES (the firmware without the blob) <= flash
    RAM:   workspace(kv) + trace frame buffer + RAM_RESERVE (trace ring, stack) <= RAM

CODE_BYTES is measured from a built firmware ELF when `--elf` is given (its loaded
sections minus the blob it embeds), else the figure measured on the Cortex-M4F build of
`firmware-examples/qemu` with the demo blob (see DEFAULT_CODE_BYTES). RAM_RESERVE is that
firmware's 8 KiB trace ring and 6 KiB stack reserve.

    scripts/chip_table.py [--tinylens BIN] [--elf FW.elf --elf-blob BLOB] [--readme README.md] [MODEL.tlm ...]

Prints the Markdown table; with `--readme`, replaces the text between the markers
`<!-- chip-table:begin -->` and `<!-- chip-table:end -->` in that file. Standard library only.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# text of the QEMU firmware (thumbv7em-none-eabihf, release) with the 50 071-byte demo
# int8 blob: 109 752 bytes (scripts/BENCHMARKS.md, Memory) -> 59 681 bytes of code.
DEFAULT_CODE_BYTES = 109_752 - 50_071
RAM_RESERVE = 8 * 1024 + 6 * 1024
BEGIN, END = "<!-- chip-table:begin -->", "<!-- chip-table:end -->"
DEFAULT_MODELS = [
    ("demo (int8)", "models/demo/demo-int8.tlm"),
    ("English (int8)", "models/english/english-int8.tlm"),
]


def tinylens_bin(given):
    if given:
        return [given]
    for profile in ("release", "debug"):
        path = os.path.join(ROOT, "target", profile, "tinylens")
        if os.path.isfile(path):
            return [path]
    return ["cargo", "run", "--quiet", "-p", "tinylens-host", "--bin", "tinylens", "--"]


def info(cmd, blob):
    out = subprocess.run(cmd + ["info", "--json", blob], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def code_bytes(elf, blob):
    """Loaded bytes of `elf` (alloc sections that occupy flash) minus the blob's size."""
    out = subprocess.run(["readelf", "-SW", elf], check=True, capture_output=True, text=True).stdout
    total = 0
    for line in out.splitlines():
        parts = line.replace("[ ", "[").split()
        if len(parts) > 7 and parts[0].startswith("[") and parts[2] == "PROGBITS" and "A" in parts[7]:
            total += int(parts[5], 16)
    return total - os.path.getsize(blob)


def chips(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, core, flash, ram, *note = line.rstrip("\n").split("\t")
            rows.append((name, core, int(flash) * 1024, int(ram) * 1024))
    return rows


def kib(n):
    return f"{n / 1024:.0f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.0f} MiB"


def cell(model, flash, ram, code):
    need_flash = model["device_bytes"] + code
    if need_flash > flash:
        return f"no: flash ({kib(need_flash)})"
    fits = []
    for kv in model["kv_cache"]:
        need = kv["workspace_bytes"] + model["trace_frame_buffer_bytes"] + RAM_RESERVE
        if need <= ram:
            fits.append((kv["storage"], need))
    if not fits:
        smallest = min(
            kv["workspace_bytes"] + model["trace_frame_buffer_bytes"] + RAM_RESERVE for kv in model["kv_cache"]
        )
        return f"no: RAM ({kib(smallest)})"
    kinds = [k for k, _ in fits]
    ram_used = fits[0][1]
    label = "any KV cache" if len(kinds) == len(model["kv_cache"]) else f"{'/'.join(kinds)} KV cache"
    return f"yes, {label} ({kib(ram_used)} RAM)"


def table(models, chip_rows, code):
    head = "| chip | core | flash | RAM | " + " | ".join(name for name, _ in models) + " |"
    sep = "|---|---|---:|---:|" + "---|" * len(models)
    lines = [head, sep]
    for name, core, flash, ram in chip_rows:
        cells = [cell(m, flash, ram, code) for _, m in models]
        lines.append(f"| {name} | {core} | {kib(flash)} | {kib(ram)} | " + " | ".join(cells) + " |")
    need = ", ".join(
        f"{name}: {kib(m['device_bytes'] + code)} flash, RAM "
        + " / ".join(
            f"{kv['storage']} {kib(kv['workspace_bytes'] + m['trace_frame_buffer_bytes'] + RAM_RESERVE)}"
            for kv in m["kv_cache"]
        )
        for name, m in models
    )
    lines.append("")
    lines.append(
        f"Needs ({need}) = blob + {code:,} bytes of firmware code; workspace for the KV cache "
        f"option + trace frame buffer + {RAM_RESERVE // 1024} KiB (trace ring, stack). "
        "RAM is the chip's largest contiguous SRAM block; the RAM shown is that of the largest "
        "KV cache that fits. Generated by `scripts/chip_table.py` from `tinylens info --json` "
        "and `scripts/chips.tsv`."
    )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", help="blobs (default: the demo and English int8 blobs)")
    ap.add_argument("--tinylens", help="the tinylens binary (default target/{release,debug}/tinylens or cargo run)")
    ap.add_argument("--chips", default=os.path.join(ROOT, "scripts", "chips.tsv"))
    ap.add_argument("--elf", help="a firmware ELF to measure the code size from")
    ap.add_argument("--elf-blob", default=os.path.join(ROOT, "models/demo/demo-int8.tlm"),
                    help="the blob that ELF embeds")
    ap.add_argument("--readme", help="replace the table between the chip-table markers in this file")
    a = ap.parse_args()
    paths = [(os.path.basename(p), p) for p in a.models] or [
        (n, os.path.join(ROOT, p)) for n, p in DEFAULT_MODELS
    ]
    cmd = tinylens_bin(a.tinylens)
    models = [(name, info(cmd, path)) for name, path in paths]
    code = code_bytes(a.elf, a.elf_blob) if a.elf else DEFAULT_CODE_BYTES
    text = table(models, chips(a.chips), code)
    if a.readme:
        with open(a.readme, encoding="utf-8") as f:
            readme = f.read()
        if BEGIN not in readme or END not in readme:
            sys.exit(f"chip_table.py: {a.readme} has no {BEGIN} ... {END} markers")
        head, rest = readme.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        tmp = a.readme + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(head + BEGIN + "\n" + text + "\n" + END + tail)
        os.replace(tmp, a.readme)
    print(text)


if __name__ == "__main__":
    main()
