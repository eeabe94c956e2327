"""The plot of a single thread's run for the HTML report: tokens per rollout, and each rollout's answer against
the cumulative tokens (green when right, red when wrong, grey when the gold answer is not known)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

COLORS = {True: "#1a7f37", False: "#cf222e", None: "#6e7781"}


def plot_thread(rollouts: Sequence[Mapping[str, Any]], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    chosen = [r for r in rollouts if r["chosen"]] or list(rollouts)
    xs = [r["iteration"] for r in chosen]
    prompt = [r["prompt_tokens"] for r in chosen]
    completion = [r["completion_tokens"] for r in chosen]
    cumulative: list[int] = []
    for p, c in zip(prompt, completion, strict=True):
        cumulative.append((cumulative[-1] if cumulative else 0) + p + c)
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6))
    left.bar(xs, prompt, label="prompt", color="#8c959f")
    left.bar(xs, completion, bottom=prompt, label="completion", color="#0969da")
    left.set_xlabel("rollout")
    left.set_ylabel("tokens")
    left.legend(frameon=False)
    right.plot(cumulative, [0] * len(cumulative), color="#d0d7de", zorder=1)
    for x, y, rollout in zip(xs, cumulative, chosen, strict=True):
        right.scatter([y], [0], color=COLORS[rollout["correct"]], s=80, zorder=2)
        right.annotate(str(rollout["answer"])[:16], (y, 0), textcoords="offset points", xytext=(0, 10 + 14 * (x % 2)))
    right.set_yticks([])
    right.set_xlabel("cumulative tokens (each rollout's answer)")
    for axis in (left,):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
