#!/usr/bin/env python3
"""Folds `perf script` output (perf record -g / --call-graph dwarf) into stacks
("root;...;leaf count" lines), the input of any flame graph tool.

usage: perf script -i perf.data | fold.py > stacks.folded
"""
import re
import sys
from collections import Counter

FRAME = re.compile(r"^\s*[0-9a-f]+ (.*?)(?:\+0x[0-9a-f]+)? \(([^)]*)\)$")


def frames_of(lines):
    for line in lines:
        m = FRAME.match(line)
        if m:
            name = m.group(1)
            if name == "[unknown]":
                continue
            yield name


def main():
    stacks = Counter()
    block = []
    for line in sys.stdin:
        line = line.rstrip("\n")
        if line.strip() == "":
            if block:
                header, rest = block[0], block[1:]
                comm = header.split()[0] if header.split() else "?"
                names = list(frames_of(rest))
                names.reverse()
                stacks[";".join([comm] + names)] += 1
            block = []
        else:
            block.append(line)
    for stack, n in stacks.most_common():
        print(f"{stack} {n}")


if __name__ == "__main__":
    main()
