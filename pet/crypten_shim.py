"""The one place pet imports CrypTen, behind the shim its 0.4.1 release needs.

CrypTen 0.4.1 imports `torch.onnx._internal.registration` at import time, a module that
current torch no longer has. CrypTen uses it only to convert ONNX models, which pet never
does, so a stub module (with `registry = None`) is registered before the import.
"""

from __future__ import annotations

import sys
import types
from typing import Any

_STUB = "torch.onnx._internal.registration"


def load_crypten() -> Any:
    """Import and return the `crypten` module, registering the ONNX stub first."""
    if _STUB not in sys.modules:
        stub = types.ModuleType(_STUB)
        stub.registry = None  # type: ignore[attr-defined]
        sys.modules[_STUB] = stub
    import crypten

    return crypten
