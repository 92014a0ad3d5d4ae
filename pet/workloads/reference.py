"""Real health data that ships inside pip packages: lung (lifelines), breast_cancer and
diabetes (scikit-learn). Nothing is downloaded at run time.

scikit-learn is imported inside its loaders, and lifelines' table is read from the file
the package ships without importing lifelines: importing either takes over half a
second, which every process that only needs the generated cohort, and a site serving
lung at its start, would otherwise pay.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from pet.errors import PetError
from pet.table import FrameTable
from pet.workloads.base import Workload, packaged_schema


def lung(n_sites: int | None = 3) -> Workload:
    """NCCTG lung cancer, 228 patients, split into sites by treating institution.

    With `n_sites=None` every institution is its own site (18 of them, some with 2–6
    patients); otherwise institutions are merged, largest first into the currently
    smallest site, into `n_sites` sites of similar size. The one patient whose
    institution is unknown joins the smallest site, so no row is dropped.
    """
    frame = pd.read_csv(shipped_file("lifelines", "datasets", "lung.csv"))
    frame = frame.rename(columns=lambda c: c.replace(".", "_"))
    frame = frame.assign(
        dead=frame["status"] == 1,
        sex=frame["sex"].map({1: "male", 2: "female"}),
    )
    institutions = frame.pop("inst")
    schema = packaged_schema("lung")
    frame = frame[list(schema.names)]
    groups = _institution_groups(institutions, n_sites)
    tables = {name: FrameTable(frame[mask].reset_index(drop=True), schema)
              for name, (_, mask) in groups.items()}
    members = "; ".join(f"{name} = institutions {', '.join(map(str, insts))} "
                        f"({int(mask.sum())} patients)" for name, (insts, mask) in groups.items())
    return Workload("lung", schema, tables,
                    f"NCCTG advanced lung cancer by institution ({members})")


def shipped_file(package: str, *parts: str) -> Path:
    """A data file that an installed package ships, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PetError(f"the {package} package, which ships this data, is not installed")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def _institution_groups(institutions: pd.Series,
                        n_sites: int | None) -> dict[str, tuple[list[int], np.ndarray]]:
    """Institutions and row mask per site: one institution each, or merged into n_sites."""
    known = institutions.dropna().astype(int)
    sizes = known.value_counts().sort_values(ascending=False, kind="stable")
    if n_sites is None:
        groups = {f"inst-{i}": [i] for i in sorted(sizes.index)}
    else:
        if not 1 <= n_sites <= len(sizes):
            raise PetError(f"lung has {len(sizes)} institutions: n_sites must be in "
                           f"[1, {len(sizes)}], got {n_sites}")
        groups = {f"site-{k + 1}": [] for k in range(n_sites)}
        totals = dict.fromkeys(groups, 0)
        for inst, size in sizes.items():
            target = min(totals, key=lambda g: (totals[g], g))
            groups[target].append(inst)
            totals[target] += size
    masks = {name: institutions.isin(insts).to_numpy() for name, insts in groups.items()}
    smallest = min(masks, key=lambda g: (masks[g].sum(), g))
    masks[smallest] = masks[smallest] | institutions.isna().to_numpy()
    return {name: (sorted(groups[name]), masks[name]) for name in groups}


def split_rows(frame: pd.DataFrame, n_sites: int, seed: int) -> list[pd.DataFrame]:
    """Rows shuffled with `seed` and dealt into `n_sites` parts of near-equal size."""
    if not 1 <= n_sites <= len(frame):
        raise PetError(f"n_sites must be in [1, {len(frame)}], got {n_sites}")
    order = np.random.default_rng(seed).permutation(len(frame))
    return [frame.iloc[np.sort(part)].reset_index(drop=True)
            for part in np.array_split(order, n_sites)]


def _split_workload(name: str, frame: pd.DataFrame, n_sites: int, seed: int,
                    description: str) -> Workload:
    schema = packaged_schema(name)
    parts = split_rows(frame[list(schema.names)], n_sites, seed)
    tables = {f"site-{k + 1}": FrameTable(part, schema) for k, part in enumerate(parts)}
    return Workload(name, schema, tables, description)


def breast_cancer(n_sites: int = 3, seed: int = 0) -> Workload:
    """Wisconsin diagnostic breast cancer, 569 × 30 + diagnosis, rows dealt into sites."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" ", "_"))
    frame["malignant"] = frame.pop("target") == 0  # scikit-learn codes malignant as 0
    return _split_workload("breast_cancer", frame, n_sites, seed,
                           "Wisconsin diagnostic breast cancer, rows dealt at random")


def diabetes(n_sites: int = 3, seed: int = 0) -> Workload:
    """scikit-learn's diabetes progression data, 442 × 10 + outcome, rows dealt into sites."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True, scaled=False)
    frame = data.frame.rename(columns={"s1": "tc", "s2": "ldl", "s3": "hdl", "s4": "tch",
                                       "s5": "ltg", "s6": "glu", "target": "progression"})
    frame["sex"] = frame["sex"].astype(int)
    return _split_workload("diabetes", frame, n_sites, seed,
                           "diabetes progression, rows dealt at random")
