#!/usr/bin/env python3
"""Finds the NEON gemm microkernel's inner loops in an aarch64 assembly listing (argv[1]) and
writes each, one instruction per line, to argv[2]/<kind>.s for llvm-mca.

A loop is a single basic block that ends in a branch back to its own label. Kinds (by their
FMAs, `FMLA Vd.4S, Vn.4S, Vm.S[lane]`):
  rows     72 by-lane FMAs into 18 accumulators per pass (A by rows: 6 rows x 3 vectors x 4
           steps of k), `gemm`
  at_f32   24 by-lane FMAs into 24 accumulators (A transposed: 6 rows x 4 vectors), B in f32,
           `gemm_at`
  at_f16   the same with B widened by FCVTL
  at_bf16  the same with B widened by USHLL/SHLL
The first loop of each kind is kept (the inlined copies are the same code).
"""
import os
import re
import sys

src, out_dir = sys.argv[1], sys.argv[2]
lines = open(src).read().splitlines()
label_re = re.compile(r"^(\.?L[\w$.]+|[\w$.]+):")
branch_re = re.compile(r"^\s*(b(\.\w+)?|cbn?z|tbn?z)\s+.*?([.\w$]+)\s*$")
lane_fma = re.compile(r"^\s*fmla\s+v\d+\.4s,\s*v\d+\.4s,\s*v\d+\.s\[\d\]")

labels = {}
for i, line in enumerate(lines):
    m = label_re.match(line)
    if m:
        labels[m.group(1)] = i

found = {}
for j, line in enumerate(lines):
    m = branch_re.match(line)
    if not m or m.group(3) not in labels:
        continue
    i = labels[m.group(3)]
    if i >= j:
        continue
    body = []
    single_block = True
    for l in lines[i + 1 : j + 1]:
        s = l.split("//")[0].strip()
        if not s or s.startswith("."):
            continue  # directives (.loc, .p2align, ...)
        if label_re.match(s):
            single_block = False
            break
        body.append(s)
    if not single_block:
        continue
    fmas = [s for s in body if lane_fma.match(s)]
    accumulators = len({s.split()[1] for s in fmas})
    text = "\n".join(body)
    if len(fmas) == 72 and accumulators == 18:
        kind = "rows"
    elif len(fmas) == 24 and accumulators == 24:
        if "fcvtl" in text:
            kind = "at_f16"
        elif "shll" in text:
            kind = "at_bf16"
        else:
            kind = "at_f32"
    else:
        continue
    if kind not in found:
        found[kind] = body

os.makedirs(out_dir, exist_ok=True)
for kind, body in sorted(found.items()):
    with open(os.path.join(out_dir, kind + ".s"), "w") as f:
        f.write("\n".join(body) + "\n")
    print(kind, len(body), "instructions")
missing = {"rows", "at_f32"} - set(found)
if missing:
    sys.exit("inner loops not found: " + ", ".join(sorted(missing)))
