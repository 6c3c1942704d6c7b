#!/usr/bin/env python3
"""Render timeline CSVs as PNG plots.

Each CSV has a `second` column and, per scaler (or run), `<name>_visible`, `<name>_in_flight`,
`<name>_desired`, `<name>_ready`. Usage: plot_timelines.py FILE.csv [...] (writes FILE.png).
Run through scripts/plot.sh, which installs matplotlib into a git-ignored virtualenv.
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(path: str) -> str:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{path}: no rows")
    names = [c.removesuffix("_desired") for c in rows[0] if c.endswith("_desired")]
    t = [float(r["second"]) for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    for name in names:
        backlog = [float(r[f"{name}_visible"]) + float(r[f"{name}_in_flight"]) for r in rows]
        top.plot(t, backlog, label=f"{name}: visible + in flight")
        line, = bottom.plot(t, [float(r[f"{name}_desired"]) for r in rows], label=f"{name}: desired")
        bottom.plot(t, [float(r[f"{name}_ready"]) for r in rows], linestyle="--",
                    color=line.get_color(), label=f"{name}: ready")
    title = path.rsplit("/", 1)[-1].removesuffix(".csv")
    top.set_title(f"{title}: backlog and replicas over time")
    top.set_ylabel("messages")
    bottom.set_ylabel("pods")
    bottom.set_xlabel("seconds")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out = path.removesuffix(".csv") + ".png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for p in sys.argv[1:]:
        print(plot(p))
