"""The evaluation report: a verdict table on top (fidelity, utility, privacy, each with
its numbers and a plain-language reading), then the detail and the figures. Written as
Markdown beside its PNG figures and as one HTML file with the figures embedded."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pet.schema import Boolean, Categorical

if TYPE_CHECKING:
    from pet.evaluate import Evaluation

FIGURES = ("correlation", "distributions", "membership", "calibration", "survival")


def write_report(evaluation: Evaluation, folder: str | Path, *, real: pd.DataFrame,
                 synthetic: pd.DataFrame, title: str = "") -> dict[str, Path]:
    """Write report.md, report.html, summary.json and the PNG figures into `folder`;
    returns their paths by name. `real` and `synthetic` are the tables evaluated (for
    the distribution plots)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = _figures(evaluation, real, synthetic, folder)
    text = markdown(evaluation, {k: p.name for k, p in figures.items()}, title=title)
    paths = {"markdown": folder / "report.md", "html": folder / "report.html",
             "summary": folder / "summary.json"}
    paths["markdown"].write_text(text)
    paths["html"].write_text(_html(text, figures, title or _title(evaluation)))
    paths["summary"].write_text(json.dumps(_plain(evaluation.summary()), indent=2) + "\n")
    return {**paths, **figures}


def markdown(evaluation: Evaluation, figures: dict[str, str] | None = None, *,
             title: str = "") -> str:
    """The report as Markdown, linking the figures by file name where given."""
    figures = figures or {}
    lines = [f"# {title or _title(evaluation)}", "",
             "| pillar | verdict | numbers | what it means |", "|---|---|---|---|"]
    lines += [f"| **{v.pillar}** | {v.grade} | {v.numbers} | {v.reading} |"
              for v in evaluation.verdicts()]
    rows = evaluation.rows
    lines += ["", f"{rows['train_rows']:,} training rows (what the synthesizer saw), "
              f"{rows['holdout_rows']:,} holdout rows (real rows it never saw: the control "
              f"of every attack and the test set), {rows['synthetic_rows']:,} synthetic rows."]
    lines += _fidelity_section(evaluation, figures)
    lines += _utility_section(evaluation, figures)
    lines += _privacy_section(evaluation, figures)
    return "\n".join(lines) + "\n"


def _title(evaluation: Evaluation) -> str:
    return f"Synthetic {evaluation.schema.name or 'table'}: evaluation"


def _figure(figures: dict[str, str], name: str, caption: str) -> list[str]:
    return ["", f"![{caption}]({figures[name]})"] if name in figures else []


def _fidelity_section(evaluation: Evaluation, figures: dict[str, str]) -> list[str]:
    found = evaluation.fidelity
    lines = ["", "## Fidelity", "",
             "Total variation distance (TVD: half the L1 distance of two distributions, "
             "0 = identical, 1 = disjoint) of marginals on the schema's public bins.", "",
             "| marginals | mean TVD | farthest apart |", "|---|---:|---|"]
    for k, name in ((1, "1-way"), (2, "2-way"), (3, "3-way (fixed sample)")):
        clique, worst = found.worst.get(k, ((), 0.0))
        lines.append(f"| {name} | {found.tvd[k]:.3f} | {' × '.join(clique)} ({worst:.3f}) |")
    lines += ["", "| column | kind | TVD | Wasserstein (share of range) | KS | missing real "
              "/ synthetic |", "|---|---|---:|---:|---:|---:|"]
    for name, row in found.columns.iterrows():
        lines.append(f"| {name} | {row['kind']} | {row['tvd']:.3f} | {_num(row['wasserstein'])} "
                     f"| {_num(row['ks'])} | {row['missing_real']:.1%} / "
                     f"{row['missing_synthetic']:.1%} |")
    summary = found.summary()
    lines += ["", "Correlations (Pearson, on the public-scale features): mean gap "
              f"{summary['correlation_gap_mean']:.3f}, largest "
              f"{summary['correlation_gap_max']:.3f}."]
    lines += _figure(figures, "correlation", "correlation gap heat map")
    lines += _figure(figures, "distributions", "per-column distributions")
    return lines


def _utility_section(evaluation: Evaluation, figures: dict[str, str]) -> list[str]:
    found = evaluation.utility
    if found is None:
        return ["", "## Utility", "", "Not measured: no boolean outcome was named."]
    lines = ["", "## Utility", "",
             f"Outcome {found.target!r}; gradient-boosted trees (scikit-learn) trained on "
             "each table and tested on the real holdout rows.", "",
             "| trained on | AUC | accuracy | Brier | calibration error |",
             "|---|---:|---:|---:|---:|"]
    for name, c in (("real (TRTR)", found.real), ("synthetic (TSTR)", found.synthetic)):
        lines.append(f"| {name} | {c.auc:.3f} | {c.accuracy:.3f} | {c.brier:.3f} | "
                     f"{c.calibration_error:.3f} |")
    lines += _figure(figures, "calibration", "calibration curves")
    if len(found.coefficients):
        lines += ["", "Logistic regression (pet's, 95% intervals) on each table:", "",
                  "| term | real | synthetic | same sign | interval overlap |",
                  "|---|---:|---:|---|---:|"]
        for term, r in found.coefficients.iterrows():
            lines.append(f"| {term} | {r['real']:.3g} [{r['real_low']:.3g}, {r['real_high']:.3g}] "
                         f"| {r['synthetic']:.3g} [{r['synthetic_low']:.3g}, "
                         f"{r['synthetic_high']:.3g}] | {'yes' if r['same_sign'] else 'no'} | "
                         f"{r['overlap']:.2f} |")
    else:
        lines += ["", f"Regression coefficients not compared: {found.regression_note}."]
    if found.survival is not None:
        lines += ["", f"Kaplan–Meier curves of {found.survival.column!r}: largest gap "
                  f"{found.survival.gap:.3f}."]
        lines += _figure(figures, "survival", "Kaplan–Meier curves")
    return lines


def _privacy_section(evaluation: Evaluation, figures: dict[str, str]) -> list[str]:
    found = evaluation.privacy
    lines = ["", "## Privacy", "",
             f"Distance to closest record (L1 on public scales): median "
             f"{np.median(found.dcr_train):.3f} to a training row, "
             f"{np.median(found.dcr_holdout):.3f} to a holdout row; "
             f"{found.closer_to_train:.0%} of synthetic rows are nearer a training row, where "
             f"a table drawn from the population would show {found.expected_closer:.0%} "
             f"(excess {found.dcr_excess:.2f}; a copy scores 1).", "",
             f"Membership inference (nearest synthetic row): AUC {found.mia_auc:.3f}, "
             f"attacker's advantage {found.mia_advantage:.3f} (0 = no better than a coin; "
             f"chance alone exceeds {found.mia_chance:.3f} one time in 20).",
             "", "Attacks after Giomi et al. (PETS 2023), on training targets and on holdout "
             "targets as control; risk = (train − control) / (1 − control):", "",
             "| attack | what | success on train | on control | at random | risk [95%] |",
             "|---|---|---:|---:|---:|---|"]
    for r in found.risks:
        low, high = r.interval
        learnt = "" if r.better_than_random else " (no better than random)"
        lines.append(f"| {r.attack} | {r.detail} | {r.train.rate:.3f} | {r.control.rate:.3f} | "
                     f"{r.baseline.rate:.3f} | {r.risk:.3f} [{low:.3f}, {high:.3f}]{learnt} |")
    lines += _figure(figures, "membership", "membership-inference ROC")
    return lines


def _num(value: float) -> str:
    return "" if value != value else f"{value:.3f}"


def _figures(evaluation: Evaluation, real: pd.DataFrame, synthetic: pd.DataFrame,
             folder: Path) -> dict[str, Path]:
    made = {"correlation": _correlation(evaluation),
            "distributions": _distributions(evaluation, real, synthetic),
            "membership": _membership(evaluation)}
    if evaluation.utility is not None:
        made["calibration"] = _calibration(evaluation)
        if evaluation.utility.survival is not None:
            made["survival"] = _survival(evaluation)
    paths = {}
    for name, figure in made.items():
        paths[name] = folder / f"{name}.png"
        figure.savefig(paths[name], dpi=100, bbox_inches="tight")
        plt.close(figure)
    return paths


def _correlation(evaluation: Evaluation) -> plt.Figure:
    gap = evaluation.fidelity.correlation_gap
    size = max(4.0, 0.28 * len(gap))
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(gap.to_numpy(), vmin=0, vmax=2, cmap="Reds")  # |r − r'| ≤ 2
    axes.set_xticks(range(len(gap)), gap.columns, rotation=90, fontsize=7)
    axes.set_yticks(range(len(gap)), gap.index, fontsize=7)
    axes.set_title("|real − synthetic| correlation")
    figure.colorbar(image, ax=axes, shrink=0.8)
    return figure


def _distributions(evaluation: Evaluation, real: pd.DataFrame,
                   synthetic: pd.DataFrame) -> plt.Figure:
    schema = evaluation.schema
    columns = schema.columns
    across = 4
    down = -(-len(columns) // across)
    figure, grid = plt.subplots(down, across, figsize=(3.2 * across, 2.4 * down), squeeze=False)
    for axes, column in zip(grid.flat, columns, strict=False):
        a = schema.encode(real, columns=[column.name])[column.name]
        b = schema.encode(synthetic, columns=[column.name])[column.name]
        a, b = a[~np.isnan(a)], b[~np.isnan(b)]
        if isinstance(column, Categorical | Boolean):
            labels = ([str(c) for c in column.categories] if isinstance(column, Categorical)
                      else ["false", "true"])
            k = np.arange(len(labels))
            for offset, values, name in ((-0.2, a, "real"), (0.2, b, "synthetic")):
                share = np.bincount(values.astype(int), minlength=len(labels)) / max(len(values), 1)
                axes.bar(k + offset, share, width=0.4, label=name)
            axes.set_xticks(k, labels, fontsize=7)
        else:
            edges = np.linspace(*column.bounds(), 31)
            axes.hist([a, b], bins=edges, density=True, label=["real", "synthetic"])
        axes.set_title(column.name, fontsize=9)
        axes.tick_params(labelsize=7)
    for axes in list(grid.flat)[len(columns):]:
        axes.axis("off")
    grid.flat[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def _membership(evaluation: Evaluation) -> plt.Figure:
    fpr, tpr = evaluation.privacy.mia_roc
    figure, axes = plt.subplots(figsize=(4, 4))
    axes.plot(fpr, tpr, label=f"attack (AUC {evaluation.privacy.mia_auc:.2f})")
    axes.plot([0, 1], [0, 1], "--", color="grey", label="coin toss")
    axes.set_xlabel("false positive rate (holdout called member)")
    axes.set_ylabel("true positive rate (member found)")
    axes.set_title("Membership inference")
    axes.legend(fontsize=8)
    return figure


def _calibration(evaluation: Evaluation) -> plt.Figure:
    found = evaluation.utility
    figure, axes = plt.subplots(figsize=(4, 4))
    for name, c in (("trained on real", found.real), ("trained on synthetic", found.synthetic)):
        observed, predicted = c.curve
        axes.plot(predicted, observed, "o-", label=f"{name} (AUC {c.auc:.2f})")
    axes.plot([0, 1], [0, 1], "--", color="grey")
    axes.set_xlabel("predicted probability")
    axes.set_ylabel(f"observed rate of {found.target}")
    axes.set_title("Calibration on real holdout rows")
    axes.legend(fontsize=8)
    return figure


def _survival(evaluation: Evaluation) -> plt.Figure:
    found = evaluation.utility.survival
    figure, axes = plt.subplots(figsize=(5, 3.5))
    axes.step(found.times, found.real, where="post", label="real")
    axes.step(found.times, found.synthetic, where="post", label="synthetic")
    axes.set_xlabel(found.column)
    axes.set_ylabel("survival")
    axes.set_ylim(0, 1.02)
    axes.set_title("Kaplan–Meier")
    axes.legend(fontsize=8)
    return figure


def _html(text: str, figures: dict[str, Path], title: str) -> str:
    """The Markdown report as one self-contained HTML page (tables and figures only)."""
    body, table = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            body.append(_html_table(table))
            table = []
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            name = line[line.index("(") + 1:-1]
            path = next(p for p in figures.values() if p.name == name)
            data = base64.b64encode(path.read_bytes()).decode()
            body.append(f'<p><img alt="{html.escape(name)}" '
                        f'src="data:image/png;base64,{data}"></p>')
        elif line:
            body.append(f"<p>{_inline(line)}</p>")
    if table:
        body.append(_html_table(table))
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:.3em .6em;vertical-align:top}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _html_table(lines: list[str]) -> str:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    head, body = rows[0], [r for r in rows[2:]]
    out = ["<table><tr>", *(f"<th>{_inline(c)}</th>" for c in head), "</tr>"]
    for row in body:
        out += ["<tr>", *(f"<td>{_inline(c)}</td>" for c in row), "</tr>"]
    return "".join(out) + "</table>"


def _inline(text: str) -> str:
    escaped = html.escape(text)
    parts = escaped.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _plain(summary: dict) -> dict:
    """Numbers as plain floats for JSON (NaN as null)."""
    out = {}
    for key, value in summary.items():
        if isinstance(value, float | np.floating):
            out[key] = None if value != value else float(value)
        elif isinstance(value, np.integer):
            out[key] = int(value)
        else:
            out[key] = value
    return out
