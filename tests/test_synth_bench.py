"""The synthesizer benchmark's held-out tables and scores: codes any generator can take,
a fixed split, TVD against numpy's own counts, and TSTR against a known signal."""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks.synth import (
    DATASETS,
    HELDOUT,
    codes_of,
    fidelity,
    heldout_codes,
    paired,
    tstr,
)


def test_a_held_out_table_is_coded_once_and_split_the_same_way() -> None:
    train, test = heldout_codes("kidney_transplant")
    again, _ = heldout_codes("kidney_transplant")
    pd.testing.assert_frame_equal(train, again)
    assert len(train) + len(test) == 863 and 0.65 < len(train) / 863 < 0.75
    assert (train.to_numpy() >= 0).all() and train["age"].nunique() <= 11  # 10 bins
    discretization, real = codes_of(DATASETS["kidney_transplant"]())
    assert real.shape == train.shape and (real == train.to_numpy()).all()
    assert list(discretization.schema.names) == list(train.columns)


def test_tvd_is_zero_for_the_same_rows_and_one_for_rows_that_share_no_cell() -> None:
    discretization, real = codes_of(DATASETS["kidney_transplant"]())
    domain = discretization.domain()
    assert fidelity(real, real, domain) == {"tvd1": 0.0, "tvd2": 0.0, "tvd3": 0.0}
    death = list(domain.attributes).index(HELDOUT["kidney_transplant"][1])
    flipped = real.copy()
    flipped[:, death] = 1 - flipped[:, death]
    scores = fidelity(real, flipped, domain)
    expected = np.abs(np.bincount(real[:, death], minlength=2)
                      - np.bincount(flipped[:, death], minlength=2)).sum() / 2 / len(real)
    assert np.isclose(scores["tvd1"], expected / len(domain))


def test_tstr_finds_the_signal_of_real_rows_and_none_in_one_class() -> None:
    discretization, real = codes_of(DATASETS["lymph_node"]())
    names = list(discretization.schema.names)
    assert tstr("lymph_node", real, names)["tstr_auc"] > 0.85  # deaths follow recurrence
    outcome = names.index(HELDOUT["lymph_node"][1])
    one_class = real.copy()
    one_class[:, outcome] = 0
    assert tstr("lymph_node", one_class, names) == {"tstr_auc": 0.5}
    assert tstr("lung", real, names) == {}


def test_the_paired_comparison_pools_cells_as_pandas_does() -> None:
    rng = np.random.default_rng(3)
    rows = [{"impl": impl, "dataset": dataset, "method": "aim", "epsilon": 1.0, "delta": 1e-9,
             "status": "ok", "tvd2": rng.uniform(0, 0.3), "tstr_auc": rng.uniform(0.5, 0.9)}
            for dataset in ("a", "b", "c") for impl in ("pet", "mbi") for _ in range(3)]
    rows.append({**rows[0], "status": "timeout"})  # unfinished runs are left out
    groups: dict = {}
    for row in rows:
        key = (row["dataset"], row["method"], row["epsilon"], row["delta"])
        groups.setdefault(key, {}).setdefault(row["impl"], []).append(row)
    frame = pd.DataFrame([r for r in rows if r["status"] == "ok"])
    stats = frame.groupby(["dataset", "impl"])["tvd2"].agg(["mean", "var", "count"]).unstack()
    gaps = stats["mean"]["pet"] - stats["mean"]["mbi"]
    error = np.sqrt((stats["var"] / stats["count"]).sum(axis=1).sum()) / len(gaps)
    line = next(x for x in paired(groups).splitlines() if "2-way TVD" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:4] == ["aim", "mbi", "2-way TVD", "3"]
    assert float(cells[4]) == round(gaps.mean(), 4) and float(cells[5]) == round(error, 4)
    assert int(cells[6]) == int((gaps < 0).sum())
