#!/usr/bin/env python3
"""Counts the SASS instruction mix of the tensor-core kernels' K/V inner loop (issue 13's model).

Input: `cuobjdump -sass` text of one CUBIN (scripts/sass_model.sh makes it). For every kernel
whose name starts with `attn_fwd_tc_` (prefill) or `attn_split_tc_` (split-KV decode, the same
loop over its split's tiles) it finds the K/V loop and counts its instructions by class.

The K/V loop, defined on the SASS alone: a loop is a backward branch (`BRA` to a lower address)
with the range [target, branch]; the K/V loop is the range holding the most HMMA, the narrowest
of those on a tie. Its body is what one pass through it can execute: the instructions that lie
on a path from the loop head to that backward branch using forward edges only (fall-through,
forward branches and `CALL.REL.NOINC`, a jump ptxas uses to leave a loop). A cold block the compiler placed inside the range but which leaves it by
another edge (the non-finite-V path re-enters the loop by a second backward branch) is
therefore not counted; an inner loop's body is (once). The counts are static (each instruction
once); `@!PT` instructions (never executed, scheduling fillers) and NOPs are not counted.

Usage:
  sass_model.py table SASS_FILE LABEL          prints the table rows (one per kernel)
  sass_model.py check COMMITTED_TABLE NEW_TABLE  fails if a kernel's HMMA share dropped >10%
  sass_model.py dump SASS_FILE KERNEL          prints the loop's instructions (for a reader)
"""
import re
import sys

TC_PREFIXES = ("attn_fwd_tc_", "attn_split_tc_")
INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
FUNC = re.compile(r"Function : (\S+)")
# Counted classes: (column name, opcode prefixes). An opcode counts in the first class it matches.
CLASSES = [
    ("hmma", ("HMMA",)),
    ("ldsm", ("LDSM",)),
    ("ldgsts", ("LDGSTS",)),
    ("lds", ("LDS",)),
    ("ldg", ("LDG",)),
    ("sts", ("STS",)),
    ("stg", ("STG",)),
    ("shfl", ("SHFL",)),
    ("bar", ("BAR",)),
    ("mufu", ("MUFU",)),
]
COLUMNS = ["insns"] + [c for c, _ in CLASSES] + ["hmma_share_pct", "loop_start", "loop_end"]


def parse(text):
    """{kernel: [(address, predicate, opcode, operands)]} in address order."""
    funcs, cur = {}, None
    for line in text.splitlines():
        m = FUNC.search(line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        m = INSN.search(line)
        if m and cur is not None:
            body = m.group(2).strip()
            pred = ""
            if body.startswith("@"):
                pred, body = body.split(None, 1)
            op, _, rest = body.partition(" ")
            cur.append((int(m.group(1), 16), pred, op, rest.strip()))
    return funcs


def counted(insns):
    return [i for i in insns if i[1] != "@!PT" and not i[2].startswith("NOP")]


def kv_loop(insns):
    """(start, end) addresses of the K/V loop, or None when no loop holds an HMMA."""
    hmma_at = [a for a, p, op, _ in counted(insns) if op.startswith("HMMA")]
    best = None
    for addr, pred, op, rest in insns:
        if not op.startswith("BRA") or pred == "@!PT":
            continue
        m = re.search(r"0x([0-9a-f]+)", rest)
        if not m:
            continue
        target = int(m.group(1), 16)
        if target >= addr:
            continue
        n = sum(target <= a <= addr for a in hmma_at)
        key = (n, -(addr - target))
        if n and (best is None or key > best[0]):
            best = (key, (target, addr))
    return best[1] if best else None


def target_of(rest):
    m = re.search(r"0x([0-9a-f]+)", rest)
    return int(m.group(1), 16) if m else None


def loop_body(insns, span):
    """The instructions of `span` on a forward path from its head to its latch (see above)."""
    head, latch = span
    idx = [k for k, i in enumerate(insns) if head <= i[0] <= latch]
    where = {insns[k][0]: k for k in idx}
    succ = {}
    for k in idx:
        addr, pred, op, rest = insns[k]
        out = []
        uncond = pred in ("", "@PT")
        # CALL.REL.NOINC pushes no return address: ptxas uses it as a jump out of a loop.
        if op.startswith(("BRA", "CALL.REL.NOINC")) and pred != "@!PT":
            t = target_of(rest)
            if t is not None and addr < t <= latch:
                out.append(where[t])
            if not uncond and addr != latch:
                out.append(k + 1)
        elif op.startswith(("EXIT", "RET")) and uncond:
            pass
        elif addr != latch:
            out.append(k + 1)
        succ[k] = [j for j in out if j in where.values() or j in succ or head <= insns[j][0] <= latch]
    fwd, todo = set(), [idx[0]]
    while todo:
        k = todo.pop()
        if k not in fwd:
            fwd.add(k)
            todo.extend(succ.get(k, []))
    pred_of = {}
    for k, outs in succ.items():
        for j in outs:
            pred_of.setdefault(j, []).append(k)
    back, todo = set(), [idx[-1]]
    while todo:
        k = todo.pop()
        if k not in back:
            back.add(k)
            todo.extend(pred_of.get(k, []))
    return [insns[k] for k in sorted(fwd & back)]


def loop_counts(insns):
    span = kv_loop(insns)
    if span is None:
        return None
    body = [i for i in counted(loop_body(insns, span))]
    row = {"insns": len(body)}
    for name, _ in CLASSES:
        row[name] = 0
    for _, _, op, _ in body:
        for name, prefixes in CLASSES:
            if op.startswith(prefixes):
                row[name] += 1
                break
    row["hmma_share_pct"] = f"{100.0 * row['hmma'] / max(row['insns'], 1):.2f}"
    row["loop_start"], row["loop_end"] = f"{span[0]:#x}", f"{span[1]:#x}"
    return row


def table(path, label):
    funcs = parse(open(path).read())
    rows = []
    for name in sorted(funcs):
        if not name.startswith(TC_PREFIXES):
            continue
        row = loop_counts(funcs[name])
        if row is None:
            sys.exit(f"{label} {name}: no loop holds an HMMA")
        rows.append(" ".join([name, label] + [str(row[c]) for c in COLUMNS]))
    if not rows:
        sys.exit(f"{path}: no attn_fwd_tc_* or attn_split_tc_* kernel")
    return rows


def read_table(path):
    out = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        f = line.split()
        out[(f[0], f[1])] = dict(zip(COLUMNS, f[2:]))
    return out


def check(committed_path, new_path):
    committed, new = read_table(committed_path), read_table(new_path)
    bad = []
    for key, row in committed.items():
        if key not in new:
            bad.append(f"{key[0]} {key[1]}: in the committed table, not in this compile")
            continue
        was, now = float(row["hmma_share_pct"]), float(new[key]["hmma_share_pct"])
        if now < 0.9 * was:
            bad.append(f"{key[0]} {key[1]}: inner-loop HMMA share {now:.2f}% < 90% of the committed {was:.2f}%")
    for key in new.keys() - committed.keys():
        bad.append(f"{key[0]} {key[1]}: not in the committed table (GA_BLESS=1 to add it)")
    for b in bad:
        print("sass_model:", b, file=sys.stderr)
    return not bad


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "table":
        print("\n".join(table(sys.argv[2], sys.argv[3])))
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        sys.exit(0 if check(sys.argv[2], sys.argv[3]) else 1)
    elif len(sys.argv) == 4 and sys.argv[1] == "dump":
        insns = parse(open(sys.argv[2]).read())[sys.argv[3]]
        span = kv_loop(insns)
        body = set(i[0] for i in loop_body(insns, span)) if span else set()
        for a, p, op, rest in insns:
            if span and span[0] <= a <= span[1]:
                print(f"{a:#07x} {'  ' if a in body else 'X '}{p:6} {op} {rest}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
