"""The demo study: lung cancer patients at three hospitals, each a site server, asked
every question under every backend through the coordinator, as an analyst would; then a
synthetic cohort fitted across the hospitals under mpc+dp and streamed back with its
data card; then three hospitals' OMOP CDM databases, read where they are through a
shared cohort definition, asked for a Table 1 and a Cox model."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pet.backends import BACKENDS, backend_class
from pet.client import Client
from pet.errors import PetError
from pet.queries import (
    Contingency,
    Correlation,
    Count,
    Cox,
    ExactQuantiles,
    Histogram,
    KaplanMeier,
    LinearRegression,
    LogisticRegression,
    Mean,
    Query,
    StdDev,
    TableOne,
)
from pet.report import table, with_interval
from pet.result import Result, answer_vector
from pet.workloads.omop import omop_workload

QUESTIONS: tuple[Query, ...] = (
    Count(),
    Count(where="sex == 'female' and age >= 60"),
    Mean("age"),
    StdDev("wt_loss"),
    ExactQuantiles("age", (0.5,)),
    Histogram("age", (18, 50, 60, 70, 100)),
    Contingency(("sex", "dead")),
    Correlation(("age", "ph_karno", "wt_loss")),
    LinearRegression("wt_loss", ("age", "sex", "ph_ecog")),
    LogisticRegression("dead", ("age", "sex", "ph_ecog")),
    KaplanMeier("time", "dead", grid=(182, 365, 547, 1100)),
    TableOne(("age", "wt_loss", "dead"), by="sex", medians=False),
    Cox("time", "dead", ("age", "sex", "ph_ecog"), grid=(182, 365, 547, 1100)),
    # Ten-year age bins leave fewer than 3 patients in some cell at some site: disclosure
    # control refuses, and the demo shows how.
    Histogram("age", tuple(range(10, 111, 10))),
)

DEMO_BUDGET, DEMO_DELTA = 6.0, 1e-3
"""Each site's (ε, δ) budget for the whole demo: every question at ε = 1, δ = 10⁻⁶ (one
charge of ρ each, whatever its rounds) under three DP backends, and the synthetic cohort
at the same: zCDP adds their ρ, which OpenDP converts to ε ≈ 5.3 at δ = 10⁻³."""

DP_OPTIONS = {"epsilon": 1.0, "delta": 1e-6}

HEADERS = ("question", "backend", "answer", "error vs plaintext", "ms", "bytes",
           "privacy spent")


def run_demo(n_sites: int = 3) -> str:
    """Start a coordinator and `n_sites` site servers on loopback, run the demo study
    under every backend, stop every server, and return the report as text."""
    from services.local import LocalFederation, workload_data

    with tempfile.TemporaryDirectory(prefix="pet-demo-") as folder:
        federation = LocalFederation(folder, workload_data("lung", n_sites), site_options={
            "budget": {"epsilon": DEMO_BUDGET, "delta": DEMO_DELTA},
            "disclosure": {"min_cell": 3}})
        with federation, federation.client() as client:
            lines = [f"pet demo: lung cancer patients (NCCTG) at {n_sites} hospitals; each "
                     "hospital is a site server, and the analyst asks through the "
                     f"coordinator at {federation.address} (TLS, bearer token).",
                     "Every site applies disclosure control (minimum cell count 3).", ""]
            results = {backend: _ask(client, backend) for backend in BACKENDS}
            lines += [table(_rows(results), HEADERS), ""]
            lines += [_guarantee(backend, answers) for backend, answers in results.items()]
            lines += ["", _synthetic(client), "", _ledgers(client)]
        codes = [f"{name} {code}" for name, code in federation.exit_codes.items()]
        lines.append(f"Servers stopped: {', '.join(codes)}.")
        lines += ["", *_omop(Path(folder) / "omop", n_sites)]
    return "\n".join(lines)


OMOP_ROWS, OMOP_SEED = 2000, 20261206
OMOP_TABLE_ONE = TableOne(("age", "sex", "bmi", "sbp", "hba1c", "prior_cvd"), by="diabetes",
                          medians=False)
OMOP_COX = Cox("cvd_days", "cvd_event", ("age", "sex", "diabetes", "sbp", "prior_cvd"),
               grid=(*range(365, 3653, 365), 3653))


def _omop(folder: Path, n_sites: int) -> list[str]:
    """Three hospitals whose data stay in their OMOP CDM databases (DuckDB files here):
    each site server reads its study table through the shipped cohort definition
    `omop_cvd`, and the analyst asks for a Table 1 and a Cox model under every exact
    backend and under dp."""
    from services.local import LocalFederation

    folder.mkdir(parents=True)
    workload = omop_workload(OMOP_ROWS, n_sites, OMOP_SEED, folder)
    data = {name: {"source": "omop", "engine": "duckdb", "cohort": "omop_cvd",
                   "database": str(folder / f"{name}.duckdb")} for name in workload.tables}
    lines = [f"OMOP CDM: {n_sites} hospitals × {OMOP_ROWS} patients, each site reading its "
             "own CDM database (person, observation_period, condition_occurrence, "
             "drug_exposure, measurement, death) through the cohort definition omop_cvd "
             "(first essential hypertension, covariates on or before it, first infarction "
             "after it within ten years)."]
    with LocalFederation(folder / "federation", data, site_options={
            "budget": {"epsilon": 3.0, "delta": 1e-5}, "disclosure": {"min_cell": 3}}) \
            as federation, federation.client() as client:
        with client.study("plaintext") as study:
            lines += ["", study.run(OMOP_TABLE_ONE).value.to_text(), ""]
        lines.append("Cox model, hazard ratio of diabetes (95% CI):")
        for backend in ("plaintext", "he", "mpc", "dp"):
            options = DP_OPTIONS if backend_class(backend).differentially_private else {}
            with client.study(backend, **options) as study:
                fit = study.run(OMOP_COX)
            ratio = fit.value.hazard_ratios().loc["diabetes"]
            lines.append(f"  {backend:9} {ratio.hazard_ratio:.3f} ({ratio.ci_low:.3f}–"
                         f"{ratio.ci_high:.3f}), {fit.latency_s * 1000:.0f} ms")
    return lines


def _ask(client: Client, backend: str) -> list[Result | PetError]:
    """Every question under one backend: its result, or the refusal (by a site, the
    coordinator, or the analyst's own finalizing)."""
    options = DP_OPTIONS if backend_class(backend).differentially_private else {}
    answers: list[Result | PetError] = []
    with client.study(backend, **options) as study:
        for query in QUESTIONS:
            try:
                answers.append(study.run(query))
            except PetError as refusal:
                answers.append(refusal)
    return answers


def _rows(results: dict[str, list[Result | PetError]]) -> list[list[str]]:
    """One row per question and backend, each answer compared with plaintext's."""
    rows = []
    for k, query in enumerate(QUESTIONS):
        reference = results["plaintext"][k]
        for backend, answers in results.items():
            answer = answers[k]
            first = query.describe() if backend == "plaintext" else ""
            if isinstance(answer, PetError):
                rows.append([first, backend, f"REFUSED: {answer}", "", "", "", ""])
                continue
            rows.append([first, backend, with_interval(answer),
                         _error(answer, reference), f"{answer.latency_s * 1000:.0f}",
                         f"{answer.bytes_total:,}", _spent(answer)])
    return rows


def _error(answer: Result, reference: Result | PetError) -> str:
    """The largest absolute difference from plaintext's answer (0: identical)."""
    if isinstance(reference, PetError):
        return ""
    ours, exact = answer_vector(answer.value), answer_vector(reference.value)
    if ours.shape != exact.shape:
        return ""
    finite = np.isfinite(ours) & np.isfinite(exact)
    return f"{float(np.max(np.abs(ours - exact)[finite], initial=0.0)):.2g}"


def _spent(answer: Result) -> str:
    """The privacy the answer cost each site: one charge for the query, whatever its
    rounds, as the (ε, δ) asked and the ρ the ledger adds up."""
    privacy = answer.privacy
    if not privacy.differentially_private:
        return "none"
    return f"ε={privacy.epsilon:g}, δ={privacy.delta or 0:g} (ρ={privacy.rho:.3g}) per site"


def _guarantee(backend: str, answers: list[Any]) -> str:
    """What a backend protected, per kind of answer where that differs."""
    kinds: dict[str, list[str]] = {}
    for answer in answers:
        if isinstance(answer, Result):
            kinds.setdefault(answer.privacy.confidentiality, []).append(answer.query)
    if not kinds:
        return f"backend {backend}: every question was refused"
    common, *others = sorted(kinds, key=lambda text: -len(kinds[text]))
    extra = "".join(f"; for {', '.join(kinds[text])}: {text}" for text in others)
    return f"backend {backend} — {common}{extra}"


SYNTHESIS = {"method": "mst", "epsilon": 1.0, "delta": 1e-6, "rows": 228}
"""The demo's synthetic cohort: MST at ε = 1, as many rows as the three hospitals hold."""


def _synthetic(client: Client) -> str:
    """A synthetic cohort fitted across the sites (no site reveals its marginals), and
    what its data card says it cost."""
    fit = client.synthesize(SYNTHESIS["method"], epsilon=SYNTHESIS["epsilon"],
                            delta=SYNTHESIS["delta"])
    rows = fit.sample(SYNTHESIS["rows"], seed=0)
    privacy = fit.card["privacy"]
    steps = len(privacy["itemised"])
    return (f"Synthetic cohort: {fit.method.upper()} fitted across "
            f"{len(fit.card['sites'])} sites under {fit.card['backend']} "
            f"({fit.measurements} noisy marginals, {steps} privacy steps, ρ = "
            f"{privacy['rho_spent']:.4g}, within (ε = {privacy['charged']['epsilon']:g}, "
            f"δ = {privacy['charged']['delta']:g}) per site); {len(rows)} rows × "
            f"{rows.shape[1]} columns streamed back with its data card. First rows:\n"
            + rows.head(3).to_string(index=False))


def _ledgers(client: Client) -> str:
    """Every site's privacy budget after the study, as its own ledger reports it."""
    spent = ", ".join(f"{b.site} ε {b.spent_epsilon:.3g} of {b.epsilon:g} at δ = "
                      f"{b.delta:g} ({b.releases} charges)" for b in client.budgets())
    return (f"Privacy ledgers after the study (each site keeps its own; ρ adds under zCDP, "
            f"shown as ε at the budget's δ): {spent}.")
