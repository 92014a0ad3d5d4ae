"""A release rebuilt from its data card alone: the same model, and with the card's seed
the same rows, from the noisy measurements and the estimator's calls it records."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pet.audit import AuditLog
from pet.errors import PetError
from pet.ledger import Ledger
from pet.site import Site
from pet.synth import AIM, MST, Curator, Discretization, Release, card
from pet.synth.card import commit, markdown, refit, resample
from pet.synth.measure import Federation
from pet.synth.synthesizer import Synthesizer, traced
from pet.table import CsvTable, FrameTable
from pet.workloads import Workload


@pytest.mark.parametrize("synthesizer", [MST(iterations=200), AIM(iterations=200)],
                         ids=["mst", "aim"])
def test_a_card_rebuilds_the_model_and_the_rows(lung3: Workload, tmp_path: Path,
                                                synthesizer: Synthesizer) -> None:
    site = Site("lung", FrameTable(lung3.pooled(), lung3.schema),
                ledger=Ledger(tmp_path / "ledger.sqlite"))
    site.ledger.set_budget(site.dataset, 1.0, 1e-6)
    with Curator(site, Discretization.of(lung3.schema), epsilon=1.0, delta=1e-6) as measurer:
        fitted = synthesizer.fit(measurer)
    assert len(fitted.trace) >= 2  # warm-started calls, replayed in order
    assert fitted.trace[0][2] is False and all(warm for _, _, warm in fitted.trace[1:-1])
    data = json.loads(json.dumps(card(fitted, Release(("lung",), "dp", 3, 300))))
    discretization, model = refit(data)
    assert discretization.domain() == fitted.discretization.domain()
    for got, want in zip(model.potentials, fitted.model.potentials, strict=True):
        np.testing.assert_array_equal(got, want)
    pd.testing.assert_frame_equal(resample(data), fitted.sample(300, seed=3))
    assert not {"digest", "hash", "fingerprint"} & set(data)  # nothing that tests guesses
    assert data["settings"]["iterations"] == 200


def test_the_trace_says_which_estimator_calls_started_from_the_last_model() -> None:
    """AIM's last fit starts afresh; a card from before the flag replays as a chain."""
    assert traced([[3, 100], [5, 100], [5, 1000]]) == (
        (3, 100, False), (5, 100, True), (5, 1000, True))
    assert traced([[3, 100, False], [5, 1000, False]]) == ((3, 100, False), (5, 1000, False))


def test_a_card_without_estimator_calls_is_refused_by_name() -> None:
    with pytest.raises(PetError, match="records no estimator calls"):
        refit({"estimation": []})


def test_the_command_line_refits_a_release_from_its_card(tmp_path: Path) -> None:
    def pet(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "pet", "synth", *args],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done

    pet("fit", "--workload", "lung", "--method", "mst", "--epsilon", "1",
        "--out", str(tmp_path / "fit"))
    pet("sample", str(tmp_path / "fit"), "--rows", "120", "--seed", "2",
        "--out", str(tmp_path / "release" / "synthetic.csv"))
    done = pet("refit", str(tmp_path / "release" / "card.json"), "--out",
               str(tmp_path / "again.csv"))
    released = (tmp_path / "release" / "synthetic.csv").read_text()
    assert (tmp_path / "again.csv").read_text() == released
    assert "warning" not in done.stderr
    data = json.loads((tmp_path / "release" / "card.json").read_text())
    assert data["estimation"] and all("counts" in m for m in data["measured"])
    here = commit()
    assert here is not None and data["versions"]["pet_commit"] == here  # run in a checkout
    # A card made at another commit refits, with a warning that the rows may differ.
    data["versions"]["pet_commit"] = "f" * 40
    (tmp_path / "older.json").write_text(json.dumps(data))
    again = pet("refit", str(tmp_path / "older.json"), "--out", str(tmp_path / "older.csv"))
    assert "made by pet at commit ffffffffffff" in again.stderr


def _audited(name: str, frame: pd.DataFrame, workload: Workload, folder: Path) -> Site:
    site = Site(name, FrameTable(frame, workload.schema),
                ledger=Ledger(folder / f"{name}.sqlite"), audit=AuditLog(folder / f"{name}.audit"))
    site.ledger.set_budget(site.dataset, 2.0, 1e-6)
    return site


def test_each_site_keeps_its_data_fingerprint_where_the_card_points(
        lung3: Workload, tmp_path: Path) -> None:
    """The card names the request; each site's first audit entry under it holds that
    site's fingerprint, and the card holds none."""
    sites = [_audited(name, table.to_frame(), lung3, tmp_path)
             for name, table in lung3.tables.items()]
    with Federation(sites, Discretization.of(lung3.schema, bins=6), epsilon=1.0,
                    delta=1e-6) as measurer:
        fitted = MST(iterations=100).fit(measurer)
    data = card(fitted, Release(tuple(s.name for s in sites), "he+dp", 0, 100))
    assert data["audit"]["request"] == fitted.request == measurer.request
    printed = json.dumps(data) + markdown(data)
    for site in sites:
        entries = [e for e in site.audit.entries() if e.request == fitted.request]
        assert len(entries) == len(fitted.spends)  # one per step, all under the request
        fingerprint = site.table.fingerprint()
        assert f"data fingerprint {fingerprint};" in entries[0].detail
        assert not any("fingerprint" in e.detail for e in entries[1:])
        assert fingerprint not in printed
    assert len({s.table.fingerprint() for s in sites}) == len(sites)


def test_a_curators_selection_is_audited_with_its_charge(lung3: Workload,
                                                          tmp_path: Path) -> None:
    site = _audited("lung", lung3.pooled(), lung3, tmp_path)
    with Curator(site, Discretization.of(lung3.schema, bins=6), epsilon=1.0,
                 delta=1e-6) as measurer:
        fitted = MST(iterations=100).fit(measurer)
    entries = [e for e in site.audit.entries() if e.request == fitted.request]
    selections = [e for e in entries if e.detail.startswith("selected at this site")]
    assert len(selections) == sum(s.step == "select" for s in fitted.spends) > 0
    assert sum(e.epsilon for e in entries) == 1.0  # the fit's one charge, once
    assert f"data fingerprint {site.table.fingerprint()};" in entries[0].detail


def test_a_fingerprint_follows_the_values_not_the_file(lung3: Workload, tmp_path: Path) -> None:
    """The same rows give the same fingerprint from a frame or a CSV file, read in one
    chunk or many; a changed value, or a rewritten file, another."""
    frame = lung3.pooled()
    frame.to_csv(tmp_path / "lung.csv", index=False)
    in_memory = FrameTable(frame, lung3.schema).fingerprint()
    from_file = CsvTable(tmp_path / "lung.csv", lung3.schema)
    assert from_file.fingerprint(chunk_rows=7) == in_memory
    assert FrameTable(frame, lung3.schema).fingerprint(chunk_rows=50) == in_memory
    changed = frame.copy()
    changed.loc[17, "age"] += 1
    assert FrameTable(changed, lung3.schema).fingerprint() != in_memory
    changed.to_csv(tmp_path / "lung.csv", index=False)
    assert from_file.fingerprint() == FrameTable(changed, lung3.schema).fingerprint()


def test_a_card_of_a_fit_without_a_request_claims_no_audit_entries(
        lung3: Workload, tmp_path: Path) -> None:
    site = Site("lung", FrameTable(lung3.pooled(), lung3.schema),
                ledger=Ledger(tmp_path / "ledger.sqlite"))
    site.ledger.set_budget(site.dataset, 1.0, 1e-6)
    with Curator(site, Discretization.of(lung3.schema, bins=6), epsilon=1.0,
                 delta=1e-6) as measurer:
        fitted = MST(iterations=50).fit(measurer)
    older = dataclasses.replace(fitted, request="")  # as loaded from an older pet's store
    data = card(older, Release(("lung",), "dp", 0, 10))
    assert data["audit"] is None and "On record" not in markdown(data)
    assert "On record" in markdown(card(fitted, Release(("lung",), "dp", 0, 10)))
