"""The analyst's client: the in-process `Study` API, over the coordinator service.

`Client(address, token=..., ca=...).study("he")` behaves like `Study(sites, backend="he")`:
`run(query)` returns the same `Result`. HE keys are made and kept here; only the public
context leaves, and the coordinator sends each round's combined ciphertext back here to
be revealed. With pet's own library and the services package, this is the one module of
`pet` that speaks gRPC (through `services`).
"""

from __future__ import annotations

import dataclasses
import json
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from pet import codec
from pet.backends import Backend, get_backend
from pet.errors import PetError
from pet.queries.base import Query
from pet.queries.marginals import Marginals
from pet.result import Result
from pet.schema import Schema
from services import convert
from services.pb import (
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
    synthesis_pb2,
    synthesis_pb2_grpc,
)
from services.security import analyst_channel

if TYPE_CHECKING:
    import pandas as pd


class RemoteError(PetError):
    """A call the coordinator (or a site through it) refused, with its gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


class Client:
    """A connection to a coordinator, authenticated by the analyst's bearer token over
    TLS (the CA's certificate, PEM, verifies the coordinator)."""

    def __init__(self, address: str, *, token: str, ca: str | Path | bytes,
                 timeout_s: float = 600.0) -> None:
        ca_bytes = ca if isinstance(ca, bytes) else Path(ca).read_bytes()
        self.channel = analyst_channel(address, ca_bytes, token)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)
        self.synthesis = synthesis_pb2_grpc.SynthesisStub(self.channel)
        self.timeout_s = timeout_s
        self._federation: coordinator_pb2.Federation | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self.channel.close()

    @property
    def sites(self) -> list[str]:
        """The federation's sites."""
        return list(self._describe().sites)

    @property
    def schema(self) -> Schema:
        """The sites' common public schema."""
        return convert.schema_of(self._describe().schema_json)

    @property
    def backends(self) -> list[str]:
        """The backends every site takes part in."""
        return list(self._describe().backends)

    def study(self, backend: str = "plaintext", **options: Any) -> RemoteStudy:
        """A study under `backend` (options as in-process, e.g. epsilon for DP)."""
        return RemoteStudy(self, backend, **options)

    def synthesize(self, method: str = "aim", *, epsilon: float, delta: float = 1e-6,
                   bins: int = 0, backend: str = "mpc+dp",
                   progress: Callable[[Any], None] | None = None) -> RemoteFit:
        """Fit a DP synthesizer across every site, charging (ε, δ) once to each site's
        ledger: under mpc+dp (no site reveals its marginals) or he+dp (each release's
        sum is encrypted under a key made here for this fit, and revealed here).
        `progress` sees each privacy step (its ρ, and the ρ spent so far) as the fit
        spends it."""
        keys = get_backend(backend, epsilon=epsilon, delta=delta) \
            if backend == "he+dp" else None
        public = getattr(getattr(keys, "backend", None), "public_context", b"")
        outgoing: queue.Queue = queue.Queue()
        outgoing.put(synthesis_pb2.FitRequest(start=synthesis_pb2.FitStart(
            method=method, epsilon=epsilon, delta=delta, bins=bins, backend=backend,
            public_context=public)))
        revealing = _Revealing(self.schema, keys)
        call = self.synthesis.Fit(_drain(outgoing), timeout=self.timeout_s)
        try:
            for message in call:
                kind = message.WhichOneof("kind")
                if kind == "fitted":
                    return RemoteFit(self, message.fitted)
                if kind == "measurement":
                    answer = revealing.piece(message.measurement)
                    if answer is not None:
                        outgoing.put(synthesis_pb2.FitRequest(conclusion=answer))
                elif progress is not None:
                    progress(message.step)
        except grpc.RpcError as error:
            raise RemoteError(error.code(), error.details()) from None
        except PetError:
            call.cancel()  # refused here: the coordinator learns at once
            raise
        finally:
            outgoing.put(None)
        raise RemoteError(grpc.StatusCode.UNAVAILABLE, "the fit ended without a model")

    def budgets(self, dataset: str = "") -> list[common_pb2.Budget]:
        """Every site's privacy budgets (one dataset's, or all)."""
        reply = _call(self.stub.Budget, common_pb2.BudgetRequest(dataset=dataset),
                      timeout=self.timeout_s)
        return list(reply.budgets)

    def _describe(self) -> coordinator_pb2.Federation:
        if self._federation is None:
            self._federation = _call(self.stub.Describe, coordinator_pb2.DescribeRequest(),
                                     timeout=self.timeout_s)
        return self._federation


class RemoteFit:
    """A synthesizer fitted by the coordinator's synthesis service."""

    def __init__(self, client: Client, fitted: synthesis_pb2.Fitted) -> None:
        self.client, self.id = client, fitted.fit
        self.method, self.rho, self.measurements = fitted.method, fitted.rho, fitted.measurements
        self.card: dict[str, Any] | None = None
        """The data card of the last sample drawn."""

    def sample(self, rows: int, *, seed: int = 0, chunk_rows: int = 0) -> pd.DataFrame:
        """`rows` synthetic records, streamed from the coordinator in chunks; a whole-number
        column with a missing value stays whole (pandas' nullable types, where numpy's
        int64 would turn it into floats)."""
        import pandas as pd  # here: a query's answer needs neither pandas nor Arrow
        import pyarrow as pa

        nullable = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
        request = synthesis_pb2.SampleRequest(fit=self.id, rows=rows, seed=seed,
                                              chunk_rows=chunk_rows)
        batches = []
        try:
            for chunk in self.client.synthesis.Sample(request, timeout=self.client.timeout_s):
                batches.extend(pa.ipc.open_stream(chunk.arrow).read_all().to_batches())
                if chunk.last:
                    self.card = json.loads(chunk.card_json)
        except grpc.RpcError as error:
            raise RemoteError(error.code(), error.details()) from None
        return pa.Table.from_batches(batches).to_pandas(types_mapper=nullable.get)


class RemoteStudy:
    """A study run through the coordinator, with the in-process `Study`'s `run`."""

    def __init__(self, client: Client, backend: str, **options: Any) -> None:
        self.client = client
        self.backend: Backend = get_backend(backend, **options)
        public = getattr(getattr(self.backend, "backend", self.backend), "public_context", None)
        self.spec = convert.backend_message(backend, {**options, "public_context": public})

    def __enter__(self) -> RemoteStudy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: the coordinator keeps no per-study state."""

    def run(self, query: Query) -> Result:
        """Answer `query` across every site; a refusal raises RemoteError with its code.
        `latency_s` is what the analyst waited, end to end. A backend that needs none of
        the analyst's keys asks in one call (`Ask`; a coordinator without it, by `Run`)."""
        schema = self.client.schema
        query.validate(schema)
        start = time.perf_counter()
        if self.spec.name not in convert.ANALYST_KEYS:
            try:
                reply = self.client.stub.Ask(coordinator_pb2.Start(
                    query=convert.query_message(query), backend=self.spec),
                    timeout=self.client.timeout_s)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise RemoteError(error.code(), error.details()) from None
            else:
                return dataclasses.replace(convert.result_of(reply),
                                           latency_s=time.perf_counter() - start)
        outgoing: queue.Queue = queue.Queue()
        outgoing.put(coordinator_pb2.RunRequest(start=coordinator_pb2.Start(
            query=convert.query_message(query), backend=self.spec)))
        replies = self.client.stub.Run(_drain(outgoing), timeout=self.client.timeout_s)
        pieces: list[bytes] = []
        state: Any = None
        try:
            for reply in replies:
                if reply.WhichOneof("kind") == "result":
                    latency_s = time.perf_counter() - start
                    outgoing.put(None)  # nothing more to say: read the call to its status
                    for _ in replies:
                        pass
                    return dataclasses.replace(convert.result_of(reply.result),
                                               latency_s=latency_s)
                if reply.reveal.state_json:
                    state = codec.loads(reply.reveal.state_json)
                pieces.append(reply.reveal.data)
                if reply.reveal.last:
                    outgoing.put(self._conclude(query, schema, state, b"".join(pieces)))
                    pieces = []
        except grpc.RpcError as error:
            raise RemoteError(error.code(), error.details()) from None
        finally:
            outgoing.put(None)
        raise RemoteError(grpc.StatusCode.UNAVAILABLE, "the run ended without a result")

    def _conclude(self, query: Query, schema: Schema, state: Any,
                  combined: bytes) -> coordinator_pb2.RunRequest:
        """Reveal a round's combined message with the analyst's keys, and conclude it."""
        return coordinator_pb2.RunRequest(
            conclusion=_concluded(self.backend, query, schema, state, combined))


class _Revealing:
    """The analyst's side of a fit under he+dp: each release's ciphertext, gathered piece
    by piece, revealed with this fit's keys at the ρ it spends. Only what comes labelled
    as a fit's marginals is revealed; the label is the coordinator's, so this narrows
    what a lying coordinator can have decrypted, and the key made for this fit alone
    keeps it from anything else the analyst asks."""

    def __init__(self, schema: Schema, keys: Backend | None) -> None:
        self.schema, self.keys = schema, keys
        self.pieces: list[bytes] = []
        self.asked: tuple[Query, Any, float] | None = None

    def piece(self, measurement: Any) -> coordinator_pb2.Conclusion | None:
        """Take one piece; the conclusion once the release's last piece is in."""
        if self.keys is None:
            raise PetError("the coordinator asked to reveal a release of a fit that holds "
                           "no key of this analyst (not he+dp)")
        if measurement.HasField("query"):
            query = convert.query_of(measurement.query)
            if not isinstance(query, Marginals):
                raise PetError(f"the coordinator asked to reveal {query.describe()}, not a "
                               "fit's marginals")
            state = codec.loads(measurement.reveal.state_json)
            self.asked, self.pieces = (query, state, measurement.rho), []
        if self.asked is None:
            raise PetError("the coordinator sent a release without its query")
        self.pieces.append(measurement.reveal.data)
        if not measurement.reveal.last:
            return None
        query, state, rho = self.asked
        self.asked = None
        keys = self.keys.at_rho(rho)  # type: ignore[attr-defined]
        return _concluded(keys, query, self.schema, state, b"".join(self.pieces))


def _concluded(backend: Backend, query: Query, schema: Schema, state: Any,
               combined: bytes) -> coordinator_pb2.Conclusion:
    """A round's combined message revealed with the analyst's keys, as a Conclusion."""
    layout = query.layout(schema, state)
    conclusion = backend.conclude(query, schema, state, combined, layout)
    return coordinator_pb2.Conclusion(
        outcome_json=codec.dumps(conclusion.outcome),
        head=[float(h) for h in conclusion.head], error_bounds=conclusion.error_bounds,
        guarantee=convert.guarantee_message(conclusion.privacy),
        interval=convert.interval_message(conclusion.interval))


def _drain(outgoing: queue.Queue) -> Iterator[Any]:
    """The requests put on the queue, until None."""
    while (item := outgoing.get()) is not None:
        yield item


def _call(method: Any, request: Any, *, timeout: float) -> Any:
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as error:
        raise RemoteError(error.code(), error.details()) from None
