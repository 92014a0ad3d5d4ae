"""A fit's noisy marginals exported for other generators: the files hold exactly the
measurements, labelled on the public domain, and read back into an estimator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pet.errors import PetError
from pet.ledger import Ledger
from pet.site import Site
from pet.synth import MST, Curator, Discretization, estimate
from pet.synth.export import export, read
from pet.synth.synthesizer import Fit
from pet.table import FrameTable
from pet.workloads import Workload


@pytest.fixture(scope="module")
def fitted(lung3: Workload, tmp_path_factory: pytest.TempPathFactory) -> Fit:
    folder = tmp_path_factory.mktemp("export")
    site = Site("lung", FrameTable(lung3.pooled(), lung3.schema),
                ledger=Ledger(folder / "ledger.sqlite"))
    site.ledger.set_budget(site.dataset, 1.0, 1e-6)
    with Curator(site, Discretization.of(lung3.schema), epsilon=1.0, delta=1e-6) as measurer:
        return MST().fit(measurer)


def test_the_files_hold_every_measured_cell(fitted: Fit, tmp_path: Path) -> None:
    folder = export(fitted, tmp_path)
    cells = pd.read_parquet(folder / "marginals.parquet")
    described = json.loads((folder / "marginals.json").read_text())
    assert described["format"] == "pet-marginals/1" and described["method"] == "mst"
    assert len(cells) == sum(m.values.size for m in fitted.measurements)
    for number, measured in enumerate(fitted.measurements):
        rows = cells[cells["measurement"] == number]
        np.testing.assert_array_equal(rows["count"], measured.values)
        np.testing.assert_array_equal(rows["sd"], measured.sd)
        assert described["measurements"][number]["clique"] == list(measured.clique)
        outside = [c for c in fitted.discretization.schema.names if c not in measured.clique]
        assert rows[outside].isna().all().all()


def test_cells_are_labelled_so_a_reader_needs_no_pet(fitted: Fit, lung3: Workload,
                                                     tmp_path: Path) -> None:
    """With only pandas: the noisy counts of sex per level are the real counts within
    five noise SDs, and numeric bins, missing values and merged levels carry readable
    labels."""
    folder = export(fitted, tmp_path)
    cells = pd.read_parquet(folder / "marginals.parquet")
    columns = {c["name"]: c for c in json.loads((folder / "marginals.json").read_text())
               ["columns"]}
    assert columns["sex"]["levels"] == ["male", "female"]
    # every original level once, rare ones merged by MST into one label
    parts = [p for label in columns["ph_ecog"]["levels"] for p in label.split(" | ")]
    assert sorted(parts) == ["0", "1", "2", "3", "4", "missing"]
    bins = [p for label in columns["time"]["levels"] for p in label.split(" | ")]
    assert len(bins) == len(set(bins)) and sum(b.startswith("[0, ") for b in bins) == 1
    assert sum(b.endswith("]") for b in bins) == 1
    for name, column in columns.items():  # a share per original level of a merged column
        merged = fitted.discretization.merged.get(name)
        assert column["shares"] == list(fitted.discretization.shares.get(name, ()))
        assert len(column["shares"]) in ((0,) if merged is None else (0, len(merged)))
    number = next(i for i, m in enumerate(fitted.measurements) if m.clique == ("sex",))
    rows = cells[cells["measurement"] == number]
    labels = [columns["sex"]["levels"][level] for level in rows["sex"]]
    real = lung3.pooled()["sex"].value_counts()[labels].to_numpy()
    assert np.all(np.abs(rows["count"].to_numpy() - real) <= 5 * rows["sd"].to_numpy())


def test_the_marginals_read_back_into_an_estimator(fitted: Fit, tmp_path: Path) -> None:
    domain, marginals, records = read(export(fitted, tmp_path))
    assert domain == fitted.discretization.domain() and records == fitted.model.total
    for got, want in zip(marginals, fitted.measurements, strict=True):
        assert got.clique == want.clique and got.sigma == want.sigma
        np.testing.assert_array_equal(got.values, want.values)
        np.testing.assert_allclose(got.sd, want.sd, rtol=1e-15)
    again = estimate(domain, marginals, total=records, iterations=100)
    first = estimate(domain, list(fitted.measurements), total=records, iterations=100)
    np.testing.assert_allclose(again.project(("sex", "dead")), first.project(("sex", "dead")))


def test_the_command_line_exports_a_saved_fit(tmp_path: Path) -> None:
    def pet(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pet", "synth", *args],
                              capture_output=True, text=True, timeout=300)

    assert pet("fit", "--workload", "lung", "--method", "mst", "--epsilon", "1",
               "--out", str(tmp_path / "fit")).returncode == 0
    done = pet("export", str(tmp_path / "fit"), "--out", str(tmp_path / "marginals"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "marginals" / "marginals.parquet").exists()
    missing = pet("export", str(tmp_path / "nothing"), "--out", str(tmp_path / "m2"))
    assert missing.returncode != 0 and "holds no saved fit" in missing.stderr


def test_a_folder_without_marginals_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(PetError, match="holds no exported marginals"):
        read(tmp_path)
