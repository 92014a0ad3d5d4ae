"""A workload: a public schema and one table per site, ready to run a study on."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from pet.backends import Backend
from pet.disclosure import DisclosurePolicy
from pet.ledger import Ledger
from pet.schema import Schema
from pet.site import Site
from pet.study import Study
from pet.table import Table


@dataclass(frozen=True)
class Workload:
    """Named site tables that share one public schema."""

    name: str
    schema: Schema
    tables: dict[str, Table]
    description: str = ""

    def sites(self, policy: DisclosurePolicy | None = None, *,
              ledgers: Path | None = None) -> list[Site]:
        """One in-process site per table, each with the given disclosure policy and, with
        `ledgers`, its own privacy ledger there (NAME.sqlite; its dataset is the schema's
        name)."""
        return [Site(name, table, policy=policy,
                     ledger=Ledger(ledgers / f"{name}.sqlite") if ledgers else None)
                for name, table in self.tables.items()]

    def study(self, backend: str | Backend = "plaintext", *,
              policy: DisclosurePolicy | None = None) -> Study:
        """A study over all sites of the workload."""
        return Study(self.sites(policy), backend=backend)

    def pooled(self) -> pd.DataFrame:
        """All sites' rows in one DataFrame: the reference a trusted curator would see.

        For tests and evaluation on data small enough to fit in memory.
        """
        return pd.concat([t.to_frame() for t in self.tables.values()], ignore_index=True)

    @property
    def n_rows(self) -> int:
        """Rows over all sites."""
        return sum(t.n_rows for t in self.tables.values())


def packaged_schema(name: str) -> Schema:
    """A hand-written public schema shipped with pet (pet/workloads/schemas/NAME.yaml)."""
    path = resources.files("pet.workloads") / "schemas" / f"{name}.yaml"
    with resources.as_file(path) as file:
        return Schema.from_file(file)
