"""The `pet` command line: the demo, servers, the analyst's queries, and the site's
budget and audit log. Every report is human-readable, or JSON with `--json`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.cli import add_arguments, run
from pet.connection import add_connection, client_of
from pet.errors import PetError
from pet.evaluate.commands import add_arguments as add_evaluate
from pet.evaluate.commands import run as run_evaluate
from pet.synth.commands import add_arguments as add_synth
from pet.synth.commands import run as run_synth


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `pet` and `python -m pet`."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except PetError as error:
        print(f"pet {args.command}: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the demo study through a coordinator and "
                                            "three site servers on loopback")
    demo.add_argument("--sites", type=int, default=3, help="number of sites (3-18)")
    add_arguments(commands.add_parser("bench", help="run a benchmark profile (quick, ...)"))

    serve = commands.add_parser("serve", help="run a site or coordinator server")
    serve.add_argument("role", choices=("site", "coordinator"))
    serve.add_argument("config", help="the server's configuration file (YAML)")

    certs = commands.add_parser("certs", help="make a demo CA and TLS certificates")
    certs.add_argument("directory")
    certs.add_argument("--sites", nargs="+", required=True, help="the sites' names")
    certs.add_argument("--hosts", nargs="+", default=["localhost", "127.0.0.1"],
                       help="host names and addresses every certificate is valid for")

    query = commands.add_parser("query", help="ask the federation a question")
    query.add_argument("query", nargs="+", help='e.g. \'Mean("age", where="sex == \\"female\\"")\'')
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

    add_synth(commands.add_parser("synth", help="fit a DP synthesizer (fit) or sample a "
                                                "synthetic table with its data card (sample)"))

    add_evaluate(commands.add_parser("evaluate", help="evaluate a synthetic table: fidelity, "
                                                      "utility, privacy; writes a report"))

    health = commands.add_parser("health", help="check that a server is SERVING")
    health.add_argument("address")
    health.add_argument("--tls", required=True, help="folder with ca.pem and ROLE.pem/.key")
    health.add_argument("--role", required=True, help="the certificate to present")
    return parser


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

    made = make_certificates(args.directory, sites=args.sites, hosts=args.hosts)
    print(f"CA and certificates for coordinator, {', '.join(args.sites)} in {made.directory}")
    return 0


def _query(args: argparse.Namespace) -> int:
    from pet import codec
    from pet.queries import parse
    from pet.report import RESULT_HEADERS, result_row, table

    query = parse(" ".join(args.query))
    options = {k: v for k, v in (("epsilon", args.epsilon), ("delta", args.delta))
               if v is not None}
    with client_of(args) as client, client.study(args.backend, **options) as study:
        result = study.run(query)
    if args.json:
        print(codec.dumps(result_fields(result), indent=2))
    else:
        print(table([result_row(result)], RESULT_HEADERS))
    return 0


def result_fields(result: Any) -> dict[str, Any]:
    """A result as a dict of plain fields, for JSON output."""
    from dataclasses import asdict

    return {**asdict(result), "value": result.value}


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
    if args.verify:
        print(f"audit chain intact: {log.verify()} entries", file=sys.stderr)
    entries = log.entries(analyst=args.analyst, since=args.since, limit=args.limit)
    print(entries_json(entries) if args.json else format_entries(entries))
    return 0


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.config import Tls
    from services.security import peer_channel

    folder = Path(args.tls)
    tls = Tls(folder / f"{args.role}.pem", folder / f"{args.role}.key", folder / "ca.pem")
    with peer_channel(args.address, tls) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as error:
            print(f"{args.address}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


COMMANDS = {"demo": _demo, "bench": run, "serve": _serve, "certs": _certs, "query": _query,
            "budget": _budget, "audit": _audit, "health": _health, "synth": run_synth,
            "evaluate": run_evaluate}


if __name__ == "__main__":
    sys.exit(main())
