/*
 * icount: exact count of executed guest instructions, with marks.
 *
 *   qemu-system-arm ... -icount shift=0 \
 *     -plugin target/qemu-icount/libicount.so,mark=0x1234,out=/tmp/icount.txt
 *
 * Every translated instruction gets an inline 64-bit add (no helper call), so the
 * count is exact and, for a single-core guest, the same on every run. Each time the
 * guest executes the instruction at a `mark=` address (the entry of the firmware's
 * `tinylens_icount_mark`, thumb bit cleared; up to 8 addresses), the running count
 * is written out. Output (to `out=PATH`, default stderr), one record a line:
 *   mark <n> <count>       n = 1, 2, ... in execution order; count = instructions
 *                          executed before the marked instruction
 *   total <count>          at exit
 * The cost of a region is the difference of two marks (the marker's own few
 * instructions are in it, the same for every region).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu-plugin-min.h"

TL_PLUGIN_EXPORT int qemu_plugin_version = TL_QEMU_PLUGIN_API_VERSION;

#define MAX_MARKS 8
static uint64_t insns;              /* bumped inline by the translated code */
static uint64_t marks[MAX_MARKS];
static int n_marks;
static uint64_t marks_seen;
static FILE *out;

static void on_mark(unsigned int vcpu, void *udata)
{
    (void)vcpu; (void)udata;
    fprintf(out, "mark %" PRIu64 " %" PRIu64 "\n", ++marks_seen, insns);
}

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    (void)id;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t va = qemu_plugin_insn_vaddr(insn);
        for (int m = 0; m < n_marks; m++) {
            if (va == marks[m]) {
                qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark,
                                                       QEMU_PLUGIN_CB_NO_REGS, NULL);
            }
        }
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64,
                                                   &insns, 1);
    }
}

static void on_plugin_exit(qemu_plugin_id_t id, void *udata)
{
    (void)id; (void)udata;
    fprintf(out, "total %" PRIu64 "\n", insns);
    fflush(out);
}

int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                        char **argv)
{
    (void)info;
    out = stderr;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "mark=", 5) == 0 && n_marks < MAX_MARKS) {
            marks[n_marks++] = strtoull(argv[i] + 5, NULL, 0) & ~1ULL;
        } else if (strncmp(argv[i], "out=", 4) == 0) {
            out = fopen(argv[i] + 4, "w");
            if (!out) { perror(argv[i] + 4); return -1; }
        } else {
            fprintf(stderr, "icount: unknown argument '%s'\n", argv[i]);
            return -1;
        }
    }
    setvbuf(out, NULL, _IOLBF, 0);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
    return 0;
}
