"""Built-in workloads load from pip packages, split into sites, and follow their schemas."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from lifelines.datasets import load_lung
from sklearn.datasets import load_breast_cancer, load_diabetes

from pet.errors import PetError
from pet.workloads import WORKLOADS, breast_cancer, diabetes, load, lung


def test_lung_sites_are_institutions_and_keep_every_patient() -> None:
    source = load_lung()
    by_institution = lung(None)
    assert len(by_institution.tables) == source.inst.nunique()
    sizes = {name: t.n_rows for name, t in by_institution.tables.items()}
    assert sizes["inst-1"] == (source.inst == 1).sum()
    assert by_institution.n_rows == len(source) == 228


@pytest.mark.parametrize("n_sites", [1, 3, 5, 18])
def test_lung_merges_institutions_into_balanced_sites(n_sites: int) -> None:
    workload = lung(n_sites)
    sizes = [t.n_rows for t in workload.tables.values()]
    assert len(sizes) == n_sites and sum(sizes) == 228
    if n_sites <= 5:
        assert max(sizes) - min(sizes) <= 36  # no site exceeds another by the largest inst


def test_lung_recodes_status_and_sex_like_the_source() -> None:
    source = load_lung()
    pooled = lung(3).pooled()
    assert pooled.dead.sum() == (source.status == 1).sum()
    assert (pooled.sex == "female").sum() == (source.sex == 2).sum()
    assert pooled.ph_ecog.isna().sum() == source["ph.ecog"].isna().sum()


def test_lung_is_lifelines_table_read_without_importing_lifelines() -> None:
    """The rows equal lifelines' own loader's, every value; loading them leaves lifelines
    unimported (a site serving lung starts over half a second sooner)."""
    pooled = lung(3).pooled()
    source = load_lung().rename(columns=lambda c: c.replace(".", "_"))
    keys = ["time", "age", "ph_karno", "meal_cal", "wt_loss"]
    mine = pooled.sort_values(keys).reset_index(drop=True)
    theirs = source.sort_values(keys).reset_index(drop=True)
    for column in ("time", "age", "ph_ecog", "ph_karno", "pat_karno", "meal_cal", "wt_loss"):
        np.testing.assert_array_equal(mine[column].to_numpy(float), theirs[column].to_numpy(float))
    modules = subprocess.run([sys.executable, "-c", "import sys; from pet.workloads import lung; "
                              "lung(3); print('lifelines' in sys.modules)"],
                             capture_output=True, text=True, check=True).stdout
    assert modules.strip() == "False"


def test_lung_rejects_impossible_site_counts() -> None:
    with pytest.raises(PetError, match=r"n_sites must be in \[1, 18\]"):
        lung(19)


def test_sklearn_workloads_carry_the_source_rows() -> None:
    cancer = breast_cancer(3).pooled()
    source = load_breast_cancer()
    assert cancer.shape == (569, 31)
    assert cancer.malignant.sum() == (source.target == 0).sum()
    np.testing.assert_allclose(np.sort(cancer.mean_radius), np.sort(source.data[:, 0]))
    sugar = diabetes(4).pooled()
    raw = load_diabetes(scaled=False)
    assert sugar.shape == (442, 11)
    np.testing.assert_allclose(np.sort(sugar.progression), np.sort(raw.target))


def test_row_splits_are_seeded_and_disjoint() -> None:
    first, again, other = breast_cancer(3, seed=5), breast_cancer(3, seed=5), breast_cancer(3, 6)
    frames = [t.to_frame() for t in first.tables.values()]
    assert all(a.equals(b.to_frame()) for a, b in zip(frames, again.tables.values(),
                                                       strict=True))
    assert not frames[0].equals(next(iter(other.tables.values())).to_frame())
    assert sum(len(f) for f in frames) == 569


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_workload_validates_against_its_packaged_schema(name: str) -> None:
    workload = load(name, **({"n_rows": 500, "n_sites": 2, "seed": 3} if name == "cohort"
                             else {}))
    for table in workload.tables.values():
        assert workload.schema.validate(table.to_frame()) == table.missing()


def test_unknown_workload_is_named() -> None:
    with pytest.raises(PetError, match="unknown workload 'heart'"):
        load("heart")
