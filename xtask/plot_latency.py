"""Latency distributions of a `cargo xtask bench` run, one panel per (workload, policies,
mode, connections), one line per peer: the median over the repetitions of each percentile.

x is the percentile on a log scale of 1/(1-p), so that 90%, 99%, 99.9% and 99.99% are evenly
spaced and the tail is as visible as the middle; y is the latency, log scale.

Usage: python plot_latency.py results.json latency.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# One colour per peer, the same in every panel.
COLOURS = {
    "direct": "#7f7f7f",
    "nginx": "#2ca02c",
    "haproxy": "#1f77b4",
    "envoy": "#9467bd",
    "ringwall": "#d62728",
}
TICKS = [50.0, 90.0, 99.0, 99.9, 99.99]


def x_of(percentile):
    return 1.0 / (1.0 - percentile / 100.0)


def panels(medians):
    """(workload, policies, mode, conns) -> [(peer, [(p, us)])], in the order first seen."""
    out = {}
    for row in medians:
        points = [(p, us) for p, us in row.get("percentiles", []) if p < 100.0 and us > 0]
        if not points:
            continue
        key = (row["scenario"], row.get("policies", "none"), row["mode"], row["conns"])
        out.setdefault(key, []).append((row["peer"], points))
    return out


def main(results_path, png_path):
    with open(results_path) as f:
        doc = json.load(f)
    groups = panels(doc.get("medians", []))
    if not groups:
        sys.exit("no percentile points in " + results_path)
    conns = sorted({key[3] for key in groups})
    rows = []
    for key in groups:
        if key[:3] not in rows:
            rows.append(key[:3])
    fig, axes = plt.subplots(
        len(rows),
        len(conns),
        figsize=(5.5 * len(conns), 3.6 * len(rows)),
        squeeze=False,
    )
    for r, row in enumerate(rows):
        for c, conn in enumerate(conns):
            ax = axes[r][c]
            lines = groups.get(row + (conn,))
            if not lines:
                ax.set_visible(False)
                continue
            for peer, points in lines:
                ax.plot(
                    [x_of(p) for p, _ in points],
                    [us / 1000.0 for _, us in points],
                    marker=".",
                    label=peer,
                    color=COLOURS.get(peer),
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks([x_of(p) for p in TICKS])
            ax.set_xticklabels(["%g%%" % p for p in TICKS])
            ax.minorticks_off()
            ax.grid(True, which="major", alpha=0.3)
            workload, policies, mode = row
            ax.set_title("%s, policies %s, %s, %d conns" % (workload, policies, mode, conn))
            ax.set_xlabel("percentile")
            ax.set_ylabel("latency (ms)")
            ax.legend(fontsize="small")
    settings = doc.get("settings", {})
    fig.suptitle(
        "wrk -t1, %s s per run, median of %s runs per percentile"
        % (settings.get("duration_s", "?"), settings.get("reps", "?"))
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / max(1, len(rows)) / 3.6))
    fig.savefig(png_path, dpi=90)
    print("plot: " + png_path)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
