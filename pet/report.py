"""Human-readable text for results: one-line answers and aligned tables for terminals."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from pet.queries import (
    CoxFit,
    LinearFit,
    LogisticFit,
    PoissonFit,
    SurvivalCurve,
    TableOneResult,
)
from pet.result import Result


def number(value: float) -> str:
    """A number to four significant digits."""
    return f"{value:.4g}"


def summarize(value: Any) -> str:
    """The answer of a query on one line (a Table 1 as its aligned text)."""
    if isinstance(value, TableOneResult):
        return value.to_text()
    if isinstance(value, LinearFit | LogisticFit):
        terms = [f"{name} {number(c)} (SE {number(s)})"
                 for name, c, s in zip(value.names, value.coef, value.total_se(), strict=True)]
        extra = f"R²={value.r2:.3f}" if isinstance(value, LinearFit) else _rounds(value)
        return "; ".join([*terms, extra])
    if isinstance(value, PoissonFit):
        terms = [f"{name} RR {number(r)} [{number(lo)}, {number(hi)}]"
                 for name, r, lo, hi in zip(value.names, *value.ratios(), strict=True)]
        return "; ".join([*terms, _rounds(value)])
    if isinstance(value, CoxFit):
        terms = [f"{name} HR {number(r)} [{number(lo)}, {number(hi)}]"
                 for name, r, lo, hi in zip(value.names, *value.ratios(), strict=True)]
        tests = f"C={value.concordance:.3f}; LR p={value.likelihood_ratio().p:.3g}"
        return "; ".join([*terms, f"{value.events} events", tests])
    if isinstance(value, SurvivalCurve):
        return "; ".join(f"S({t:g})={number(s)} [{number(lo)}, {number(hi)}]" for t, s, lo, hi
                         in zip(value.times, value.survival, value.lower, value.upper,
                                strict=True) if np.isfinite(t))
    if isinstance(value, np.ndarray):
        if value.ndim == 2:
            return "; ".join("[" + ", ".join(number(v) for v in row) + "]" for row in value)
        return "[" + ", ".join(number(v) for v in np.ravel(value)) + "]"
    if isinstance(value, int | np.integer):
        return str(value)
    if isinstance(value, float | np.floating):
        return number(float(value))
    return str(value)


def _rounds(value: LogisticFit | PoissonFit) -> str:
    """A Newton fit's rounds and whether it converged."""
    status = "converged" if value.converged else "NOT converged"
    return f"{value.iterations} rounds, {status}"


def with_interval(result: Result) -> str:
    """The answer on one line, a DP answer of a few numbers followed by their 95%
    intervals from its noise (where the answer without noise lies)."""
    text = summarize(result.value)
    if result.interval is None or np.size(result.interval[0]) > MAX_SHOWN:
        return text
    low, high = result.interval
    ends = "; ".join(f"[{number(lo)}, {number(hi)}]" for lo, hi in zip(low, high, strict=True))
    return f"{text}; 95% interval {ends}"


MAX_SHOWN = 8
"""The most numbers of an answer whose intervals the one-line text shows."""


def result_row(result: Result) -> list[str]:
    """The cells of one result in `RESULT_HEADERS` order; under DP, n and the missing
    counts are noisy counts and say so."""
    noisy = " (noisy)" if result.privacy.differentially_private else ""
    missing = f"{sum(result.missing.values())}{noisy}" if result.missing else "none"
    if result.clipped:
        missing += f"; clipped {sum(result.clipped.values())}{noisy}"
    return [result.query, with_interval(result), f"{result.n}{noisy}", missing,
            bound_cell(result), f"{result.latency_s * 1000:.1f}", str(result.bytes_total)]


def bound_cell(result: Result) -> str:
    """Each number's error bound, in the answer's order and units, where there are few;
    the largest ("≤ …") where there are many."""
    bounds = np.asarray(result.error_bounds)
    if not np.any(bounds):
        return "0"
    if bounds.size > MAX_SHOWN:
        return f"≤ {result.error_bound:.2g}"
    return "; ".join(f"{b:.2g}" for b in bounds)


RESULT_HEADERS = ("query", "answer", "n", "missing", "± bound", "ms", "bytes")
"""`± bound`: each number's error bound in its own units (0: exact; under DP the 95%
half-width); `missing`: rows left out for a missing value, counted for the nullable
columns read."""


def table(rows: Sequence[Sequence[str]], headers: Sequence[str], *,
          widest: int = 64) -> str:
    """An aligned plain-text table; cells longer than `widest` wrap at '; ' onto extra
    lines (and the query column at 48)."""
    wrapped = [[_wrap(cell, widest if i else 48) for i, cell in enumerate(row)]
               for row in rows]
    widths = [max([len(h)] + [len(line) for row in wrapped for line in row[i]])
              for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
           "  ".join("-" * w for w in widths)]
    for row in wrapped:
        for k in range(max(len(cell) for cell in row)):
            line = [cell[k] if k < len(cell) else "" for cell in row]
            out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return "\n".join(out)


def _wrap(text: str, width: int) -> list[str]:
    """Pack the '; '-separated pieces of `text` into lines of at most `width` where they
    can be; a piece longer than a line is wrapped at spaces."""
    if "\n" in text:  # already laid out in lines (a Table 1): kept as it is
        return text.split("\n")
    lines: list[str] = []
    for piece in text.split("; "):
        if lines and len(lines[-1]) + 2 + len(piece) <= width:
            lines[-1] += "; " + piece
        else:
            lines.extend(textwrap.wrap(piece, width) or [""])
    return lines
