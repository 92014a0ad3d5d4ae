"""The evaluator: its metrics against independent references (pandas, numpy,
statsmodels), and its sanity on tables whose answer is known. A copy of the training
rows must score near-perfect fidelity and fail privacy badly; independent column
shuffles must keep every 1-way marginal, destroy 2-way structure and score safe on
privacy; a DP synthesizer at ε = 1 must land in between. These guard against silently
meaningless numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from pet.errors import PetError
from pet.evaluate import Evaluation, evaluate, split, write_report
from pet.evaluate.features import Features
from pet.evaluate.fidelity import marginal_tvd
from pet.evaluate.privacy import Rate, Risk
from pet.evaluate.utility import interval_overlap
from pet.ledger import Ledger
from pet.site import Site
from pet.synth import MST, Curator, Discretization, Release
from pet.synth.card import card as data_card
from pet.synth.card import write
from pet.table import FrameTable
from pet.workloads import Workload, breast_cancer, cohort


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 20 000-patient cohort split 70/30, with a copy, a shuffle and an MST release."""
    folder = tmp_path_factory.mktemp("evaluate")
    workload = cohort(20_000, 1, 0, directory=folder / "cohort")
    train, holdout = split(workload.pooled(), 0.7, seed=0)
    rng = np.random.default_rng(1)
    shuffled = pd.DataFrame({c: train[c].to_numpy()[rng.permutation(len(train))]
                             for c in train.columns})
    site = Site("train", FrameTable(train, workload.schema),
                ledger=Ledger(folder / "ledger.sqlite"))
    site.ledger.set_budget(site.dataset, 1.0, 1e-6)
    with Curator(site, Discretization.of(workload.schema), epsilon=1.0,
                 delta=1e-6) as measurer:
        released = MST().fit(measurer).sample(len(train), seed=0)
    return {"schema": workload.schema, "train": train, "holdout": holdout,
            "copy": train.copy(), "shuffle": shuffled, "dp": released}


@pytest.fixture(scope="module")
def evaluations(tables: dict) -> dict[str, Evaluation]:
    return {name: evaluate(tables["train"], tables["holdout"], tables[name], tables["schema"])
            for name in ("copy", "shuffle", "dp")}


def test_a_copy_is_faithful_useful_and_not_private(evaluations: dict) -> None:
    copy = evaluations["copy"]
    assert copy.fidelity.tvd == {1: 0.0, 2: 0.0, 3: 0.0}
    assert copy.fidelity.summary()["correlation_gap_max"] == pytest.approx(0.0, abs=1e-12)
    assert copy.utility.synthetic.auc == pytest.approx(copy.utility.real.auc)
    assert copy.utility.summary()["same_sign"] == 1.0
    assert copy.privacy.closer_to_train == 1.0 and copy.privacy.dcr_excess == 1.0
    assert copy.privacy.mia_advantage > 0.9
    risks = {r.attack: r for r in copy.privacy.risks}
    assert risks["attribute inference"].interval[0] > 0.5
    assert risks["linkability"].interval[0] > 0.1
    assert [v.grade for v in copy.verdicts()] == ["close", "close", "high risk"]


def test_shuffled_columns_keep_1_way_lose_2_way_and_are_safe(evaluations: dict) -> None:
    shuffle, copy = evaluations["shuffle"], evaluations["copy"]
    assert shuffle.fidelity.tvd[1] == 0.0  # a permutation keeps every value
    assert shuffle.fidelity.tvd[2] > 0.03 and shuffle.fidelity.tvd[3] > shuffle.fidelity.tvd[2]
    # Independent columns carry no signal about the outcome.
    assert shuffle.utility.synthetic.auc < 0.56 < copy.utility.synthetic.auc
    assert shuffle.privacy.mia_advantage < 0.15
    assert shuffle.privacy.dcr_excess < 0.1
    assert all(r.risk < 0.1 for r in shuffle.privacy.risks)
    assert shuffle.verdicts()[2].grade != "high risk"


def test_a_dp_synthesizer_lands_in_between(evaluations: dict) -> None:
    dp, copy, shuffle = evaluations["dp"], evaluations["copy"], evaluations["shuffle"]
    assert copy.fidelity.tvd[2] < dp.fidelity.tvd[2] < shuffle.fidelity.tvd[2]
    assert shuffle.utility.synthetic.auc < dp.utility.synthetic.auc < copy.utility.synthetic.auc
    assert dp.privacy.mia_advantage < 0.15 < copy.privacy.mia_advantage
    assert dp.privacy.dcr_excess < 0.1
    # The release's noise is OpenDP's, fresh each run: no attack may beat its control by
    # 0.1 beyond its 95% interval (by chance well under 1 time in 1000 at 500 targets).
    assert all(r.interval[0] < 0.1 for r in dp.privacy.risks)
    assert dp.verdicts()[2].grade != "high risk"


def test_marginal_tvd_is_pandas_crosstab_tvd(tables: dict) -> None:
    schema, train, released = tables["schema"], tables["train"], tables["dp"]
    discretization = Discretization.of(schema)
    a, b = discretization.encode(train), discretization.encode(released)
    i, j = schema.names.index("sex"), schema.names.index("smoking")
    real = pd.crosstab(train["sex"], train["smoking"], normalize=True)
    synthetic = pd.crosstab(released["sex"], released["smoking"], normalize=True)
    expected = 0.5 * (real - synthetic.reindex_like(real).fillna(0)).abs().to_numpy().sum()
    assert marginal_tvd(a, b, (i, j), discretization.domain().sizes) == pytest.approx(expected)


def test_distances_to_closest_record_are_brute_force_l1(tables: dict) -> None:
    schema = tables["schema"]
    train, holdout = tables["train"].iloc[:300], tables["holdout"].iloc[:200]
    released = tables["dp"].iloc[:150]
    found = evaluate(train, holdout, released, schema).privacy
    features = Features(schema)
    x, t, h = (features.matrix(f) for f in (released, train, holdout))
    to_train = np.abs(x[:, None, :] - t[None, :, :]).sum(axis=2).min(axis=1)
    to_holdout = np.abs(x[:, None, :] - h[None, :, :]).sum(axis=2).min(axis=1)
    np.testing.assert_allclose(found.dcr_train, to_train, atol=1e-12)
    np.testing.assert_allclose(found.dcr_holdout, to_holdout, atol=1e-12)
    assert found.expected_closer == pytest.approx(300 / 500)


@pytest.mark.parametrize(("successes", "trials"), [(0, 50), (7, 50), (480, 500), (50, 50)])
def test_the_wilson_interval_is_statsmodels(successes: int, trials: int) -> None:
    assert Rate(successes, trials).interval() == pytest.approx(
        proportion_confint(successes, trials, alpha=0.05, method="wilson"), abs=1e-12)


def test_risk_is_the_success_beyond_the_control_scaled() -> None:
    risk = Risk("x", "", Rate(60, 100), Rate(20, 100), Rate(1, 100))
    assert risk.risk == pytest.approx((0.6 - 0.2) / 0.8)
    # Newcombe's hybrid score interval of the difference, by statsmodels, over 1 − control.
    low, high = confint_proportions_2indep(60, 100, 20, 100, method="newcomb")
    assert risk.interval == pytest.approx((low / 0.8, high / 0.8), abs=1e-9)
    assert risk.significant
    assert not Risk("x", "", Rate(9, 68), Rate(5, 68), Rate(1, 68)).significant
    assert risk.better_than_random
    assert Risk("x", "", Rate(10, 100), Rate(30, 100), Rate(1, 100)).risk == 0.0


def test_interval_overlap_by_hand() -> None:
    assert interval_overlap((0, 2), (0, 2)) == 1.0
    assert interval_overlap((0, 2), (3, 4)) == 0.0
    assert interval_overlap((0, 2), (1, 5)) == pytest.approx(0.5 * (1 / 2 + 1 / 4))


def test_the_report_and_the_data_card_link(tables: dict, evaluations: dict,
                                          tmp_path: Path) -> None:
    paths = write_report(evaluations["dp"], tmp_path / "report", real=tables["train"],
                         synthetic=tables["dp"])
    text = paths["markdown"].read_text()
    assert text.startswith("# Synthetic cohort: evaluation")
    for pillar in ("**Fidelity**", "**Utility**", "**Privacy**"):
        assert pillar in text.split("\n## ")[0]  # the verdict table comes first
    for name in ("correlation", "distributions", "membership", "calibration", "survival"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name}.png)" in text
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 5 and "<table>" in page
    summary = json.loads(paths["summary"].read_text())
    assert summary["tvd2"] == pytest.approx(evaluations["dp"].fidelity.tvd[2])


def test_the_command_line_evaluates_and_links_the_card(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pet.cli import main

    workload: Workload = breast_cancer(1)
    train, holdout = split(workload.pooled(), 0.7, seed=0)
    paths = {}
    for name, frame in (("train", train), ("holdout", holdout), ("synthetic", train)):
        paths[name] = tmp_path / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    site = Site("train", FrameTable(train, workload.schema),
                ledger=Ledger(tmp_path / "ledger.sqlite"))
    site.ledger.set_budget(site.dataset, 1.0, 1e-6)
    with Curator(site, Discretization.of(workload.schema), epsilon=1.0,
                 delta=1e-6) as measurer:
        fitted = MST(iterations=100).fit(measurer)
    card, _ = write(data_card(fitted, Release(("train",), "dp", 0, len(train))),
                    tmp_path / "release")
    assert main(["evaluate", "--workload", "breast_cancer", "--train", str(paths["train"]),
                 "--holdout", str(paths["holdout"]), "--synthetic", str(paths["synthetic"]),
                 "--out", str(tmp_path / "report"), "--card", str(card), "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    assert reported["report"]["html"] == str(tmp_path / "report" / "report.html")
    linked = json.loads(card.read_text())["evaluation"]
    assert reported["verdicts"] == linked["verdicts"]
    assert linked["report"] == "../report/report.html"
    assert [v["pillar"] for v in linked["verdicts"]] == ["Fidelity", "Utility", "Privacy"]
    assert linked["verdicts"][2]["grade"] == "high risk"  # the "synthetic" table is a copy
    shown = (card.parent / "card.md").read_text()
    assert "## Evaluation" in shown and "(../report/report.html)" in shown


def test_bad_tables_get_clear_errors(tables: dict) -> None:
    schema, train, holdout = tables["schema"], tables["train"], tables["holdout"]
    broken = train.iloc[:50].copy()
    broken.loc[7, "age"] = 140.0
    with pytest.raises(PetError, match="age"):
        evaluate(train, holdout, broken, schema)
    with pytest.raises(PetError, match="synthetic table has no rows"):
        evaluate(train, holdout, train.iloc[:0], schema)
    with pytest.raises(PetError, match=r"'age' must have two levels .* it is continuous"):
        evaluate(train, holdout, train, schema, target="age")
    with pytest.raises(PetError, match="it is categorical with 3 categories"):
        evaluate(train, holdout, train, schema, target="smoking")


def test_a_two_category_outcome_is_a_target_like_a_boolean(tables: dict) -> None:
    """Sex (female, male) as the outcome: male is the positive level, and the real
    table's logistic coefficients are statsmodels' on the same rows."""
    import statsmodels.api as sm

    schema, train, holdout = tables["schema"], tables["train"], tables["holdout"]
    found = evaluate(train, holdout, tables["copy"], schema, target="sex",
                     covariates=("age", "hdl")).utility
    assert found.real.auc > 0.6 and found.synthetic.auc == found.real.auc
    reference = sm.Logit((train["sex"] == "male").astype(float),
                         sm.add_constant(train[["age", "hdl"]].astype(float))).fit(disp=0)
    np.testing.assert_allclose(found.coefficients["real"], reference.params, rtol=1e-6)
    assert found.coefficients["same_sign"].all()


def test_the_regression_check_does_not_apply_without_covariates(tables: dict) -> None:
    """An intercept alone has no relationships to keep: not applicable, not "100% keep
    their sign"."""
    schema, train, holdout = tables["schema"], tables["train"], tables["holdout"]
    evaluation = evaluate(train, holdout, tables["dp"], schema, target="cvd_event",
                          covariates=())
    assert evaluation.utility.regression_note == ("not applicable: the regression has no "
                                                  "covariates")
    assert np.isnan(evaluation.utility.summary()["same_sign"])
    assert "keep their sign" not in str(evaluation.verdicts())


def test_the_synthesizer_cells_record_every_pillar(tmp_path: Path) -> None:
    from benchmarks.evaluation import run

    log = run(tmp_path, ["lung"], ["mst"], [5.0])
    (row,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert row["train_rows"] == 160 and row["holdout_rows"] == 68  # 70% of lung's 228
    assert 0 < row["tvd2"] < 1 and 0 <= row["mia_advantage"] <= 1
    assert set(row["grades"]) == {"fidelity", "utility", "privacy"}
    assert row["rho"] > 0 and row["fit_s"] > 0
    table = (tmp_path / "summary.md").read_text()
    assert "| lung | mst | 5 |" in table


def test_a_synthetic_table_with_one_outcome_scores_a_coin_toss(tables: dict) -> None:
    schema, train, holdout = tables["schema"], tables["train"], tables["holdout"]
    one = train[~train["cvd_event"]].iloc[:2000]
    found = evaluate(train, holdout, one, schema).utility
    assert found.synthetic.auc == 0.5
    assert found.synthetic.brier == pytest.approx(holdout["cvd_event"].mean())


def test_the_membership_chance_level_is_exceeded_one_time_in_20() -> None:
    from scipy import stats

    from pet.evaluate.privacy import _chance

    rng = np.random.default_rng(2)
    level, runs = _chance(200), 2000
    exceeded = sum(stats.ks_2samp(rng.random(200), rng.random(200)).statistic > level
                   for _ in range(runs))
    # Binomial(2000, 0.05): outside [60, 140] with probability below 1e-8; the asymptotic
    # critical value is slightly conservative at 200 candidates a side.
    assert 60 <= exceeded <= 140
