"""`pet evaluate`: evaluate a synthetic table against the real rows it was made from and
real rows it never saw, write the report, and link it from the release's data card."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pet.errors import PetError
from pet.evaluate import Evaluation, evaluate, write_report
from pet.plain import emit
from pet.schema import Schema
from pet.synth.card import write
from pet.table import open_table
from pet.workloads.base import packaged_schema


def run(args: argparse.Namespace) -> int:
    """Carry out `pet evaluate`."""
    schema = packaged_schema(args.workload) if args.workload else Schema.from_file(args.schema)
    train, holdout, synthetic = (open_table(path, schema).to_frame()
                                 for path in (args.train, args.holdout, args.synthetic))
    evaluation = evaluate(train, holdout, synthetic, schema, target=args.target,
                          secret=args.secret, seed=args.seed)
    paths = write_report(evaluation, args.out, real=train, synthetic=synthetic)
    if args.card:
        link(Path(args.card), evaluation, paths["html"])
    lines = [f"{v.pillar}: {v.grade} — {v.numbers}" for v in evaluation.verdicts()]
    lines.append(f"report in {paths['html']} and {paths['markdown']}")
    if args.card:
        lines.append(f"data card {args.card} now links the report")
    emit(args.json, "\n".join(lines), {
        "verdicts": [{"pillar": v.pillar, "grade": v.grade, "numbers": v.numbers}
                     for v in evaluation.verdicts()],
        "report": {k: str(v) for k, v in paths.items()}, "card": args.card})
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
