#!/usr/bin/env python3
"""Draws a folded-stacks file (fold.py) as a flame graph SVG: one box per frame,
width = share of samples, hover for name and share. No zoom, no search: enough to see
where the time goes.

usage: flamegraph.py "title" < stacks.folded > graph.svg
"""
import html
import sys
import zlib

WIDTH, ROW, MIN_PX = 1800, 16, 0.3


def build(lines):
    root = {"n": 0, "kids": {}}
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        count = int(count)
        node = root
        node["n"] += count
        for name in stack.split(";"):
            node = node["kids"].setdefault(name, {"n": 0, "kids": {}})
            node["n"] += count
    return root


def color(name):
    h = zlib.crc32(name.encode())
    if "[kernel" in name or name.startswith(("__x64_sys", "entry_SYSCALL", "tcp_", "do_syscall")):
        return f"rgb(230,{120 + h % 60},{40 + h % 40})"
    if name.startswith("tokio::"):
        return f"rgb({90 + h % 50},{150 + h % 60},230)"
    if name.startswith("pgwarden::"):
        return f"rgb({200 + h % 55},{80 + h % 60},{60 + h % 40})"
    return f"rgb({200 + h % 55},{170 + h % 60},{60 + h % 50})"


def main():
    title = sys.argv[1] if len(sys.argv) > 1 else "flame graph"
    root = build(sys.stdin)
    total = root["n"] or 1
    out, depth_max = [], [0]

    def draw(node, name, x, depth):
        w = node["n"] / total * (WIDTH - 20)
        if w < MIN_PX:
            return
        depth_max[0] = max(depth_max[0], depth)
        share = 100.0 * node["n"] / total
        label = html.escape(name)
        out.append((depth, x, w, label, share, color(name)))
        cx = x
        for kid_name, kid in sorted(node["kids"].items()):
            draw(kid, kid_name, cx, depth + 1)
            cx += kid["n"] / total * (WIDTH - 20)

    draw(root, "all", 10, 0)
    height = (depth_max[0] + 1) * ROW + 50
    print(f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
          f'font-family="monospace" font-size="11">')
    print(f'<rect width="100%" height="100%" fill="#fafafa"/>')
    print(f'<text x="10" y="20" font-size="15">{html.escape(title)} ({total} samples)</text>')
    for depth, x, w, label, share, fill in out:
        y = height - 10 - (depth + 1) * ROW
        chars = int(w / 6.6)
        text = label if len(label) <= chars else (label[: max(chars - 2, 0)] + ".." if chars > 3 else "")
        print(f'<g><title>{label} ({share:.2f}%)</title>'
              f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{ROW - 1}" fill="{fill}"/>'
              f'<text x="{x + 2:.1f}" y="{y + 11}">{text}</text></g>')
    print("</svg>")


if __name__ == "__main__":
    main()
