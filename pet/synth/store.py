"""A fit on disk: `fit.json` (method, privacy, discretization and merged levels,
measurements' cliques and noise, the model's cliques) and `fit.npz` (the arrays), so
that sampling can happen later, elsewhere, without the sites."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pet.errors import PetError
from pet.synth.discretize import Discretization
from pet.synth.junction_tree import junction_tree
from pet.synth.marginal import NoisyMarginal
from pet.synth.measure import Spend
from pet.synth.model import Model
from pet.synth.synthesizer import Fit, traced


def save(fit: Fit, folder: str | Path) -> Path:
    """Write the fit into `folder` (made if missing); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = fit.model
    described = {
        "method": fit.method, "epsilon": fit.epsilon, "delta": fit.delta,
        **fit.discretization.to_dict(),
        "cliques": [list(c) for c in model.cliques], "total": model.total,
        "measurements": [{"clique": list(m.clique), "sigma": m.sigma}
                         for m in fit.measurements],
        "spends": [{"step": s.step, "cliques": [list(c) for c in s.cliques], "rho": s.rho}
                   for s in fit.spends],
        "trace": [list(call) for call in fit.trace],
        "settings": dict(fit.settings),
        "request": fit.request,
    }
    (folder / "fit.json").write_text(json.dumps(described, indent=1) + "\n")
    arrays = {f"potential{i}": p for i, p in enumerate(model.potentials)}
    arrays |= {f"measured{i}": m.values for i, m in enumerate(fit.measurements)}
    arrays |= {f"scale{i}": m.scale for i, m in enumerate(fit.measurements)
               if m.scale is not None}
    np.savez_compressed(folder / "fit.npz", **arrays)
    return folder


def load(folder: str | Path) -> Fit:
    """The fit saved in `folder`, or an error naming what is missing."""
    folder = Path(folder)
    try:
        described = json.loads((folder / "fit.json").read_text())
        arrays = np.load(folder / "fit.npz")
    except FileNotFoundError as missing:
        raise PetError(f"{folder} holds no saved fit ({missing.filename} is missing); "
                       "make one with `pet synth fit`") from None
    discretization = Discretization.from_dict(described)
    domain = discretization.domain()
    cliques = [tuple(c) for c in described["cliques"]]
    model = Model(domain, junction_tree(domain, cliques), tuple(cliques),
                  tuple(arrays[f"potential{i}"] for i in range(len(cliques))),
                  described["total"])
    measured = tuple(NoisyMarginal(tuple(m["clique"]), arrays[f"measured{i}"], m["sigma"],
                                   arrays.get(f"scale{i}"))
                     for i, m in enumerate(described["measurements"]))
    spends = tuple(Spend(s["step"], tuple(tuple(c) for c in s["cliques"]), s["rho"])
                   for s in described["spends"])
    return Fit(described["method"], model, discretization, measured, spends,
               described["epsilon"], described["delta"],
               traced(described.get("trace", [])),
               described.get("settings", {}), described.get("request", ""))
