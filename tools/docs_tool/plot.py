"""The training-loss curve as a PNG for the model card (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def loss_curve(summary: dict | None, path: Path, title: str) -> bool:
    """Draw training (and evaluation) loss against step; False when the run logged no loss."""
    summary = summary or {}
    train = [(s, v) for s, v in summary.get("loss_history") or [] if s is not None and v is not None]
    evals = [(s, v) for s, v in summary.get("eval_loss_history") or [] if s is not None and v is not None]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    ax = fig.add_subplot()
    for points, label, style in ((train, "training loss", "-"), (evals, "evaluation loss", "o--")):
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, style, label=label, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    # no Software/date chunks: the same run gives the same bytes, so unchanged plots are not re-sent
    fig.savefig(path, format="png", metadata={"Software": None})
    return True
