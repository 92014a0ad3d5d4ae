"""The demo study runs end to end, from the command line, with the answers a reader
would check against lifelines' data."""

from __future__ import annotations

import re
import subprocess
import sys

from lifelines.datasets import load_lung

from pet.backends import BACKENDS


def test_demo_prints_every_backend_and_the_lung_answers() -> None:
    output = subprocess.run([sys.executable, "-m", "pet", "demo"], capture_output=True,
                            text=True, check=True, timeout=300).stdout
    lung = load_lung()
    for backend in BACKENDS:
        assert f"backend {backend}" in output
    assert re.search(rf"Mean\(age\)\s+{lung.age.mean():.4g}\s+{len(lung)}\s", output)
    assert "LogisticRegression(dead, [age, sex, ph_ecog])" in output
    assert "converged" in output
    assert "REFUSED: site" in output  # ten-year age bins break the minimum cell count


def test_cli_rejects_unknown_commands() -> None:
    failed = subprocess.run([sys.executable, "-m", "pet", "fly"], capture_output=True,
                            text=True, timeout=60)
    assert failed.returncode == 2
    assert "invalid choice: 'fly'" in failed.stderr
