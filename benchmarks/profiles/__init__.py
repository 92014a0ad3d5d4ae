"""The shipped benchmark profiles, one YAML file each (`python -m benchmarks NAME`)."""

from pathlib import Path

PROFILES_DIR = Path(__file__).parent
