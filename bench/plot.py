"""Draws kvtier-bench's transfer table: GB/s against block size, one line per tier and op,
with the limit measured in the same run as a dashed line. Usage: plot.py RESULTS.json OUT.png"""

import json
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("plot.py needs matplotlib: apt-get install python3-matplotlib")


def main(src, out):
    rows = [r for r in json.load(open(src))["rows"] if r["kind"] == "transfer"]
    if not rows:
        sys.exit("no transfer rows in " + src)
    fig, ax = plt.subplots(figsize=(8, 5))
    series = sorted({(r["tier"], r["op"], r["threads"]) for r in rows})
    for tier, op, threads in series:
        pts = sorted((r["block"], r["gbps"]) for r in rows
                     if (r["tier"], r["op"], r["threads"]) == (tier, op, threads))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                label=f"{tier} {op} ({threads} thr)")
    for tier, threads in sorted({(r["tier"], r["threads"]) for r in rows}):
        mine = [r for r in rows if (r["tier"], r["threads"]) == (tier, threads)]
        lim = sorted({(r["block"], r["limit_gbps"]) for r in mine if r["limit_gbps"]})
        if not lim:  # the limit was not measured (its tool missing): no line
            continue
        ax.plot([p[0] for p in lim], [p[1] for p in lim], linestyle="--",
                label=f"{tier}: {mine[0]['limit']} limit ({threads} thr)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("block size (bytes)")
    ax.set_ylabel("GB/s")
    ax.set_title(f"kvtier transfer, batch of {rows[0]['batch']} blocks")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print("wrote", out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
