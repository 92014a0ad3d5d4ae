"""The demo study runs end to end, from the command line, with the answers a reader
would check against lifelines' data, and the synthetic cohort at the end."""

from __future__ import annotations

import re
import subprocess
import sys

from lifelines.datasets import load_lung

from pet.backends import BACKENDS


def test_demo_runs_every_backend_through_the_servers_and_stops_them() -> None:
    done = subprocess.run([sys.executable, "-m", "pet", "demo"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    output = done.stdout
    lung = load_lung()
    for backend in BACKENDS:
        assert f"backend {backend} — " in output
        exact = re.search(rf"^(Count\(\))?\s+{re.escape(backend)}\s+228\s+0\s", output, re.M)
        assert exact or backend in ("dp", "he+dp", "mpc+dp")  # DP counts carry noise
    assert re.search(rf"Mean\(age\)\s+plaintext\s+{lung.age.mean():.4g}\s+0\s", output)
    # Counts at chosen thresholds would be a histogram of single patients: only inside MPC.
    assert re.search(r"ExactQuantiles\(age, probs=\[0.5\]\)\s+plaintext\s+REFUSED", output)
    assert re.search(rf"^\s+mpc\s+\[{lung.age.median():g}\]", output, re.M)
    assert "LogisticRegression(dead, [age, sex, ph_ecog])" in output
    assert "converged" in output
    assert "REFUSED: FAILED_PRECONDITION: site 'site-1' refused" in output
    # Four steps: lung's 228 rows leave the pairs' signal faint, so the columns are
    # measured twice (pet.synth.allocation), then the tree is selected and measured.
    assert re.search(r"Synthetic cohort: MST fitted across 3 sites under mpc\+dp \(\d+ noisy "
                     r"marginals, 4 privacy steps, .*\); 228 rows × 9 columns", output)
    assert "Servers stopped: coordinator 0, site-1 0, site-2 0, site-3 0." in output
    assert "dead, n (%)" in output and "sex[female] HR" in output  # Table 1 and Cox
    # Every DP question and the synthetic cohort fit within ε = 6 a site (zCDP adds ρ).
    spent = re.search(r"site-1 ε ([\d.]+) of 6 at δ = 0.001 \((\d+) charges\)", output)
    assert spent is not None and 0 < float(spent.group(1)) <= 6
    assert int(spent.group(2)) == 3 * 13 + 1  # ExactQuantiles is refused before a charge
    # Three hospitals' OMOP CDM databases, read through the shipped cohort definition.
    assert "OMOP CDM: 3 hospitals × 2000 patients" in output
    assert re.search(r"^n\s+6000\s+\d+\s+\d+", output, re.M)
    ratios = dict(re.findall(r"^  (plaintext|he|mpc|dp)\s+([\d.]+) \(", output, re.M))
    assert set(ratios) == {"plaintext", "he", "mpc", "dp"}
    assert ratios["he"] == ratios["mpc"] == ratios["plaintext"]


def test_cli_rejects_unknown_commands() -> None:
    failed = subprocess.run([sys.executable, "-m", "pet", "fly"], capture_output=True,
                            text=True, timeout=60)
    assert failed.returncode == 2
    assert "invalid choice: 'fly'" in failed.stderr
