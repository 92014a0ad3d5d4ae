"""Queries written as text, for the command line: `Mean("age", where="sex == 'female'")`.

The text is parsed as one Python call of a known query class whose arguments are
literals (numbers, strings, lists, tuples, dicts); nothing is evaluated, so text from
anyone is safe to parse.
"""

from __future__ import annotations

import ast
from typing import Any

from pet.errors import QueryError
from pet.queries.base import Query


def parse(text: str, queries: dict[str, type[Query]]) -> Query:
    """The query a text asks for, among the given classes by name."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise QueryError(f"cannot read the query {text!r}: {exc.msg}") from None
    except (RecursionError, MemoryError) as exc:
        raise QueryError(f"cannot read the query ({type(exc).__name__}: {exc})") from None
    if not isinstance(tree, ast.Call) or not isinstance(tree.func, ast.Name):
        raise QueryError(f"write a query as a call, e.g. Mean(\"age\"); got {text!r}")
    cls = queries.get(tree.func.id)
    if cls is None:
        raise QueryError(f"unknown query {tree.func.id!r}; choose one of {sorted(queries)}")
    try:
        args = [_literal(a) for a in tree.args]
        kwargs = {k.arg: _literal(k.value) for k in tree.keywords if k.arg is not None}
        return cls(*args, **kwargs)
    except (TypeError, ValueError, RecursionError, MemoryError) as exc:
        raise QueryError(f"{tree.func.id}: {exc}") from None


def _literal(node: ast.expr) -> Any:
    """A literal argument, lists made tuples (query fields are immutable)."""
    value = ast.literal_eval(node)
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    return value
