"""`pet evaluate`: evaluate a synthetic table against the real rows it was made from and
real rows it never saw, write the report, and link it from the release's data card."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pet.errors import PetError
from pet.evaluate import Evaluation, evaluate, write_report
from pet.schema import Schema
from pet.synth.card import write
from pet.table import open_table
from pet.workloads import WORKLOADS
from pet.workloads.base import packaged_schema


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `evaluate` options."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--schema", help="the tables' schema (YAML or JSON)")
    which.add_argument("--workload", choices=sorted(WORKLOADS),
                       help="use a built-in workload's schema (and its outcome)")
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


def run(args: argparse.Namespace) -> int:
    """Carry out `pet evaluate`."""
    schema = packaged_schema(args.workload) if args.workload else Schema.from_file(args.schema)
    train, holdout, synthetic = (open_table(path, schema).to_frame()
                                 for path in (args.train, args.holdout, args.synthetic))
    evaluation = evaluate(train, holdout, synthetic, schema, target=args.target,
                          secret=args.secret, seed=args.seed)
    paths = write_report(evaluation, args.out, real=train, synthetic=synthetic)
    for verdict in evaluation.verdicts():
        print(f"{verdict.pillar}: {verdict.grade} — {verdict.numbers}")
    print(f"report in {paths['html']} and {paths['markdown']}")
    if args.card:
        link(Path(args.card), evaluation, paths["html"])
        print(f"data card {args.card} now links the report")
    return 0


def link(card_path: Path, evaluation: Evaluation, report: Path) -> None:
    """Put the evaluation's verdicts and a link to its report into a data card (JSON and
    its Markdown beside it, both rewritten)."""
    try:
        data = json.loads(card_path.read_text())
    except (OSError, ValueError) as error:
        raise PetError(f"cannot read the data card {card_path}: {error}") from None
    data["evaluation"] = {
        "report": os.path.relpath(report, card_path.parent),
        "verdicts": [{"pillar": v.pillar, "grade": v.grade, "numbers": v.numbers}
                     for v in evaluation.verdicts()]}
    write(data, card_path.parent)
