"""The data card every synthetic release ships with: how it was made, what it cost, and
enough to make it again (JSON for machines, Markdown for people).

The card carries the noisy measurements themselves (DP releases: publishing them costs
no privacy), the discretization and the estimator's calls, so `refit` rebuilds the
same model from the card alone and, with its seed, the same rows. It carries no digest
of the input data: a digest lets someone who knows every row but one test guesses."""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pet.errors import PetError
from pet.mechanisms import epsilon_of
from pet.synth.discretize import Discretization
from pet.synth.marginal import NoisyMarginal
from pet.synth.model import Model
from pet.synth.synthesizer import Fit, replay, traced

LIBRARIES = ("pet", "numpy", "pandas", "opendp", "tenseal", "crypten", "torch")
AUDITED = ("each site that keeps an audit log holds one entry per step of the fit under "
           "this request; the first records that site's fingerprint of its data, which "
           "only the site keeps")
"""Where a card's fit is on record at the sites (the card itself holds no digest of data:
one would let someone who knows all rows but one test guesses)."""


@dataclass(frozen=True)
class Release:
    """Who measured a fit: the sites' names, the backend, and the sampling seed and size."""

    sites: tuple[str, ...]
    backend: str
    seed: int
    rows: int


def card(fit: Fit, release: Release) -> dict[str, Any]:
    """The data card of a synthetic release as a JSON-ready dictionary."""
    budget = [{"step": s.step, "cliques": [list(c) for c in s.cliques], "rho": s.rho}
              for s in fit.spends]
    return {
        "method": fit.method,
        "made": datetime.now(UTC).isoformat(timespec="seconds"),
        "privacy": {
            "charged": {"epsilon": fit.epsilon, "delta": fit.delta},
            "rho_spent": fit.rho,
            "spent_as": {"epsilon": epsilon_of(fit.rho, fit.delta), "delta": fit.delta},
            "accounting": "ρ-zCDP, composed by adding ρ, reported as (ε, δ) by OpenDP",
            "itemised": budget,
        },
        "measured": [{"clique": list(m.clique), "cells": int(m.values.size),
                      "sigma": m.sigma, "counts": m.values.tolist(),
                      "scale": None if m.scale is None else m.scale.tolist()}
                     for m in fit.measurements],
        "settings": dict(fit.settings),
        "estimation": [{"measurements": seen, "iterations": iterations, "warm": warm}
                       for seen, iterations, warm in fit.trace],
        "sites": list(release.sites),
        "backend": release.backend,
        "audit": {"request": fit.request, "entries": AUDITED} if fit.request else None,
        **fit.discretization.to_dict(),
        "seed": release.seed,
        "rows": release.rows,
        "versions": {"python": platform.python_version(), **_versions(),
                     "pet_commit": commit()},
        "evaluation": None,
    }


def refit(data: dict[str, Any]) -> tuple[Discretization, Model]:
    """The discretization and model a card's release was sampled from, rebuilt from the
    card's measurements and estimator calls (`pet.synth.synthesizer.replay`)."""
    if not data.get("estimation"):
        raise PetError("this data card records no estimator calls (made by an older pet); "
                       "it cannot be refitted")
    discretization = Discretization.from_dict(data)
    measured = [NoisyMarginal(tuple(m["clique"]), np.asarray(m["counts"]), m["sigma"],
                              None if m["scale"] is None else np.asarray(m["scale"]))
                for m in data["measured"]]
    trace = traced([[c["measurements"], c["iterations"], *([c["warm"]] if "warm" in c else [])]
                    for c in data["estimation"]])
    from pet.synth import SYNTHESIZERS  # the package imports this module

    method = SYNTHESIZERS.get(data.get("method", ""))
    if method is None:
        raise PetError(f"this data card's method {data.get('method')!r} is none of "
                       f"{sorted(SYNTHESIZERS)}; it cannot be refitted")
    return discretization, replay(discretization.domain(), measured, trace, method.prepared)


def resample(data: dict[str, Any], rows: int | None = None,
             seed: int | None = None) -> pd.DataFrame:
    """The card's release again (its rows and seed, unless others are given)."""
    discretization, model = refit(data)
    rows = data["rows"] if rows is None else rows
    seed = data["seed"] if seed is None else seed
    return Fit(data["method"], model, discretization, (), (), 0.0, 0.0).sample(rows, seed=seed)


def markdown(data: dict[str, Any]) -> str:
    """The data card for people: what was made, how, at what privacy cost."""
    privacy = data["privacy"]
    lines = [
        f"# Data card: synthetic {data['schema']['name']} ({data['method'].upper()})",
        "",
        f"- **Rows**: {data['rows']:,}, sampled with seed {data['seed']}",
        f"- **Made**: {data['made']} from {len(data['sites'])} site(s) "
        f"({', '.join(data['sites'])}) under `{data['backend']}`",
        f"- **Privacy**: (ε = {privacy['charged']['epsilon']:g}, δ = "
        f"{privacy['charged']['delta']:g}) charged to every site's ledger; "
        f"ρ = {privacy['rho_spent']:.6g} spent (= ε {privacy['spent_as']['epsilon']:.4g} "
        f"at that δ); {privacy['accounting']}",
        "- **Versions**: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()),
        *([f"- **On record**: request `{data['audit']['request']}`: "
           f"{data['audit']['entries']}"] if data.get("audit") else []),
        "",
        "## Budget, step by step",
        "",
        "| # | step | cliques | ρ |",
        "|---:|---|---|---:|",
    ]
    lines += [f"| {i} | {s['step']} | {_cliques(s['cliques'])} | {s['rho']:.4g} |"
              for i, s in enumerate(privacy["itemised"], 1)]
    lines += _measured_twice(privacy["itemised"])
    lines += ["", "## Marginals measured", "", "| clique | cells | noise sd |", "|---|---:|---:|"]
    lines += [f"| {' × '.join(m['clique'])} | {m['cells']} | {m['sigma']:.3g} |"
              for m in data["measured"]]
    lines += ["", "## Schema and public bins", ""]
    for column in data["schema"]["columns"]:
        bins = data["bins"].get(column["name"])
        where = f"{len(bins) - 1} bins on [{bins[0]:g}, {bins[-1]:g}]" if bins else "its levels"
        merged = data["merged"].get(column["name"])
        if merged:
            rare = [level for level, new in enumerate(merged) if new == max(merged)]
            split = ("by the shares "
                     + ", ".join(f"{data['shares'][column['name']][v]:.3g}" for v in rare)
                     if column["name"] in data.get("shares", {}) else "uniformly")
            where += (f"; levels {', '.join(map(str, rare))} merged, being rare in the "
                      f"noisy 1-way counts, and sampled back among them {split}")
        lines.append(f"- `{column['name']}` ({column['type']}): {where}")
    if data["evaluation"]:
        found = data["evaluation"]
        lines += ["", "## Evaluation", "", "| pillar | verdict | numbers |", "|---|---|---|"]
        lines += [f"| {v['pillar']} | {v['grade']} | {v['numbers']} |" for v in found["verdicts"]]
        lines += ["", f"The full report: [{found['report']}]({found['report']})"]
    return "\n".join(lines) + "\n"


def _measured_twice(itemised: list[dict[str, Any]]) -> list[str]:
    """A line that says why the columns were measured twice, where they were: the first
    release showed their signal faint (`pet.synth.allocation`)."""
    columns = [i for i, s in enumerate(itemised, 1)
               if s["step"] == "measure" and all(len(c) == 1 for c in s["cliques"])]
    if len(columns) < 2 or itemised[columns[0] - 1]["cliques"] != itemised[columns[1] - 1][
            "cliques"]:
        return []
    return ["", f"Steps {columns[0]} and {columns[1]} measure every column: the first release "
            "showed the signal faint (fewer rows than noise in an average cell of the "
            "workload's cliques at the budget left), so a second was pooled with it."]


def write(data: dict[str, Any], folder: str | Path) -> tuple[Path, Path]:
    """Write card.json and card.md into a folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    as_json, as_markdown = folder / "card.json", folder / "card.md"
    as_json.write_text(json.dumps(data, indent=2) + "\n")
    as_markdown.write_text(markdown(data))
    return as_json, as_markdown


def _cliques(cliques: list[list[str]]) -> str:
    shown = ", ".join("×".join(c) for c in cliques[:4])
    return shown + (f", … ({len(cliques)} in all)" if len(cliques) > 4 else "")


def commit() -> str | None:
    """The git commit of pet's source, where it runs from a checkout (None otherwise)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, cwd=Path(__file__).resolve().parent, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
