"""The training-loss curve as a PNG for the model card (matplotlib, no display needed).

The image is drawn in memory and then written in one go, so a full disk or a read-only folder is a
one-line known error (upload_common.errors.from_os_error) naming the file, never a traceback from
inside the image library, and no half-written PNG is left behind."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from upload_common.errors import from_os_error


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
            steps, values = zip(*points, strict=True)  # (step, loss) pairs
            ax.plot(steps, values, style, label=label, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    # no Software/date chunks: the same run gives the same bytes, so unchanged plots are not re-sent
    fig.savefig(buf, format="png", metadata={"Software": None})
    _write(Path(path), buf.getvalue())
    return True


def _write(path: Path, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        if exc.filename is None:
            exc.filename = str(path)
        known = from_os_error(exc, "writing the training-loss plot")
        if known is None:
            raise
        raise known from None
