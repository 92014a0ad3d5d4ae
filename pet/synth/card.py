"""The data card every synthetic release ships with: how it was made, what it cost, and
enough to make it again (JSON for machines, Markdown for people)."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pet.mechanisms import epsilon_of
from pet.synth.synthesizer import Fit

LIBRARIES = ("pet", "numpy", "pandas", "opendp", "tenseal", "crypten", "torch")


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
                      "sigma": m.sigma} for m in fit.measurements],
        "sites": list(release.sites),
        "backend": release.backend,
        "schema": fit.discretization.schema.to_dict(),
        "bins": {name: list(edges) for name, edges in fit.discretization.edges.items()},
        "merged": {name: list(m) for name, m in fit.discretization.merged.items()},
        "seed": release.seed,
        "rows": release.rows,
        "versions": {"python": platform.python_version(), **_versions()},
        "evaluation": None,
    }


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
        "",
        "## Budget, step by step",
        "",
        "| # | step | cliques | ρ |",
        "|---:|---|---|---:|",
    ]
    lines += [f"| {i} | {s['step']} | {_cliques(s['cliques'])} | {s['rho']:.4g} |"
              for i, s in enumerate(privacy["itemised"], 1)]
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
            where += (f"; levels {', '.join(map(str, rare))} merged, being rare in the "
                      "noisy 1-way counts, and sampled back uniformly among them")
        lines.append(f"- `{column['name']}` ({column['type']}): {where}")
    if data["evaluation"]:
        found = data["evaluation"]
        lines += ["", "## Evaluation", "", "| pillar | verdict | numbers |", "|---|---|---|"]
        lines += [f"| {v['pillar']} | {v['grade']} | {v['numbers']} |" for v in found["verdicts"]]
        lines += ["", f"The full report: [{found['report']}]({found['report']})"]
    return "\n".join(lines) + "\n"


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


def _versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
