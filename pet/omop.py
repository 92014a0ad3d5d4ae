"""A site's study table defined over its OMOP CDM v5.4 database by a declarative cohort.

A `CohortDefinition` names an index event (the first occurrence of some concepts within
an observation period), the age range the cohort admits, covariates ("has condition or
drug X on or before the index date", "last measurement of concept Y on or before it") and
a time-to-event outcome (days from the index date to the first outcome after it, censored
at the end of the observation period or at a horizon). `sql` compiles it, for one engine,
to the SELECT a `SqlTable` reads; `schema` is the public schema of the rows it yields,
the same at every site that shares the definition.

OHDSI's Circe defines cohort membership and index dates (not the analysis table of
covariates and outcomes, which OHDSI builds with FeatureExtraction in R), its SQL is in
SqlRender's dialect with temporary tables, translated by Java or R, and its Python port
(ohdsi-circepy 0.1) is an alpha release. A definition here is therefore pet's own, small
and strict; its SQL is built with sqlglot from a fixed text whose only inputs are
concept ids, whole numbers and quoted names, and written in the engine's dialect. Dates
are cast to DATE before any comparison (a timestamp's time of day must not move an event
across the index date) and before any arithmetic (DuckDB 2.0.1 compares EXTRACT(YEAR ...)
of a stored TIMESTAMP_S column wrongly). A person whose observation periods overlap at the
index date is followed to the latest of their ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import sqlglot
import yaml
from sqlglot import exp

from pet.errors import SchemaError
from pet.schema import Boolean, Categorical, Column, Continuous, Integer, Schema, TimeToEvent

FEMALE, MALE = 8532, 8507
"""OMOP's gender concepts."""


@dataclass(frozen=True)
class Domain:
    """Where one kind of clinical event lives in the CDM."""

    table: str
    concept: str
    date: str


DOMAINS = {
    "condition": Domain("condition_occurrence", "condition_concept_id", "condition_start_date"),
    "drug": Domain("drug_exposure", "drug_concept_id", "drug_exposure_start_date"),
    "measurement": Domain("measurement", "measurement_concept_id", "measurement_date"),
    "procedure": Domain("procedure_occurrence", "procedure_concept_id", "procedure_date"),
    "death": Domain("death", "cause_concept_id", "death_date"),
}


@dataclass(frozen=True)
class Events:
    """Events of one domain whose concept is one of `concepts` (any concept, for death,
    when none are given)."""

    domain: str
    concepts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise SchemaError(f"unknown OMOP domain {self.domain!r}; use one of "
                              f"{sorted(DOMAINS)}")
        concepts = tuple(self.concepts)
        if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0
                   for c in concepts):
            raise SchemaError(f"concept ids are positive whole numbers, got {list(concepts)}")
        if not concepts and self.domain != "death":
            raise SchemaError(f"events of domain {self.domain!r} need concept ids")
        object.__setattr__(self, "concepts", concepts)

    @property
    def where(self) -> Domain:
        return DOMAINS[self.domain]


@dataclass(frozen=True)
class Covariate:
    """A column of the study table: whether the person has an event of `events` on or
    before the index date, or, for measurements, the last such value (NaN when there is
    none, or when it lies outside the plausible range [lower, upper])."""

    name: str
    events: Events
    lower: float | None = None
    upper: float | None = None

    def __post_init__(self) -> None:
        for bound in (self.lower, self.upper):
            if bound is not None and (isinstance(bound, bool)
                                      or not isinstance(bound, int | float)):
                raise SchemaError(f"a bound must be a number, got {bound!r}",
                                  column=self.name)
        measured = self.events.domain == "measurement"
        if measured and (self.lower is None or self.upper is None):
            raise SchemaError("a measurement covariate needs its plausible lower and upper "
                              "bounds", column=self.name)
        if not measured and (self.lower is not None or self.upper is not None):
            raise SchemaError("only a measurement covariate has bounds", column=self.name)

    def column(self) -> Column:
        if self.events.domain == "measurement":
            return Continuous(self.name, float(self.lower), float(self.upper),  # type: ignore[arg-type]
                              nullable=True)
        return Boolean(self.name)


@dataclass(frozen=True)
class CohortDefinition:
    """The study table of a cohort in an OMOP CDM database (see the module's docstring)."""

    name: str
    index: Events
    outcome: Events
    time: str = "time"
    event: str = "event"
    horizon_days: int = 3653
    age: tuple[int, int] = (18, 110)
    covariates: tuple[Covariate, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        lower, upper = self.age
        if not (isinstance(lower, int) and isinstance(upper, int) and 0 <= lower < upper):
            raise SchemaError(f"the cohort's age range must be whole years lower < upper, "
                              f"got {self.age}")
        if not isinstance(self.horizon_days, int) or self.horizon_days < 1:
            raise SchemaError(f"horizon_days must be a whole number of days, at least 1; "
                              f"got {self.horizon_days!r}")
        object.__setattr__(self, "covariates", tuple(self.covariates))
        self.schema()  # names must be distinct and valid

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> CohortDefinition:
        """A definition as written in YAML (see `pet/workloads/omop_cvd.yaml`)."""
        try:
            outcome = dict(spec["outcome"])
            return cls(
                name=str(spec["name"]), index=_events(spec["index"]),
                outcome=_events(outcome), time=str(outcome.get("time", "time")),
                event=str(outcome.get("event", "event")),
                horizon_days=outcome.get("horizon_days", 3653),
                age=tuple(spec.get("age", (18, 110))),  # type: ignore[arg-type]
                covariates=tuple(Covariate(str(c["name"]), _events(c), c.get("lower"),
                                           c.get("upper"))
                                 for c in spec.get("covariates", ())))
        except (KeyError, TypeError) as exc:
            raise SchemaError(f"a cohort definition needs name, index and outcome (each with "
                              f"domain and concepts); {type(exc).__name__}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> CohortDefinition:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))

    @classmethod
    def load(cls, name_or_path: str | Path) -> CohortDefinition:
        """A definition file by path (.yaml, .yml or .json), or one shipped with pet by name
        (`omop_cvd`)."""
        if Path(name_or_path).suffix in {".yaml", ".yml", ".json"}:  # YAML reads JSON
            return cls.from_file(name_or_path)
        path = resources.files("pet.workloads") / f"{name_or_path}.yaml"
        if not path.is_file():
            raise SchemaError(f"no cohort definition {str(name_or_path)!r} is shipped with "
                              "pet; give the path of a .yaml file")
        with resources.as_file(path) as file:
            return cls.from_file(file)

    def schema(self) -> Schema:
        """The public schema of the study table."""
        lower, upper = self.age
        return Schema([Integer("age", lower, upper, description="age at the index date"),
                       Categorical("sex", ("female", "male"), nullable=True),
                       *(c.column() for c in self.covariates),
                       TimeToEvent(self.time, self.event, float(self.horizon_days),
                                   description="days from the index date"),
                       Boolean(self.event)], name=self.name)

    def sql(self, dialect: str) -> str:
        """The SELECT of the study table (one row per person, in person order) in the
        engine's dialect."""
        return self.select().sql(dialect=dialect)

    def select(self) -> exp.Select:
        index, outcome = self.index.where, self.outcome.where
        template = f"""
        WITH pet_index AS (
          SELECT e.person_id, MIN(CAST(e.{index.date} AS DATE)) AS index_date
          FROM {index.table} AS e JOIN observation_period AS op
            ON op.person_id = e.person_id
           AND CAST(e.{index.date} AS DATE)
               BETWEEN CAST(op.observation_period_start_date AS DATE)
                   AND CAST(op.observation_period_end_date AS DATE)
          WHERE e.{index.concept} IN (:index_concepts)
          GROUP BY e.person_id),
        pet_period AS (
          SELECT i.person_id, i.index_date,
                 MAX(CAST(op.observation_period_end_date AS DATE)) AS end_date
          FROM pet_index AS i JOIN observation_period AS op ON op.person_id = i.person_id
           AND i.index_date BETWEEN CAST(op.observation_period_start_date AS DATE)
                                AND CAST(op.observation_period_end_date AS DATE)
          GROUP BY i.person_id, i.index_date),
        pet_cohort AS (
          SELECT c.person_id, c.index_date, c.end_date,
                 EXTRACT(YEAR FROM c.index_date) - p.year_of_birth AS age,
                 p.gender_concept_id
          FROM pet_period AS c JOIN person AS p ON p.person_id = c.person_id),
        pet_outcome AS (
          SELECT c.person_id, MIN(CAST(o.{outcome.date} AS DATE)) AS outcome_date
          FROM pet_cohort AS c JOIN {outcome.table} AS o ON o.person_id = c.person_id
           AND CAST(o.{outcome.date} AS DATE) > c.index_date
           AND CAST(o.{outcome.date} AS DATE) <= c.end_date
          WHERE o.{outcome.concept} IN (:outcome_concepts)
          GROUP BY c.person_id)
        SELECT c.age AS age,
               CASE c.gender_concept_id WHEN {FEMALE} THEN 'female'
                                        WHEN {MALE} THEN 'male' END AS sex,
               LEAST(DATE_DIFF('day', c.index_date, COALESCE(o.outcome_date, c.end_date)),
                     :horizon) AS pet_time,
               COALESCE(DATE_DIFF('day', c.index_date, o.outcome_date) <= :horizon, FALSE)
                 AS pet_event
        FROM pet_cohort AS c LEFT JOIN pet_outcome AS o ON o.person_id = c.person_id
        WHERE c.age BETWEEN :age_lower AND :age_upper
        ORDER BY c.person_id"""
        select = _fill(template, index_concepts=self.index.concepts,
                       outcome_concepts=self.outcome.concepts, horizon=self.horizon_days,
                       age_lower=self.age[0], age_upper=self.age[1])
        expressions = select.expressions
        time, event = expressions[2], expressions[3]
        select.set("expressions", [*expressions[:2], *(_covariate(c) for c in self.covariates),
                                   exp.alias_(time.this, self.time, quoted=True),
                                   exp.alias_(event.this, self.event, quoted=True)])
        return select


def _events(spec: Mapping[str, Any]) -> Events:
    return Events(str(spec["domain"]), tuple(spec.get("concepts", ())))


def _covariate(covariate: Covariate) -> exp.Expression:
    """`has` or `last value` of the covariate's events on or before the index date."""
    where = covariate.events.where
    if covariate.events.domain == "measurement":
        template = f"""
        SELECT (SELECT CASE WHEN x.value_as_number BETWEEN :lower AND :upper
                            THEN x.value_as_number END
                FROM measurement AS x
                WHERE x.person_id = c.person_id AND x.{where.concept} IN (:concepts)
                  AND CAST(x.{where.date} AS DATE) <= c.index_date
                  AND x.value_as_number IS NOT NULL
                ORDER BY x.{where.date} DESC, x.measurement_id DESC LIMIT 1)"""
    else:
        template = f"""
        SELECT EXISTS (SELECT 1 FROM {where.table} AS x
                       WHERE x.person_id = c.person_id AND x.{where.concept} IN (:concepts)
                         AND CAST(x.{where.date} AS DATE) <= c.index_date)"""
    value = _fill(template, concepts=covariate.events.concepts, lower=covariate.lower,
                  upper=covariate.upper).expressions[0]
    return exp.alias_(value, covariate.name, quoted=True)


def _fill(template: str, **values: Any) -> exp.Select:
    """Parse a fixed SQL text and put each `:name` placeholder's value in as a literal:
    a whole number, a float, or (in `IN (:name)`) a list of concept ids; an empty list
    drops its `IN` (any concept)."""
    tree = sqlglot.parse_one(template, read="duckdb")

    def put(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.In) and len(node.expressions) == 1 \
                and isinstance(node.expressions[0], exp.Placeholder):
            ids: Sequence[int] = values[node.expressions[0].name]
            if not ids:
                return exp.true()
            return exp.In(this=node.this, expressions=[exp.Literal.number(int(i))
                                                       for i in ids])
        if isinstance(node, exp.Placeholder) and node.name in values:
            return exp.Literal.number(repr(values[node.name]))
        return node

    filled = tree.transform(put)
    assert isinstance(filled, exp.Select)
    return filled
