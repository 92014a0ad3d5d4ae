"""Generate the Python code of protocols/pet/v1/*.proto into services/pb/.

The .proto files are the source of truth for the wire; this script is the one way their
Python code is made, and `--check` (run by the tests) fails when the committed code is
stale. protoc names modules after the proto paths (`pet.v1.common_pb2`), which would
collide with the `pet` library, so the generated imports are rewritten to be relative.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protocols"
PACKAGE = Path("pet") / "v1"
OUT = ROOT / "services" / "pb"
HEADER = '"""Generated from protocols/pet/v1 by `python -m services.codegen`; do not edit."""\n'


def generate() -> dict[str, str]:
    """File name → generated text, for every proto file."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as out:
        args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out}",
                f"--pyi_out={out}", f"--grpc_python_out={out}", *sources]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        files = {p.name: _relative(p.read_text()) for p in (Path(out) / PACKAGE).iterdir()}
    files["__init__.py"] = HEADER
    return files


def _relative(text: str) -> str:
    """Imports of sibling generated modules, made relative to services.pb."""
    return re.sub(r"^from pet\.v1 import (\w+)", r"from . import \1", text, flags=re.M)


def stale() -> list[str]:
    """Generated files that differ from (or are missing in) services/pb, or are extra."""
    expected = generate()
    present = {p.name for p in OUT.iterdir() if p.is_file()} if OUT.exists() else set()
    changed = [name for name, text in expected.items()
               if not (OUT / name).exists() or (OUT / name).read_text() != text]
    return sorted(changed + [name for name in present - set(expected)
                             if name.endswith((".py", ".pyi"))])


def main(argv: list[str] | None = None) -> int:
    """Write the generated code, or with --check report whether it is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the code is stale")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        if names:
            print(f"stale generated code: {', '.join(names)}; run python -m services.codegen")
            return 1
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in generate().items():
        (OUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
