from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DescribeSiteRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SiteInfo(_message.Message):
    __slots__ = ("name", "schema_json", "backends")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    schema_json: str
    backends: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., schema_json: _Optional[str] = ..., backends: _Optional[_Iterable[str]] = ...) -> None: ...

class ContributeRequest(_message.Message):
    __slots__ = ("request", "analyst", "query", "state_json", "backend", "n_sites", "mpc_session", "round")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    ANALYST_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    N_SITES_FIELD_NUMBER: _ClassVar[int]
    MPC_SESSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    request: str
    analyst: str
    query: _common_pb2.Query
    state_json: str
    backend: _common_pb2.Backend
    n_sites: int
    mpc_session: str
    round: int
    def __init__(self, request: _Optional[str] = ..., analyst: _Optional[str] = ..., query: _Optional[_Union[_common_pb2.Query, _Mapping]] = ..., state_json: _Optional[str] = ..., backend: _Optional[_Union[_common_pb2.Backend, _Mapping]] = ..., n_sites: _Optional[int] = ..., mpc_session: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class ContributePiece(_message.Message):
    __slots__ = ("data", "done")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    done: ContributeDone
    def __init__(self, data: _Optional[bytes] = ..., done: _Optional[_Union[ContributeDone, _Mapping]] = ...) -> None: ...

class ContributeDone(_message.Message):
    __slots__ = ("local_s", "protect_s", "size")
    LOCAL_S_FIELD_NUMBER: _ClassVar[int]
    PROTECT_S_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    local_s: float
    protect_s: float
    size: int
    def __init__(self, local_s: _Optional[float] = ..., protect_s: _Optional[float] = ..., size: _Optional[int] = ...) -> None: ...

class JoinMpcRequest(_message.Message):
    __slots__ = ("session", "rank", "world", "address", "port", "parties")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    session: str
    rank: int
    world: int
    address: str
    port: int
    parties: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session: _Optional[str] = ..., rank: _Optional[int] = ..., world: _Optional[int] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., parties: _Optional[_Iterable[str]] = ...) -> None: ...

class JoinMpcReply(_message.Message):
    __slots__ = ("address", "port")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class ProgramRequest(_message.Message):
    __slots__ = ("session", "program", "input", "public_json")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_JSON_FIELD_NUMBER: _ClassVar[int]
    session: str
    program: str
    input: bytes
    public_json: str
    def __init__(self, session: _Optional[str] = ..., program: _Optional[str] = ..., input: _Optional[bytes] = ..., public_json: _Optional[str] = ...) -> None: ...

class ProgramReply(_message.Message):
    __slots__ = ("output_json",)
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    output_json: str
    def __init__(self, output_json: _Optional[str] = ...) -> None: ...

class LeaveMpcRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: str
    def __init__(self, session: _Optional[str] = ...) -> None: ...

class LeaveMpcReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
