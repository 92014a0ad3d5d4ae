"""The `pet` command line: the demo, servers, the analyst's queries, and the site's
budget and audit log. Every report is human-readable, or JSON with `--json`.

Building the parser imports nothing heavy, and each command imports what it uses when it
runs: `pet --help` answers in the time Python takes to start, not the seconds that
numpy, scipy, OpenDP and gRPC take to import."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.cli import add_arguments as add_bench
from pet.connection import add_connection, client_of
from pet.errors import PetError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `pet` and `python -m pet`."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _command(args.command)(args)
    except PetError as error:
        print(f"pet {args.command}: {error}", file=sys.stderr)
        return 1


class Names:
    """The names of a registry (`module.attribute`, a dict) as argparse choices, read when
    argparse first checks or lists one: building the parser imports nothing (an argument
    with these choices names a metavar, which argparse would otherwise make from them)."""

    def __init__(self, module: str, attribute: str) -> None:
        self.module, self.attribute = module, attribute

    def _names(self) -> list[str]:
        return sorted(getattr(importlib.import_module(self.module), self.attribute))

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()


WORKLOAD_NAMES = Names("pet.workloads", "WORKLOADS")
SYNTHESIZER_NAMES = Names("pet.synth", "SYNTHESIZERS")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the demo study through a coordinator and "
                                            "three site servers on loopback")
    demo.add_argument("--sites", type=int, default=3, help="number of sites (3-18)")
    add_bench(commands.add_parser("bench", help="run a benchmark profile (quick, ...)"))

    serve = commands.add_parser("serve", help="run a site or coordinator server")
    serve.add_argument("role", choices=("site", "coordinator"))
    serve.add_argument("config", help="the server's configuration file (YAML)")

    certs = commands.add_parser("certs", help="make a demo CA and TLS certificates")
    certs.add_argument("directory")
    certs.add_argument("--sites", nargs="+", required=True, help="the sites' names")
    certs.add_argument("--hosts", nargs="+", default=["localhost", "127.0.0.1"],
                       help="host names and addresses every certificate is valid for")
    _json(certs)

    query = commands.add_parser("query", help="ask the federation a question")
    query.add_argument("query", nargs="+", help='one or more queries, each one argument, e.g. '
                       '\'Mean("age", where="sex == \\"female\\"")\' \'Count()\'')
    add_connection(query)
    query.add_argument("--backend", default="plaintext")
    query.add_argument("--epsilon", type=float, help="DP backends: ε per round")
    query.add_argument("--delta", type=float, help="DP backends: δ per round")
    _json(query)

    budget = commands.add_parser("budget", help="show or set privacy budgets: a site's "
                                                "ledger file, or every site's through "
                                                "the coordinator")
    budget.add_argument("ledger", nargs="?", help="the site's ledger file (SQLite)")
    budget.add_argument("dataset", nargs="?", help="a dataset (default: show all)")
    budget.add_argument("--set", nargs=2, type=float, metavar=("EPSILON", "DELTA"),
                        help="configure the dataset's total budget (ledger file only)")
    add_connection(budget, required=False)
    _json(budget)

    audit = commands.add_parser("audit", help="show a site's audit log")
    audit.add_argument("log", help="the site's audit log file (SQLite)")
    audit.add_argument("--analyst")
    audit.add_argument("--since", help="ISO time: entries at or after it")
    audit.add_argument("--limit", type=int, help="the most recent N entries")
    audit.add_argument("--verify", action="store_true", help="check the hash chain first")
    _json(audit)

    schema = commands.add_parser("schema", help="propose a schema from a data file")
    schema_steps = schema.add_subparsers(dest="step", required=True)
    infer = schema_steps.add_parser("infer", help="a draft schema (YAML) of a CSV or Parquet "
                                                  "file, each bound read off it marked for "
                                                  "review")
    infer.add_argument("file", help="a CSV or Parquet file")
    infer.add_argument("--name", help="the schema's name (default: the file's)")
    infer.add_argument("--max-categories", type=int, default=50,
                       help="most distinct texts of a categorical column (default 50)")

    _synth(commands.add_parser("synth", help="fit a DP synthesizer (fit) or sample a "
                                                "synthetic table with its data card (sample)"))

    _evaluate(commands.add_parser("evaluate", help="evaluate a synthetic table: fidelity, "
                                                      "utility, privacy; writes a report"))

    health = commands.add_parser("health", help="check that a server is SERVING")
    health.add_argument("address")
    how = health.add_mutually_exclusive_group(required=True)
    how.add_argument("--ca", help="the CA certificate (PEM), to check the coordinator as an "
                                  "analyst does, with no certificate of one's own")
    how.add_argument("--tls", help="folder with ca.pem and ROLE.pem/.key, to check a site")
    health.add_argument("--role", help="with --tls: the certificate to present")
    health.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="keep asking until the server serves, for up to this long")
    _json(health)
    return parser


def _synth(parser: argparse.ArgumentParser) -> None:
    """The `synth` subcommands."""
    steps = parser.add_subparsers(dest="step", required=True)
    fitting = steps.add_parser("fit", help="fit a synthesizer, charging every site's ledger")
    data = fitting.add_mutually_exclusive_group(required=True)
    data.add_argument("--workload", choices=WORKLOAD_NAMES, metavar="NAME",
                      help="a built-in workload: %(choices)s")
    data.add_argument("--data", help="one data holder's table (CSV or Parquet)")
    data.add_argument("--coordinator", metavar="ADDRESS",
                      help="fit across a running federation's sites (under mpc+dp); the "
                           "fit stays at the coordinator")
    add_connection(fitting, address=False)
    fitting.add_argument("--schema", help="the table's schema (YAML or JSON), with --data")
    fitting.add_argument("--sites", type=int, default=1,
                         help="split a workload over this many sites (default 1: central DP)")
    fitting.add_argument("--rows", type=int, help="rows per site of the cohort workload")
    fitting.add_argument("--method", choices=SYNTHESIZER_NAMES, default="aim", metavar="NAME",
                         help="%(choices)s (default: %(default)s)")
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
    for step in (fitting, sampling, exporting, refitting):
        _json(step)


def _evaluate(parser: argparse.ArgumentParser) -> None:
    """The `evaluate` options."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--schema", help="the tables' schema (YAML or JSON)")
    which.add_argument("--workload", choices=WORKLOAD_NAMES, metavar="NAME",
                       help="use a built-in workload's schema (and its outcome): "
                            "%(choices)s")
    parser.add_argument("--train", required=True,
                        help="the real rows the synthesizer saw (CSV or Parquet)")
    parser.add_argument("--holdout", required=True,
                        help="real rows the synthesizer never saw (CSV or Parquet)")
    parser.add_argument("--synthetic", required=True, help="the synthetic table")
    parser.add_argument("--target", help="two-level outcome for utility: boolean, or "
                                         "categorical with two categories (default: the "
                                         "workload's)")
    parser.add_argument("--secret", help="the column attribute inference guesses "
                                         "(default: the target)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--card", help="a data card (card.json) to link the report from")
    parser.add_argument("--out", required=True, help="folder for the report")
    _json(parser)


def _json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def _demo(args: argparse.Namespace) -> int:
    from pet.demo import run_demo

    print(run_demo(args.sites))
    return 0


def _serve(args: argparse.Namespace) -> int:
    if args.role == "site":
        from services.site import serve
    else:
        from services.coordinator import serve
    serve(args.config)
    return 0


def _certs(args: argparse.Namespace) -> int:
    from pet.certs import make_certificates
    from pet.plain import emit

    made = make_certificates(args.directory, sites=args.sites, hosts=args.hosts)
    emit(args.json, f"CA and certificates for coordinator, {', '.join(args.sites)} in "
                    f"{made.directory}",
         {"directory": str(made.directory), "ca": str(made.ca),
          "names": ["coordinator", *args.sites]})
    return 0


def _query(args: argparse.Namespace) -> int:
    """Each query in turn, in one study, every one checked against the federation's schema
    before the first runs: a table row each, or with --json one plain JSON object
    (`Result.to_dict`) for one query and a list of them for several. A refusal stops the
    rest, after the answers already paid for are shown."""
    from pet.queries import parse

    queries = [parse(text) for text in args.query]
    options = {k: v for k, v in (("epsilon", args.epsilon), ("delta", args.delta))
               if v is not None}
    results: list[Any] = []
    with client_of(args) as client:
        for query in queries:
            query.validate(client.schema)
        with client.study(args.backend, **options) as study:
            try:
                for query in queries:
                    results.append(study.run(query))
            finally:
                _show(results, args.json, several=len(queries) > 1)
    return 0


def _show(results: list[Any], as_json: bool, *, several: bool) -> None:
    """Results as table rows, or as plain JSON (a list when several were asked)."""
    from pet.report import RESULT_HEADERS, result_row, table

    if not results:
        return
    if as_json:
        fields = [result.to_dict() for result in results]
        print(json.dumps(fields if several else fields[0], indent=2, allow_nan=False))
    else:
        print(table([result_row(result) for result in results], RESULT_HEADERS))


def _budget(args: argparse.Namespace) -> int:
    from pet.ledger import Ledger
    from pet.report import table

    if args.coordinator:
        with client_of(args) as client:
            budgets = client.budgets(args.ledger or "")
    else:
        if not args.ledger:
            raise PetError("name a ledger file, or --coordinator to ask every site")
        if args.set and not args.dataset:
            raise PetError("--set needs a dataset")
        ledger = Ledger(args.ledger)
        if args.set:
            budgets = [ledger.set_budget(args.dataset, *args.set)]
        else:
            budgets = [ledger.budget(args.dataset)] if args.dataset else ledger.budgets()
    rows = [{**({"site": b.site} if args.coordinator else {}), "dataset": b.dataset,
             "epsilon": b.epsilon, "spent_epsilon": b.spent_epsilon,
             "remaining_epsilon": max(b.epsilon - b.spent_epsilon, 0.0), "delta": b.delta,
             "spent_delta": b.spent_delta, "releases": b.releases, "rho": b.rho,
             "spent_rho": b.spent_rho}
            for b in budgets]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    names = {"epsilon": "ε", "spent_epsilon": "ε spent", "remaining_epsilon": "ε left",
             "delta": "δ", "spent_delta": "δ spent", "rho": "ρ", "spent_rho": "ρ spent"}
    headers = list(rows[0]) if rows else ["dataset"]
    print(table([[_cell(r[h]) for h in headers] for r in rows],
                [names.get(h, h) for h in headers]))
    return 0


def _cell(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _audit(args: argparse.Namespace) -> int:
    from pet.audit import AuditLog, entries_json, format_entries

    log = AuditLog(args.log)
    intact = log.verify() if args.verify else None  # a broken chain stops here, by name
    entries = log.entries(analyst=args.analyst, since=args.since, limit=args.limit)
    print(entries_json(entries) if args.json else format_entries(entries), flush=True)
    if intact is not None:  # after the entries, on a line of its own, off the JSON stream
        print(f"audit chain intact: {intact} entries", file=sys.stderr)
    return 0


def _schema(args: argparse.Namespace) -> int:
    from pet.infer import infer

    print(infer(args.file, name=args.name, max_categories=args.max_categories), end="")
    return 0


def _health(args: argparse.Namespace) -> int:
    """Ask a server's health service, again every half second for up to `--wait` seconds
    while it is not (yet) SERVING; 0 once it serves, 1 otherwise."""
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.config import Tls
    from services.security import CHANNEL_OPTIONS, peer_channel

    if args.tls:
        if not args.role:
            raise PetError("--tls needs --role: the certificate to present")
        folder = Path(args.tls)
        channel = peer_channel(args.address, Tls(folder / f"{args.role}.pem",
                                                 folder / f"{args.role}.key",
                                                 folder / "ca.pem"))
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(args.ca).read_bytes())
        channel = grpc.secure_channel(args.address, credentials, options=CHANNEL_OPTIONS)
    deadline = time.monotonic() + args.wait
    with channel:
        while True:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as error:
                status = f"{error.code().name}: {error.details()}"
            if status == "SERVING" or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
    if args.json:
        print(json.dumps({"address": args.address, "status": status}))
    else:
        print(f"{args.address}: {status}", file=sys.stdout if status == "SERVING" else sys.stderr)
    return 0 if status == "SERVING" else 1


ELSEWHERE = {"bench": "benchmarks.cli", "synth": "pet.synth.commands",
             "evaluate": "pet.evaluate.commands"}
"""Commands carried out by another module's `run`, imported when the command runs."""


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    if name in ELSEWHERE:
        return importlib.import_module(ELSEWHERE[name]).run  # type: ignore[no-any-return]
    return {"demo": _demo, "serve": _serve, "certs": _certs, "query": _query,
            "budget": _budget, "audit": _audit, "schema": _schema, "health": _health}[name]


if __name__ == "__main__":
    sys.exit(main())
