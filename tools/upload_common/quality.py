"""How close an exported model stays to the model it came from: the same text through both, then
next-token distributions compared position by position (top-1 agreement, mean and p99 KL divergence,
and the perplexity of each on the text).
gguf-tool compares llama.cpp with transformers; merge-tool's quantized formats compare the
quantized checkpoint with the 16-bit merge, both through transformers. A model that computes NaN or
infinity is refused (``InvalidInput``): such figures never reach a manifest or a card."""

from __future__ import annotations

from .errors import InvalidInput
from .reference import logprobs  # noqa: F401 (the tools' one import for a model's log-probabilities)


def check_finite(values, which: str, todo: str) -> None:
    """Refuse log-probabilities [positions, vocab] holding NaN or infinity: the model is broken, and
    its top-1 and KL figures would be meaningless (argmax of a NaN row is 0 on both sides)."""
    import numpy as np

    bad = int((~np.isfinite(values)).any(-1).sum())
    if bad:
        raise InvalidInput(
            f"validation: the {which} model produces NaN/infinite log-probabilities at {bad} of "
            f"{values.shape[0]} positions: its weights are broken; {todo}",
            model=which,
            nonfinite_positions=bad,
            positions=int(values.shape[0]),
        )


def compare(ref, got, names: tuple[str, str] = ("reference", "exported"), ids=None) -> dict:
    """Top-1 agreement and KL(ref || got) per position of two [positions, vocab] log-probability
    arrays, and with the sequence's token ``ids`` the perplexity of each; ``names`` say which model each
    is in the error a non-finite value raises."""
    agreement = Agreement(names)
    agreement.add(ref, got, ids)
    return agreement.figures()


class Agreement:
    """The figures of one output against its reference, gathered chunk by chunk (the method of
    llama-perplexity --kl-divergence): top-1 agreement, mean, 99th-percentile and largest KL(ref || got),
    and, given the tokens, the perplexity of the reference and of the output on the text. Rows are taken
    a block at a time in float64, so a 128k vocabulary never needs more than a few tens of MB."""

    ROWS = 64

    def __init__(self, names: tuple[str, str] = ("reference", "exported")):
        self.names = names
        self.kl: list = []
        self.same = 0
        self.nll = [0.0, 0.0]  # negative log-likelihood of the text's next tokens: reference, output
        self.scored = 0

    def add(self, ref, got, ids=None) -> None:
        """One chunk: log-probabilities [positions, vocab] of both models, and the chunk's tokens."""
        import numpy as np

        for lo in range(0, ref.shape[0], self.ROWS):
            r = np.asarray(ref[lo : lo + self.ROWS], dtype=np.float64)
            g = np.asarray(got[lo : lo + self.ROWS], dtype=np.float64)
            check_finite(
                r, self.names[0], "re-make it from a sound adapter and base (merge-tool refuses NaN/infinite weights)"
            )
            check_finite(g, self.names[1], "the export lost the model's numbers: try another type or dtype")
            self.kl.append((np.exp(r) * (r - g)).sum(-1))
            self.same += int((r.argmax(-1) == g.argmax(-1)).sum())
            if ids is not None:
                nxt = np.asarray(ids[lo + 1 : lo + 1 + r.shape[0]], dtype=np.int64)
                rows = np.arange(len(nxt))
                self.nll[0] -= float(r[rows, nxt].sum())
                self.nll[1] -= float(g[rows, nxt].sum())
                self.scored += len(nxt)

    def figures(self) -> dict:
        import numpy as np

        kl = np.concatenate(self.kl)
        out = {
            "positions": int(kl.shape[0]),
            "top1_agreement": round(self.same / kl.shape[0], 4),
            "mean_kl": _figure(kl.mean()),
            "p99_kl": _figure(np.percentile(kl, 99)),
            "max_kl": _figure(kl.max()),
        }
        if self.scored:
            out["perplexity_reference"] = _ppl(self.nll[0] / self.scored)
            out["perplexity"] = _ppl(self.nll[1] / self.scored)
        return out


def _ppl(mean_nll: float) -> float:
    import math

    return float(f"{math.exp(min(mean_nll, 700.0)):.6g}")


def _figure(kl) -> float:
    """A KL divergence to four significant digits (a near-lossless export such as F16 can be under 5e-7,
    which a fixed six decimals would record as 0), never below 0 (float rounding of identical rows)."""
    return max(0.0, float(f"{float(kl):.4g}"))
