"""Public request limits: each refused before any work with a message naming the limit,
its value and what was asked; status codes that say so; bad backend options and round
states refused as the caller's fault."""

from __future__ import annotations

import grpc
import pytest

from pet.backends import get_backend
from pet.errors import ArgumentError, QueryError
from pet.limits import (
    DEFAULT_LIMITS,
    FilterLimitError,
    LimitError,
    RequestLimits,
    check_query,
    check_request_bytes,
    check_round,
    check_where_text,
)
from pet.queries import Contingency, Count, KaplanMeier, LogisticRegression, Mean
from pet.queries.regression import LogisticState
from pet.schema import Boolean, Continuous, Schema, TimeToEvent
from pet.workloads import Workload
from services.convert import backend_options, query_of
from services.pb import common_pb2 as pb
from services.status import MAX_MESSAGE, code_of, message_of

FLAGS = Schema(tuple(Boolean(f"b{i}") for i in range(70)))
"""Seventy yes/no columns: a table of k of them has 2^k cells."""


def flags(k: int) -> tuple[str, ...]:
    return tuple(f"b{i}" for i in range(k))


@pytest.mark.parametrize(("field", "value"), [
    ("cells", 0), ("columns", -1), ("filter_depth", 101), ("rounds", True),
    ("request_bytes", 2**31), ("filter_chars", 4096.0),
])
def test_limits_out_of_range_name_the_field_and_range(field: str, value: object) -> None:
    with pytest.raises(ArgumentError, match=rf"limits\.{field} must be a whole number in \[1, "):
        RequestLimits(**{field: value})


def test_a_configuration_section_sets_limits_and_refuses_unknown_keys() -> None:
    assert RequestLimits.from_mapping({"cells": 1000, "rounds": 7}) == RequestLimits(
        cells=1000, rounds=7)
    assert RequestLimits.from_mapping(None) == DEFAULT_LIMITS
    with pytest.raises(ArgumentError, match=r"unknown limits \['max_cells'\]"):
        RequestLimits.from_mapping({"max_cells": 10})
    with pytest.raises(ArgumentError, match="mapping"):
        RequestLimits.from_mapping([("cells", 10)])  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [25, 40, 64])
def test_a_huge_contingency_table_is_refused_from_its_block_sizes(k: int) -> None:
    # 2^40 float64 cells would be 8 TiB: refused without a MemoryError, so nothing was
    # allocated; 2^64 overflows int64 products, so the count must be exact
    with pytest.raises(LimitError) as refused:
        check_query(Contingency(flags(k)), FLAGS)
    error = refused.value
    # the table and n (the flags are never missing: no missing counts)
    assert (error.limit, error.allowed, error.asked) == ("cells", 2**20, 2**k + 1)
    assert str(2**k + 1) in str(error) and "cells=1048576" in str(error)
    assert code_of(error) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_fine_survival_grid_is_refused_before_the_grid_is_made() -> None:
    schema = Schema((TimeToEvent("time", event="dead", upper=1000.0), Boolean("dead")))
    with pytest.raises(LimitError) as refused:
        check_query(KaplanMeier("time", "dead", grid=10**12), schema)
    assert (refused.value.limit, refused.value.asked) == ("cells", 2 * 10**12 + 1)


def test_queries_within_the_limits_pass_and_still_get_their_schema_errors() -> None:
    check_query(Contingency(flags(19)), FLAGS)
    check_query(Contingency(flags(20)), FLAGS, RequestLimits(cells=2**20 + 1))  # and n
    with pytest.raises(QueryError, match="unknown column 'nope'"):
        check_query(Count(where="nope > 1"), FLAGS)


def test_too_many_columns_are_refused_before_the_schema_is_consulted() -> None:
    with pytest.raises(LimitError) as refused:
        check_query(Contingency(flags(65)), FLAGS)
    assert (refused.value.limit, refused.value.allowed, refused.value.asked) == (
        "columns", 64, 65)


def test_too_many_rounds_are_refused(lung3: Workload) -> None:
    query = LogisticRegression("dead", ("age",), max_iter=500)
    with pytest.raises(LimitError, match="rounds=100") as refused:
        check_query(query, lung3.schema)
    assert refused.value.asked == 500
    check_query(query, lung3.schema, RequestLimits(rounds=500))


def test_request_bytes_over_the_limit_are_refused() -> None:
    check_request_bytes(4 * 2**20)
    with pytest.raises(LimitError, match="request_bytes=4194304") as refused:
        check_request_bytes(4 * 2**20 + 1)
    assert code_of(refused.value) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_long_and_deep_filters_are_malformed_input() -> None:
    deep = "not " * 5000 + "age > 0"
    with pytest.raises(FilterLimitError, match="filter_chars=4096") as long:
        check_where_text(deep)
    with pytest.raises(FilterLimitError, match="filter_depth=32") as nested:
        check_where_text(deep, RequestLimits(filter_chars=100_000))
    assert nested.value.asked == 5000
    for error in (long.value, nested.value):
        assert isinstance(error, QueryError)
        assert code_of(error) == grpc.StatusCode.INVALID_ARGUMENT


def test_a_logistic_round_state_from_a_peer_is_checked(lung3: Workload) -> None:
    query = LogisticRegression("dead", ("age", "sex"))
    schema = lung3.schema
    check_round(query, schema, LogisticState(3, (0.1, -0.2, 0.3)))
    check_round(query, schema, LogisticState(3, (2**64, 0, 0)))  # a whole number, finite
    for state in (None, "beta", LogisticState(0, (0.0, 0.0)), LogisticState(-1, (0.0,) * 3),
                  LogisticState(0, (float("nan"), 0.0, 0.0)), LogisticState(25, (0.0,) * 3),
                  LogisticState(0, (10**400, 0, 0))):
        with pytest.raises(QueryError, match="LogisticRegression"):
            check_round(query, schema, state)


def test_a_single_round_query_takes_no_state(lung3: Workload) -> None:
    with pytest.raises(QueryError, match="takes one round and no state"):
        check_round(Mean("age"), lung3.schema, LogisticState(0, ()))


def test_status_messages_are_clipped() -> None:
    message = message_of(QueryError("x" * 5_000_000))
    assert len(message) <= 400
    assert message.startswith("x" * MAX_MESSAGE) and "5000000 characters" in message
    assert message_of(QueryError("short")) == "short"


def test_a_description_elides_long_arguments() -> None:
    query = Contingency(("age",), bins={"age": tuple(range(100_000))})
    assert len(query.describe()) < 100


@pytest.mark.parametrize(("backend", "words"), [
    (pb.Backend(name="plaintext", max_rows_per_site=-1), r"max_rows_per_site must lie in \[1, "),
    (pb.Backend(name="plaintext", max_rows_per_site=5), "'plaintext' takes no option "
                                                        "max_rows_per_site; it takes none"),
    (pb.Backend(name="mpc", max_sites=10**6), r"max_sites must lie in \[1, 10000\]"),
    (pb.Backend(name="mpc", max_rows_per_site=10**15), "max_rows_per_site must lie in"),
    (pb.Backend(name="he+dp", max_sites=3), "he\\+dp needs the analyst's public context"),
])
def test_bad_backend_options_are_query_errors(backend: pb.Backend, words: str) -> None:
    with pytest.raises(QueryError, match=words) as refused:
        backend_options(backend)
    assert code_of(refused.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_options_are_read_off_the_backend_s_signature() -> None:
    assert backend_options(pb.Backend(name="mpc+dp", epsilon=0.5, max_sites=5)) == {
        "epsilon": 0.5, "max_sites": 5}  # passed on to its inner MPC backend
    with pytest.raises(QueryError, match="'plaintext' takes no option max_sites"):
        backend_options(pb.Backend(name="plaintext", max_sites=5))


def test_an_absurd_epsilon_is_refused_naming_the_largest() -> None:
    options = backend_options(pb.Backend(name="dp", epsilon=1e308))
    with pytest.raises(ArgumentError, match=r"epsilon must be a number in \[0.001, 10000\]") as bad:
        get_backend("dp", **options)
    assert code_of(bad.value) == grpc.StatusCode.INVALID_ARGUMENT
    get_backend("dp", epsilon=1e4)


def test_a_query_message_reads_its_filter_within_the_servers_limits() -> None:
    message = pb.Query(kind="Count", where="age > 1 or " * 500_000 + "age > 2")
    with pytest.raises(FilterLimitError) as refused:
        query_of(message)
    assert len(str(refused.value)) < 200
    wide = RequestLimits(filter_chars=8000)
    message = pb.Query(kind="Count", where="age > 1 or " * 500 + "age > 2")
    assert query_of(message, wide).where.columns == ("age",)
    with pytest.raises(FilterLimitError):
        query_of(message)


def test_the_filter_s_columns_count_towards_the_columns_limit() -> None:
    schema = Schema((Continuous("x", 0.0, 1.0), Continuous("y", 0.0, 1.0)))
    check_query(Mean("x", where="x > 0.5"), schema, RequestLimits(columns=1))
    with pytest.raises(LimitError, match="columns=1") as refused:
        check_query(Mean("x", where="y > 0.5"), schema, RequestLimits(columns=1))
    assert refused.value.asked == 2
