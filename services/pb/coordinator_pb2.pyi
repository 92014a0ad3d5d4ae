from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Federation(_message.Message):
    __slots__ = ("sites", "schema_json", "backends")
    SITES_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedScalarFieldContainer[str]
    schema_json: str
    backends: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sites: _Optional[_Iterable[str]] = ..., schema_json: _Optional[str] = ..., backends: _Optional[_Iterable[str]] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("start", "conclusion")
    START_FIELD_NUMBER: _ClassVar[int]
    CONCLUSION_FIELD_NUMBER: _ClassVar[int]
    start: Start
    conclusion: Conclusion
    def __init__(self, start: _Optional[_Union[Start, _Mapping]] = ..., conclusion: _Optional[_Union[Conclusion, _Mapping]] = ...) -> None: ...

class Start(_message.Message):
    __slots__ = ("query", "backend")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    query: _common_pb2.Query
    backend: _common_pb2.Backend
    def __init__(self, query: _Optional[_Union[_common_pb2.Query, _Mapping]] = ..., backend: _Optional[_Union[_common_pb2.Backend, _Mapping]] = ...) -> None: ...

class RunReply(_message.Message):
    __slots__ = ("reveal", "result")
    REVEAL_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    reveal: Reveal
    result: _common_pb2.Result
    def __init__(self, reveal: _Optional[_Union[Reveal, _Mapping]] = ..., result: _Optional[_Union[_common_pb2.Result, _Mapping]] = ...) -> None: ...

class Reveal(_message.Message):
    __slots__ = ("data", "last", "state_json", "round")
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    last: bool
    state_json: str
    round: int
    def __init__(self, data: _Optional[bytes] = ..., last: _Optional[bool] = ..., state_json: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class Conclusion(_message.Message):
    __slots__ = ("outcome_json", "head", "guarantee", "interval", "error_bounds")
    OUTCOME_JSON_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    GUARANTEE_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    outcome_json: str
    head: _containers.RepeatedScalarFieldContainer[float]
    guarantee: _common_pb2.Guarantee
    interval: _common_pb2.Interval
    error_bounds: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, outcome_json: _Optional[str] = ..., head: _Optional[_Iterable[float]] = ..., guarantee: _Optional[_Union[_common_pb2.Guarantee, _Mapping]] = ..., interval: _Optional[_Union[_common_pb2.Interval, _Mapping]] = ..., error_bounds: _Optional[_Iterable[float]] = ...) -> None: ...
