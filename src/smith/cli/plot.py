"""``smith report jobs --plot FILE``: queue wait and job duration over time and by runner class, as PNG or SVG
(by the file's suffix), drawn with matplotlib (imported only here, only when a plot is asked for)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smith.cli.reportdata import duration, percentile, queue_wait
from smith.errors import InvalidInput

FORMATS = {".png": "png", ".svg": "svg"}


def plot_jobs(jobs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Four panels: queue wait and duration over time (a point per job, coloured by class), and their p50/p95
    per class. Raises ``InvalidInput`` for a suffix other than .png or .svg."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInput(f"--plot {path}: use a .png or .svg file name")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[str, list[tuple[datetime, float]]]] = defaultdict(lambda: {"wait": [], "duration": []})
    for j in jobs:
        cls = str(j.get("runner_class", ""))
        when = datetime.fromtimestamp(float(j.get("created_at") or 0), UTC)
        if (w := queue_wait(j)) is not None:
            series[cls]["wait"].append((when, w))
        if (d := duration(j)) is not None:
            series[cls]["duration"].append((when, d))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    for row, (key, title) in enumerate((("wait", "queue wait (s)"), ("duration", "job duration (s)"))):
        over_time, by_class = axes[row][0], axes[row][1]
        for cls, s in sorted(series.items()):
            if s[key]:
                xs, ys = zip(*sorted(s[key]), strict=True)
                over_time.plot(xs, ys, marker="o", markersize=3, linestyle="", label=cls)
        over_time.set_title(f"{title} over time")
        over_time.set_ylabel("seconds")
        if any(s[key] for s in series.values()):
            over_time.legend(fontsize="small")
        classes = sorted(c for c, s in series.items() if s[key])
        p50 = [percentile([v for _, v in series[c][key]], 50) or 0.0 for c in classes]
        p95 = [percentile([v for _, v in series[c][key]], 95) or 0.0 for c in classes]
        xs_ = range(len(classes))
        by_class.bar([x - 0.2 for x in xs_], p50, width=0.4, label="p50")
        by_class.bar([x + 0.2 for x in xs_], p95, width=0.4, label="p95")
        by_class.set_xticks(list(xs_), classes, fontsize="small")
        by_class.set_title(f"{title} by runner class")
        by_class.legend(fontsize="small")
    fig.autofmt_xdate()
    fig.suptitle(f"Smith: {len(jobs)} jobs")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt)
    plt.close(fig)
    return path
