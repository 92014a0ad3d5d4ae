"""The README's own-data walk-through runs exactly as written: its code blocks are taken
from the README and executed in order, in one shell, in a fresh folder, and what they
print is checked against pandas, scipy and statsmodels on the same table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm
from lifelines.datasets import load_gbsg2
from scipy import stats

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Your own data, step by step"


def walkthrough(text: str) -> tuple[str, int]:
    """The section's `sh` blocks as they are and its `python` blocks fed to `python`, as
    one bash script that stops at the first failure and stops the servers it started;
    and how many blocks it holds."""
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    blocks = re.findall(r"```(\w+)\n(.*?)```", text[start:end], re.S)
    script = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for language, body in blocks:
        if language == "python":
            script.append(f"python - <<'PET_PYTHON'\n{body}PET_PYTHON")
        elif language == "sh":
            script.append(body)
    return "\n".join(script), len(blocks)


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    script, blocks = walkthrough(README.read_text())
    assert blocks >= 9, "the walk-through's code blocks were not found"
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the README starts from pet's folder
    ran = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    out = ran.stdout
    trial = load_gbsg2()

    assert re.search(r"^Count\(\)\s+686\s+686\s", out, re.M), out
    post = trial.age[trial.menostat == "Post"]
    assert re.search(rf'^Mean\(age\) where menostat == "Post"\s+{post.mean():.4g}\s+'
                     rf"{len(post)}\s", out, re.M), out
    welch = stats.ttest_ind(trial.pnodes[trial.horTh == "no"],
                            trial.pnodes[trial.horTh == "yes"], equal_var=False)
    assert f"statistic {welch.statistic:.4g} (df {welch.df:.4g}), p = {welch.pvalue:.3g}" in out
    assert re.search(r"^686$", out, re.M), "the --json Count read by python"
    assert re.search(r"^audit chain intact: 6 entries$", ran.stderr + out, re.M)

    design = sm.add_constant(pd.DataFrame({
        "age": trial.age, "horTh[yes]": (trial.horTh == "yes").astype(float)}))
    logit = sm.Logit(trial.cens, design).fit(disp=0)
    printed = _table_after("LogisticRegression(cens, [age, horTh])", out)
    np.testing.assert_allclose(printed.coef, logit.params.to_numpy(), atol=1e-4)
    np.testing.assert_allclose(printed.se, logit.bse.to_numpy(), rtol=1e-3)


def _table_after(title: str, out: str) -> pd.DataFrame:
    """The coefficient table `Result.summary()` printed under `title`."""
    lines = out[out.index(title):].splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["coef", "se"])
    rows = [line.split() for line in lines[header + 1:header + 4]]
    return pd.DataFrame({"coef": [float(r[1]) for r in rows], "se": [float(r[2]) for r in rows]},
                        index=[r[0] for r in rows])
