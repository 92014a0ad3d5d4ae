"""A release rebuilt from its data card alone: the same model, and with the card's seed
the same rows, from the noisy measurements and the estimator's calls it records."""

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
from pet.synth import AIM, MST, Curator, Discretization, Release, card
from pet.synth.card import refit, resample
from pet.synth.synthesizer import Synthesizer, traced
from pet.table import FrameTable
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
    pet("refit", str(tmp_path / "release" / "card.json"), "--out", str(tmp_path / "again.csv"))
    released = (tmp_path / "release" / "synthetic.csv").read_text()
    assert (tmp_path / "again.csv").read_text() == released
    data = json.loads((tmp_path / "release" / "card.json").read_text())
    assert data["estimation"] and all("counts" in m for m in data["measured"])
    assert "pet_commit" in data["versions"]
