"""`pet synth fit|sample|export|refit`: fit a DP synthesizer to a workload's or a file's
rows, or across a running federation through its coordinator; sample a synthetic table
with its data card from that fit; export its noisy marginals for other generators;
rebuild a release from its data card."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from pet.connection import client_of
from pet.errors import PetError
from pet.ledger import Ledger
from pet.plain import emit
from pet.schema import Schema
from pet.site import Site
from pet.synth import Release, card, fit, load, save
from pet.synth.card import commit, resample, write
from pet.synth.export import export
from pet.table import open_table
from pet.workloads import load as load_workload


def run(args: argparse.Namespace) -> int:
    """Carry out `pet synth fit`, `sample` or `export`."""
    return {"fit": _fit, "sample": _sample, "export": _export,
            "refit": _refit}[args.step](args)


def _refit(args: argparse.Namespace) -> int:
    try:
        data = json.loads(Path(args.card).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PetError(f"cannot read the data card {args.card}: {error}") from None
    made, here = data.get("versions", {}).get("pet_commit"), commit()
    if made and here and made != here:
        print(f"warning: {args.card} was made by pet at commit {made[:12]} and this is "
              f"{here[:12]}: where the estimator or the sampler changed in between, the "
              "rows differ", file=sys.stderr)
    table = resample(data, args.rows, args.seed)
    _write_table(table, Path(args.out))
    emit(args.json, f"{len(table)} rows rebuilt from {args.card} in {args.out}",
         {"rows": len(table), "card": args.card, "table": args.out})
    return 0


def _write_table(table: pd.DataFrame, out: Path) -> None:
    """A synthetic table as Parquet or, for any other suffix, CSV."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        table.to_parquet(out, index=False)
    else:
        table.to_csv(out, index=False)


def _export(args: argparse.Namespace) -> int:
    if (Path(args.fit) / REMOTE).exists():
        raise PetError(f"{args.fit} names a fit kept at its coordinator; its marginals stay "
                       "there (export a fit saved here by `pet synth fit --data` or "
                       "`--workload`)")
    folder = export(load(args.fit), args.out)
    files = {"parquet": str(folder / "marginals.parquet"), "json": str(folder / "marginals.json")}
    emit(args.json, f"noisy marginals of {args.fit} in {files['parquet']} and {files['json']}",
         {"fit": args.fit, **files})
    return 0


REMOTE = "remote.json"
"""What a fit folder holds for a fit kept at a coordinator: its address and the fit's id."""


def _fit(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.coordinator:
        return _fit_remote(args, out)
    ledgers = Path(args.ledgers) if args.ledgers else out / "ledgers"
    ledgers.mkdir(parents=True, exist_ok=True)
    sites = _sites(args, ledgers)
    for site in sites:
        if not any(b.dataset == site.dataset for b in site.ledger.budgets()):
            site.ledger.set_budget(site.dataset, args.epsilon, args.delta)
    fitted = fit(sites, args.method, epsilon=args.epsilon, delta=args.delta,
                 backend=args.backend, bins=args.bins)
    save(fitted, out)
    who = {"sites": [s.name for s in sites],
           "backend": args.backend or ("dp" if len(sites) == 1 else "he+dp")}
    (out / "sites.json").write_text(json.dumps(who) + "\n")
    emit(args.json, f"{fitted.method}: ρ = {fitted.rho:.6g} spent of (ε = {fitted.epsilon:g}, "
                    f"δ = {fitted.delta:g}) charged at {len(sites)} site(s); "
                    f"{len(fitted.measurements)} marginals measured; saved in {out}",
         {"method": fitted.method, "rho": fitted.rho, "epsilon": fitted.epsilon,
          "delta": fitted.delta, **who, "measurements": len(fitted.measurements),
          "saved": str(out)})
    return 0


def _sites(args: argparse.Namespace, ledgers: Path) -> list[Site]:
    if args.data:
        if not args.schema:
            raise SystemExit("pet synth fit: --data needs --schema")
        table = open_table(args.data, Schema.from_file(args.schema))
        name = Path(args.data).stem
        return [Site(name, table, ledger=Ledger(ledgers / f"{name}.sqlite"))]
    options = ({"n_rows": args.rows or 10_000, "seed": 0} if args.workload == "cohort"
               else {})
    workload = load_workload(args.workload, n_sites=args.sites, **options)
    return workload.sites(ledgers=ledgers)


def _fit_remote(args: argparse.Namespace, out: Path) -> int:
    """A fit across the coordinator's sites: its progress printed, its id kept in `out`."""
    def report(step: Any) -> None:
        if not args.json:
            print(f"  {step.step}: ρ {step.rho:.4g} (spent {step.rho_spent:.4g} of "
                  f"{step.rho_total:.4g})", flush=True)

    with client_of(args) as client:
        remote = client.synthesize(args.method, epsilon=args.epsilon, delta=args.delta,
                                   bins=args.bins, backend=args.backend or "mpc+dp",
                                   progress=report)
    out.mkdir(parents=True, exist_ok=True)
    (out / REMOTE).write_text(json.dumps({"coordinator": args.coordinator, "fit": remote.id,
                                          "method": remote.method, "rho": remote.rho,
                                          "measurements": remote.measurements}) + "\n")
    emit(args.json, f"{remote.method}: ρ = {remote.rho:.6g} spent of (ε = {args.epsilon:g}, "
                    f"δ = {args.delta:g}) charged at every site; {remote.measurements} "
                    f"marginals measured; kept at {args.coordinator} as {remote.id} (noted "
                    f"in {out / REMOTE})",
         {"method": remote.method, "rho": remote.rho, "epsilon": args.epsilon,
          "delta": args.delta, "measurements": remote.measurements,
          "coordinator": args.coordinator, "fit": remote.id, "noted": str(out / REMOTE)})
    return 0


def _sample(args: argparse.Namespace) -> int:
    out = Path(args.out)
    table, data = _drawn(args)
    _write_table(table, out)
    as_json, as_markdown = write(data, out.parent if out.parent != Path() else Path.cwd())
    emit(args.json, f"{args.rows} synthetic rows in {out}; data card in {as_json} and "
                    f"{as_markdown}",
         {"rows": args.rows, "table": str(out), "card": str(as_json),
          "card_markdown": str(as_markdown)})
    return 0



def _drawn(args: argparse.Namespace) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The sampled rows and their data card, from a saved fit or the coordinator's."""
    folder = Path(args.fit)
    if (folder / REMOTE).exists():
        from pet.client import RemoteFit
        from services.pb import synthesis_pb2

        kept = json.loads((folder / REMOTE).read_text())
        with client_of(args, kept["coordinator"]) as client:
            remote = RemoteFit(client, synthesis_pb2.Fitted(
                fit=kept["fit"], method=kept["method"], rho=kept["rho"],
                measurements=kept["measurements"]))
            table = remote.sample(args.rows, seed=args.seed)
        if remote.card is None:
            raise PetError("the coordinator sent no data card with the rows")
        return table, remote.card
    fitted = load(folder)
    who = json.loads((folder / "sites.json").read_text())
    table = fitted.sample(args.rows, seed=args.seed)
    return table, card(fitted, Release(tuple(who["sites"]), who["backend"], args.seed,
                                       args.rows))
