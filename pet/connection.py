"""How a command reaches the coordinator: its address, the federation's CA and the
analyst's bearer token, shared by every command that talks to it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pet.errors import PetError


def add_connection(parser: argparse.ArgumentParser, *, required: bool = True,
                   address: bool = True) -> None:
    """The options that reach the coordinator (without `--coordinator` when `address` is
    False: the address is known otherwise)."""
    if address:
        parser.add_argument("--coordinator", required=required, metavar="ADDRESS",
                            help="the coordinator, e.g. 127.0.0.1:50050")
    parser.add_argument("--ca", help="the federation's CA certificate (PEM)")
    parser.add_argument("--token-file", help="file holding the analyst's bearer token "
                                             "(default: $PET_TOKEN)")


def client_of(args: argparse.Namespace, address: str | None = None) -> Any:
    """A client of the coordinator at `address` (default: `--coordinator`)."""
    from pet.client import Client

    token = (Path(args.token_file).read_text().strip() if args.token_file
             else os.environ.get("PET_TOKEN"))
    if not token or not args.ca:
        raise PetError("--ca and a token (--token-file or $PET_TOKEN) are needed to reach "
                       "the coordinator")
    return Client(address or args.coordinator, token=token, ca=args.ca)
