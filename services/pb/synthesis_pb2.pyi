from . import common_pb2 as _common_pb2
from . import coordinator_pb2 as _coordinator_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FitRequest(_message.Message):
    __slots__ = ("start", "conclusion")
    START_FIELD_NUMBER: _ClassVar[int]
    CONCLUSION_FIELD_NUMBER: _ClassVar[int]
    start: FitStart
    conclusion: _coordinator_pb2.Conclusion
    def __init__(self, start: _Optional[_Union[FitStart, _Mapping]] = ..., conclusion: _Optional[_Union[_coordinator_pb2.Conclusion, _Mapping]] = ...) -> None: ...

class FitStart(_message.Message):
    __slots__ = ("method", "epsilon", "delta", "backend", "bins", "public_context")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    method: str
    epsilon: float
    delta: float
    backend: str
    bins: int
    public_context: bytes
    def __init__(self, method: _Optional[str] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., backend: _Optional[str] = ..., bins: _Optional[int] = ..., public_context: _Optional[bytes] = ...) -> None: ...

class FitProgress(_message.Message):
    __slots__ = ("step", "fitted", "measurement")
    STEP_FIELD_NUMBER: _ClassVar[int]
    FITTED_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENT_FIELD_NUMBER: _ClassVar[int]
    step: Step
    fitted: Fitted
    measurement: Measurement
    def __init__(self, step: _Optional[_Union[Step, _Mapping]] = ..., fitted: _Optional[_Union[Fitted, _Mapping]] = ..., measurement: _Optional[_Union[Measurement, _Mapping]] = ...) -> None: ...

class Measurement(_message.Message):
    __slots__ = ("query", "rho", "reveal")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    REVEAL_FIELD_NUMBER: _ClassVar[int]
    query: _common_pb2.Query
    rho: float
    reveal: _coordinator_pb2.Reveal
    def __init__(self, query: _Optional[_Union[_common_pb2.Query, _Mapping]] = ..., rho: _Optional[float] = ..., reveal: _Optional[_Union[_coordinator_pb2.Reveal, _Mapping]] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("index", "step", "cliques", "rho", "rho_spent", "rho_total")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CLIQUES_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    RHO_SPENT_FIELD_NUMBER: _ClassVar[int]
    RHO_TOTAL_FIELD_NUMBER: _ClassVar[int]
    index: int
    step: str
    cliques: _common_pb2.Groups
    rho: float
    rho_spent: float
    rho_total: float
    def __init__(self, index: _Optional[int] = ..., step: _Optional[str] = ..., cliques: _Optional[_Union[_common_pb2.Groups, _Mapping]] = ..., rho: _Optional[float] = ..., rho_spent: _Optional[float] = ..., rho_total: _Optional[float] = ...) -> None: ...

class Fitted(_message.Message):
    __slots__ = ("fit", "method", "rho", "measurements")
    FIT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENTS_FIELD_NUMBER: _ClassVar[int]
    fit: str
    method: str
    rho: float
    measurements: int
    def __init__(self, fit: _Optional[str] = ..., method: _Optional[str] = ..., rho: _Optional[float] = ..., measurements: _Optional[int] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("fit", "rows", "seed", "chunk_rows")
    FIT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ROWS_FIELD_NUMBER: _ClassVar[int]
    fit: str
    rows: int
    seed: int
    chunk_rows: int
    def __init__(self, fit: _Optional[str] = ..., rows: _Optional[int] = ..., seed: _Optional[int] = ..., chunk_rows: _Optional[int] = ...) -> None: ...

class SampleChunk(_message.Message):
    __slots__ = ("arrow", "rows", "last", "card_json")
    ARROW_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    CARD_JSON_FIELD_NUMBER: _ClassVar[int]
    arrow: bytes
    rows: int
    last: bool
    card_json: str
    def __init__(self, arrow: _Optional[bytes] = ..., rows: _Optional[int] = ..., last: _Optional[bool] = ..., card_json: _Optional[str] = ...) -> None: ...
