"""Run a peer's MST or AIM in its own interpreter, with a wall-clock limit.

Standard library only: pet's benchmark imports this module from pet's environment,
while the peer runs in ``benchmarks/.peers/<peer>/`` (built by ``setup.sh``).

    from benchmarks.peers.driver import run
    stats = run("opendp", "mst", codes, {"age": 8, "sex": 2}, epsilon=1.0, delta=1e-6,
                seed=0, rows=1000, timeout_s=600)
    stats["status"]  # "ok" | "timeout" | "error"

``codes`` is the table of integer codes: a mapping attribute → column, a sequence of
rows in the domain's column order, or the path of a CSV already laid out as
``run_peer.py`` expects. ``domain`` maps attribute → size, in column order.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS_ROOT = HERE.parent / ".peers"
RUN_PEER = HERE / "run_peer.py"
PEERS = ("opendp", "smartnoise", "mbi")
METHODS = ("mst", "aim")
TAIL_CHARS = 4000


def peer_python(peer: str) -> Path:
    """Interpreter of a peer's environment (``setup.sh`` builds it)."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; expected one of {PEERS}")
    return PEERS_ROOT / peer / "bin" / "python"


def write_inputs(
    workdir: Path,
    codes: Mapping[str, Sequence[int]] | Sequence[Sequence[int]] | str | os.PathLike,
    domain: Mapping[str, int],
) -> tuple[Path, Path]:
    """Write ``codes.csv`` and ``domain.json`` into ``workdir``; return their paths."""
    names = list(domain)
    domain_path = workdir / "domain.json"
    domain_path.write_text(json.dumps({n: int(domain[n]) for n in names}))
    if isinstance(codes, (str, os.PathLike)):
        return Path(codes), domain_path
    if isinstance(codes, Mapping):
        if set(codes) != set(names):
            raise ValueError("codes' columns must be the domain's attributes")
        rows: Any = zip(*(codes[n] for n in names), strict=True)
    else:
        rows = codes
    data_path = workdir / "codes.csv"
    with data_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerows(rows)
    return data_path, domain_path


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - TAIL_CHARS))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run(
    peer: str,
    method: str,
    codes: Mapping[str, Sequence[int]] | Sequence[Sequence[int]] | str | os.PathLike,
    domain: Mapping[str, int],
    *,
    epsilon: float,
    delta: float,
    seed: int = 0,
    rows: int | None = None,
    resample: bool = False,
    rho: float | None = None,
    timeout_s: float = 600.0,
    workdir: str | os.PathLike | None = None,
    python: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Fit ``peer``'s ``method`` on ``codes``, sample ``rows`` rows, return its stats.

    The peer runs as a child process in its own process group; past ``timeout_s``
    seconds of wall clock the whole group is killed and ``{"status": "timeout"}`` comes
    back. Otherwise the dict is ``run_peer.py``'s stats.json (fit_s, sample_s,
    peak_rss_mb, versions, call, ...) with ``status`` "ok", or ``status`` "error" with
    the tail of the child's stderr. Every result also carries ``wall_s`` (whole child,
    imports included), ``workdir`` (where the inputs, ``synthetic.csv``, ``stats.json``
    and the child's ``stdout.txt``/``stderr.txt`` are) and ``returncode``.

    ``rows`` defaults to the number of input rows. ``workdir`` defaults to a fresh
    temporary folder, which is kept (the synthetic data are read from it).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    interpreter = Path(python) if python is not None else peer_python(peer)
    if not interpreter.exists():
        return {
            "status": "error",
            "peer": peer,
            "method": method,
            "error": f"{interpreter} not found: build it with benchmarks/peers/setup.sh",
        }
    if workdir is None:
        work = Path(tempfile.mkdtemp(prefix=f"peer-{peer}-{method}-"))
    else:
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
    data_path, domain_path = write_inputs(work, codes, domain)
    if rows is None:
        with data_path.open() as f:
            rows = sum(1 for _ in f) - 1

    out_path, stats_path = work / "synthetic.csv", work / "stats.json"
    stats_path.unlink(missing_ok=True)
    cmd = [
        str(interpreter),
        str(RUN_PEER),
        "--peer", peer,
        "--method", method,
        "--data", str(data_path),
        "--domain", str(domain_path),
        "--epsilon", repr(float(epsilon)),
        "--delta", repr(float(delta)),
        "--seed", str(int(seed)),
        "--rows", str(int(rows)),
        "--out", str(out_path),
        "--stats", str(stats_path),
    ]  # fmt: skip
    if resample:
        cmd.append("--resample")
    if rho is not None:
        cmd += ["--rho", repr(float(rho))]
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONHASHSEED"] = "0"  # set iteration order feeds mbi's junction trees
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)

    stdout_path, stderr_path = work / "stdout.txt", work / "stderr.txt"
    base: dict[str, Any] = {"peer": peer, "method": method, "workdir": str(work), "cmd": cmd}
    t0 = time.monotonic()
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        child = subprocess.Popen(
            cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=work,
            start_new_session=True,
        )  # fmt: skip
        try:
            returncode = child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(child)
            return {
                **base,
                "status": "timeout",
                "timeout_s": timeout_s,
                "wall_s": time.monotonic() - t0,
                "stderr_tail": _tail(stderr_path),
            }
        except BaseException:
            _kill_group(child)
            raise
    wall_s = time.monotonic() - t0

    stats: dict[str, Any] = {}
    if stats_path.exists():
        try:
            stats = json.loads(stats_path.read_text())
        except ValueError:
            stats = {}
    result = {**base, **stats, "wall_s": wall_s, "returncode": returncode}
    if returncode != 0 or stats.get("status") != "ok":
        result["status"] = "error"
        result["stderr_tail"] = _tail(stderr_path)
    return result


def _kill_group(child: subprocess.Popen) -> None:
    """Kill the child's whole process group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def read_codes(path: str | os.PathLike) -> tuple[list[str], list[list[int]]]:
    """Read a codes CSV (such as ``synthetic.csv``) into its header and integer rows."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [[int(v) for v in row] for row in reader]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run one peer synthesizer with a timeout.")
    p.add_argument("--peer", required=True, choices=PEERS)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--data", required=True, help="codes.csv")
    p.add_argument("--domain", required=True, help="domain.json")
    p.add_argument("--epsilon", type=float, required=True)
    p.add_argument("--delta", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", type=int)
    p.add_argument("--resample", action="store_true")
    p.add_argument("--timeout-s", type=float, default=600.0)
    p.add_argument("--workdir")
    args = p.parse_args(argv)
    domain = json.loads(Path(args.domain).read_text())
    stats = run(
        args.peer,
        args.method,
        args.data,
        domain,
        epsilon=args.epsilon,
        delta=args.delta,
        seed=args.seed,
        rows=args.rows,
        resample=args.resample,
        timeout_s=args.timeout_s,
        workdir=args.workdir,
    )
    json.dump(stats, sys.stdout, indent=2, default=str)
    print()
    return 0 if stats.get("status") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
