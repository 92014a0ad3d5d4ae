from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Value(_message.Message):
    __slots__ = ("text", "number", "integer", "flag", "texts", "numbers", "table", "groups")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    text: str
    number: float
    integer: int
    flag: bool
    texts: Texts
    numbers: Numbers
    table: Table
    groups: Groups
    def __init__(self, text: _Optional[str] = ..., number: _Optional[float] = ..., integer: _Optional[int] = ..., flag: _Optional[bool] = ..., texts: _Optional[_Union[Texts, _Mapping]] = ..., numbers: _Optional[_Union[Numbers, _Mapping]] = ..., table: _Optional[_Union[Table, _Mapping]] = ..., groups: _Optional[_Union[Groups, _Mapping]] = ...) -> None: ...

class Groups(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Texts]
    def __init__(self, items: _Optional[_Iterable[_Union[Texts, _Mapping]]] = ...) -> None: ...

class Table(_message.Message):
    __slots__ = ("entries",)
    class EntriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Numbers
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Numbers, _Mapping]] = ...) -> None: ...
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.MessageMap[str, Numbers]
    def __init__(self, entries: _Optional[_Mapping[str, Numbers]] = ...) -> None: ...

class Texts(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[str]] = ...) -> None: ...

class Numbers(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, items: _Optional[_Iterable[float]] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("kind", "arguments", "where")
    class ArgumentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    arguments: _containers.MessageMap[str, Value]
    where: str
    def __init__(self, kind: _Optional[str] = ..., arguments: _Optional[_Mapping[str, Value]] = ..., where: _Optional[str] = ...) -> None: ...

class Backend(_message.Message):
    __slots__ = ("name", "epsilon", "delta", "max_rows_per_site", "max_sites", "public_context", "rho")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_PER_SITE_FIELD_NUMBER: _ClassVar[int]
    MAX_SITES_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    name: str
    epsilon: float
    delta: float
    max_rows_per_site: int
    max_sites: int
    public_context: bytes
    rho: float
    def __init__(self, name: _Optional[str] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., max_rows_per_site: _Optional[int] = ..., max_sites: _Optional[int] = ..., public_context: _Optional[bytes] = ..., rho: _Optional[float] = ...) -> None: ...

class Guarantee(_message.Message):
    __slots__ = ("confidentiality", "rho", "epsilon", "delta")
    CONFIDENTIALITY_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    confidentiality: str
    rho: float
    epsilon: float
    delta: float
    def __init__(self, confidentiality: _Optional[str] = ..., rho: _Optional[float] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...

class SiteCost(_message.Message):
    __slots__ = ("site", "local_s", "protect_s", "bytes_sent")
    SITE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_S_FIELD_NUMBER: _ClassVar[int]
    PROTECT_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    site: str
    local_s: float
    protect_s: float
    bytes_sent: int
    def __init__(self, site: _Optional[str] = ..., local_s: _Optional[float] = ..., protect_s: _Optional[float] = ..., bytes_sent: _Optional[int] = ...) -> None: ...

class Cost(_message.Message):
    __slots__ = ("latency_s", "rounds", "comm_rounds", "combine_s", "reveal_s", "sites")
    LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    COMM_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    COMBINE_S_FIELD_NUMBER: _ClassVar[int]
    REVEAL_S_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    latency_s: float
    rounds: int
    comm_rounds: int
    combine_s: float
    reveal_s: float
    sites: _containers.RepeatedCompositeFieldContainer[SiteCost]
    def __init__(self, latency_s: _Optional[float] = ..., rounds: _Optional[int] = ..., comm_rounds: _Optional[int] = ..., combine_s: _Optional[float] = ..., reveal_s: _Optional[float] = ..., sites: _Optional[_Iterable[_Union[SiteCost, _Mapping]]] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("query", "backend", "value_json", "n", "missing", "error_bound", "guarantee", "cost", "interval", "clipped", "error_bounds")
    class MissingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ClippedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    QUERY_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    ERROR_BOUND_FIELD_NUMBER: _ClassVar[int]
    GUARANTEE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_FIELD_NUMBER: _ClassVar[int]
    ERROR_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    query: str
    backend: str
    value_json: str
    n: int
    missing: _containers.ScalarMap[str, int]
    error_bound: float
    guarantee: Guarantee
    cost: Cost
    interval: Interval
    clipped: _containers.ScalarMap[str, int]
    error_bounds: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, query: _Optional[str] = ..., backend: _Optional[str] = ..., value_json: _Optional[str] = ..., n: _Optional[int] = ..., missing: _Optional[_Mapping[str, int]] = ..., error_bound: _Optional[float] = ..., guarantee: _Optional[_Union[Guarantee, _Mapping]] = ..., cost: _Optional[_Union[Cost, _Mapping]] = ..., interval: _Optional[_Union[Interval, _Mapping]] = ..., clipped: _Optional[_Mapping[str, int]] = ..., error_bounds: _Optional[_Iterable[float]] = ...) -> None: ...

class Interval(_message.Message):
    __slots__ = ("low", "high")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    low: _containers.RepeatedScalarFieldContainer[float]
    high: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, low: _Optional[_Iterable[float]] = ..., high: _Optional[_Iterable[float]] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("site", "dataset", "epsilon", "delta", "spent_epsilon", "spent_delta", "releases", "rho", "spent_rho")
    SITE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    SPENT_EPSILON_FIELD_NUMBER: _ClassVar[int]
    SPENT_DELTA_FIELD_NUMBER: _ClassVar[int]
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    SPENT_RHO_FIELD_NUMBER: _ClassVar[int]
    site: str
    dataset: str
    epsilon: float
    delta: float
    spent_epsilon: float
    spent_delta: float
    releases: int
    rho: float
    spent_rho: float
    def __init__(self, site: _Optional[str] = ..., dataset: _Optional[str] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., spent_epsilon: _Optional[float] = ..., spent_delta: _Optional[float] = ..., releases: _Optional[int] = ..., rho: _Optional[float] = ..., spent_rho: _Optional[float] = ...) -> None: ...

class BudgetRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    def __init__(self, dataset: _Optional[str] = ...) -> None: ...

class BudgetReply(_message.Message):
    __slots__ = ("budgets",)
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    budgets: _containers.RepeatedCompositeFieldContainer[Budget]
    def __init__(self, budgets: _Optional[_Iterable[_Union[Budget, _Mapping]]] = ...) -> None: ...
