"""`pet synth fit|sample|export|refit`: fit a DP synthesizer to a workload's or a file's
rows, or across a running federation through its coordinator; sample a synthetic table
with its data card from that fit; export its noisy marginals for other generators;
rebuild a release from its data card."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from pet.connection import add_connection, client_of
from pet.errors import PetError
from pet.ledger import Ledger
from pet.schema import Schema
from pet.site import Site
from pet.synth import SYNTHESIZERS, Release, card, fit, load, save
from pet.synth.card import resample, write
from pet.synth.export import export
from pet.table import open_table
from pet.workloads import WORKLOADS
from pet.workloads import load as load_workload


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `synth` subcommands."""
    steps = parser.add_subparsers(dest="step", required=True)
    fitting = steps.add_parser("fit", help="fit a synthesizer, charging every site's ledger")
    data = fitting.add_mutually_exclusive_group(required=True)
    data.add_argument("--workload", choices=sorted(WORKLOADS))
    data.add_argument("--data", help="one data holder's table (CSV or Parquet)")
    data.add_argument("--coordinator", metavar="ADDRESS",
                      help="fit across a running federation's sites (under mpc+dp); the "
                           "fit stays at the coordinator")
    add_connection(fitting, address=False)
    fitting.add_argument("--schema", help="the table's schema (YAML or JSON), with --data")
    fitting.add_argument("--sites", type=int, default=1,
                         help="split a workload over this many sites (default 1: central DP)")
    fitting.add_argument("--rows", type=int, help="rows per site of the cohort workload")
    fitting.add_argument("--method", choices=sorted(SYNTHESIZERS), default="aim")
    fitting.add_argument("--epsilon", type=float, required=True)
    fitting.add_argument("--delta", type=float, default=1e-6)
    fitting.add_argument("--backend", choices=("dp", "he+dp", "mpc+dp"),
                         help="dp at one site; he+dp (default) or mpc+dp across several; "
                              "mpc+dp (default) or he+dp through a coordinator")
    fitting.add_argument("--bins", type=int, default=16, help="bins of each numeric column")
    fitting.add_argument("--ledgers", help="folder of the sites' ledgers (default: under --out)")
    fitting.add_argument("--out", required=True, help="folder for the saved fit")
    sampling = steps.add_parser("sample", help="sample a synthetic table and its data card")
    sampling.add_argument("fit", help="a folder written by `pet synth fit`")
    sampling.add_argument("--rows", type=int, required=True)
    sampling.add_argument("--seed", type=int, default=0)
    sampling.add_argument("--out", required=True, help="the synthetic table (CSV or Parquet)")
    add_connection(sampling, address=False)
    exporting = steps.add_parser("export", help="write a fit's noisy marginals (Parquet and "
                                                "JSON) for other generators")
    exporting.add_argument("fit", help="a folder written by `pet synth fit`")
    exporting.add_argument("--out", required=True, help="folder for the marginals")
    refitting = steps.add_parser("refit", help="rebuild a release's model from its data card "
                                               "and sample its rows again")
    refitting.add_argument("card", help="a release's card.json")
    refitting.add_argument("--rows", type=int, help="rows to sample (default: the card's)")
    refitting.add_argument("--seed", type=int, help="sampling seed (default: the card's)")
    refitting.add_argument("--out", required=True, help="the synthetic table (CSV or Parquet)")


def run(args: argparse.Namespace) -> int:
    """Carry out `pet synth fit`, `sample` or `export`."""
    return {"fit": _fit, "sample": _sample, "export": _export,
            "refit": _refit}[args.step](args)


def _refit(args: argparse.Namespace) -> int:
    try:
        data = json.loads(Path(args.card).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PetError(f"cannot read the data card {args.card}: {error}") from None
    table = resample(data, args.rows, args.seed)
    _write_table(table, Path(args.out))
    print(f"{len(table)} rows rebuilt from {args.card} in {args.out}")
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
    print(f"noisy marginals of {args.fit} in {folder / 'marginals.parquet'} and "
          f"{folder / 'marginals.json'}")
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
    print(f"{fitted.method}: ρ = {fitted.rho:.6g} spent of (ε = {fitted.epsilon:g}, "
          f"δ = {fitted.delta:g}) charged at {len(sites)} site(s); "
          f"{len(fitted.measurements)} marginals measured; saved in {out}")
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
    print(f"{remote.method}: ρ = {remote.rho:.6g} spent of (ε = {args.epsilon:g}, "
          f"δ = {args.delta:g}) charged at every site; {remote.measurements} marginals "
          f"measured; kept at {args.coordinator} as {remote.id} (noted in {out / REMOTE})")
    return 0


def _sample(args: argparse.Namespace) -> int:
    out = Path(args.out)
    table, data = _drawn(args)
    _write_table(table, out)
    as_json, as_markdown = write(data, out.parent if out.parent != Path() else Path.cwd())
    print(f"{args.rows} synthetic rows in {out}; data card in {as_json} and {as_markdown}")
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
