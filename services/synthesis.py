"""The synthesis service, hosted by the coordinator: a DP synthesizer fitted across the site
servers under `mpc+dp` or `he+dp`, and its synthetic rows streamed back in chunks.

Each measurement and selection is a `Marginals` release through the sites, who charge the
fit's (ε, δ) to their own ledgers once and refuse any release past the ρ it affords. Under
`mpc+dp` the MPC parties reveal only noisy counts. Under `he+dp` the coordinator holds no
secret key: it sends each release's combined ciphertext to the analyst on the fit's own
stream and takes back the noisy counts (a DP release, which the fit is made of); the
analyst's client makes a fresh key for each fit and reveals only what comes labelled as
the fit's Marginals (the label is the coordinator's: see the README's threat model). The
coordinator keeps the fitted model (it holds no rows and no exact counts) for the analyst
to sample from, on disk too when its configuration names a folder for fits, so a restart
loses none.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pyarrow as pa

from pet.backends import Backend
from pet.backends.base import Limits
from pet.backends.he import PublicHE
from pet.errors import ArgumentError, PetError
from pet.mechanisms import check_privacy, rho_of
from pet.synth import SYNTHESIZERS, Federation, Fit, Release, card, load, save
from pet.synth.discretize import DEFAULT_BINS, Discretization
from pet.synth.measure import Spend, composed
from services import convert
from services.config import CoordinatorConfig
from services.jobs import Post, Runs, deadline_of, streamed
from services.pb import common_pb2, coordinator_pb2, synthesis_pb2, synthesis_pb2_grpc
from services.remote import Sites
from services.reveal import AnalystReveal, Wrap
from services.security import bearer_token
from services.status import CallError, handled_stream

BACKENDS = ("mpc+dp", "he+dp")
"""What a fit measures under; the first is the default."""
CHUNK_ROWS = 10_000
"""Rows per streamed chunk unless the analyst asks for another number."""
MAX_ROWS = 10**8
FIT_ID = re.compile(r"[0-9a-f]{32}")
"""A fit's id: 32 hex digits (never a path)."""
RELEASE = "release.json"
"""Beside a kept fit: the sites and backend that measured it."""


class SynthesisService(synthesis_pb2_grpc.SynthesisServicer):
    """Fit jobs over the coordinator's sites, and the fits they made, by id."""

    def __init__(self, config: CoordinatorConfig, sites: Sites, runs: Runs) -> None:
        self.config, self.sites, self.runs = config, sites, runs
        self.fits: dict[str, tuple[Fit, Release]] = {}
        self._lock = threading.Lock()

    @handled_stream
    def Fit(self, requests: Iterator[synthesis_pb2.FitRequest],
            context: grpc.ServicerContext) -> Iterator[synthesis_pb2.FitProgress]:
        first = next(requests, None)
        if first is None or first.WhichOneof("kind") != "start":
            raise ArgumentError("a fit starts with a FitStart message")
        start = first.start
        _check_fit(start)
        analyst = self.config.analyst(bearer_token(context.invocation_metadata()) or "") or ""
        deadline = deadline_of(context, self.config.run_deadline_s)

        def work(post: Post) -> synthesis_pb2.FitProgress:
            with self.runs.admitted(analyst):  # held until the work ends, not the call
                fit = self._fit(start, requests, analyst, deadline, post)
            name = uuid.uuid4().hex
            self._keep(name, fit, Release(self.sites.names, start.backend or BACKENDS[0], 0, 0))
            return synthesis_pb2.FitProgress(fitted=synthesis_pb2.Fitted(
                fit=name, method=fit.method, rho=fit.rho, measurements=len(fit.measurements)))

        yield from streamed(work, context, name="pet-fit", deadline=deadline,
                            limit="run_deadline_s")

    @handled_stream
    def Sample(self, request: synthesis_pb2.SampleRequest,
               context: grpc.ServicerContext) -> Iterator[synthesis_pb2.SampleChunk]:
        found = self._found(request.fit)
        if found is None:
            raise CallError(grpc.StatusCode.NOT_FOUND, f"no fit {request.fit!r} here; fit one "
                                                       "first (Synthesis.Fit)")
        if not 1 <= request.rows <= MAX_ROWS:
            raise ArgumentError(f"rows must lie in [1, {MAX_ROWS}], got {request.rows}")
        if request.chunk_rows < 0:
            raise ArgumentError(f"chunk_rows must be >= 0, got {request.chunk_rows}")
        fit, made = found
        table = fit.sample(int(request.rows), seed=int(request.seed))
        step = request.chunk_rows or CHUNK_ROWS
        release = Release(made.sites, made.backend, int(request.seed), int(request.rows))
        for start in range(0, len(table), step):
            part = table.iloc[start:start + step]
            last = start + step >= len(table)
            yield synthesis_pb2.SampleChunk(
                arrow=_arrow(part), rows=len(part), last=last,
                card_json=json.dumps(card(fit, release)) if last else "")

    def _keep(self, name: str, fit: Fit, release: Release) -> None:
        """Keep a fit by its id: in memory, and in the fits folder if there is one (written
        beside it, then moved into place, so a crash leaves no half-written fit)."""
        folder = self.config.fits
        if folder is not None:
            partial = save(fit, folder / f".{name}.partial")
            (partial / RELEASE).write_text(json.dumps({"sites": list(release.sites),
                                                       "backend": release.backend}) + "\n")
            os.replace(partial, folder / name)
        with self._lock:
            self.fits[name] = (fit, release)

    def _found(self, name: str) -> tuple[Fit, Release] | None:
        """The fit of that id, from memory or the fits folder; None if there is none."""
        with self._lock:
            found = self.fits.get(name)
        folder = self.config.fits
        if found is not None or folder is None or not FIT_ID.fullmatch(name):
            return found
        if not (folder / name / RELEASE).exists():
            return None
        made = json.loads((folder / name / RELEASE).read_text())
        found = load(folder / name), Release(tuple(made["sites"]), made["backend"], 0, 0)
        with self._lock:
            self.fits[name] = found
        return found

    def _fit(self, start: synthesis_pb2.FitStart, requests: Iterator[Any], analyst: str,
             deadline: float, post: Post) -> Fit:
        agreement = self.sites.agreement(deadline)
        name = start.backend or BACKENDS[0]
        if name not in agreement.backends:
            raise CallError(grpc.StatusCode.PERMISSION_DENIED,
                            f"not every site takes part in {name} studies")
        discretization = Discretization.of(agreement.schema, bins=start.bins or DEFAULT_BINS)
        total = rho_of(start.epsilon, start.delta)
        steps: list[Spend] = []

        def progress(spend: Spend) -> None:
            steps.append(spend)
            post(synthesis_pb2.FitProgress(step=_step(len(steps), spend, steps, total)))

        def spec(backend: Backend) -> common_pb2.Backend:
            return convert.backend_message(backend.name, {
                "epsilon": start.epsilon, "delta": start.delta,
                "rho": getattr(backend, "rho", None), "public_context": start.public_context})

        if name == "he+dp":
            def opener(backend: Backend) -> Any:
                asking = AnalystReveal(backend, requests, post, _measurement(backend))
                return self.sites.study(asking, spec(backend), analyst, deadline)

            with Federation([], discretization, backend=name, epsilon=start.epsilon,
                            delta=start.delta, opener=opener, progress=progress,
                            public_context=start.public_context) as measurer:
                return SYNTHESIZERS[start.method]().fit(measurer)
        with self.sites.mpc.held() as parties:
            def joined(backend: Backend) -> Any:
                return self.sites.study(backend, spec(backend), analyst, deadline,
                                        parties.session)

            with Federation([], discretization, backend=name, epsilon=start.epsilon,
                            delta=start.delta, opener=joined, progress=progress,
                            parties=parties) as measurer:
                return SYNTHESIZERS[start.method]().fit(measurer)


def _measurement(backend: Backend) -> Wrap:
    """How a piece of a release's ciphertext goes to the analyst: the query and the ρ
    that the analyst's client needs to reveal it, with the first piece."""
    def wrap(reveal: coordinator_pb2.Reveal, query: Any) -> synthesis_pb2.FitProgress:
        asked = convert.query_message(query) if query is not None else None
        return synthesis_pb2.FitProgress(measurement=synthesis_pb2.Measurement(
            query=asked, rho=getattr(backend, "rho", 0.0) or 0.0, reveal=reveal))

    return wrap


def _check_fit(start: synthesis_pb2.FitStart) -> None:
    """Refuse a fit that names an unknown method or backend, or a bad budget or bins."""
    if start.method not in SYNTHESIZERS:
        raise ArgumentError(f"unknown synthesizer {start.method!r}; choose one of "
                            f"{sorted(SYNTHESIZERS)}")
    if start.backend not in ("", *BACKENDS):
        raise ArgumentError(f"a fit measures under {' or '.join(BACKENDS)}, not "
                            f"{start.backend[:100]!r}")
    if start.backend == "he+dp":
        if not start.public_context:
            raise ArgumentError("a fit under he+dp needs the analyst's public context")
        try:
            PublicHE(start.public_context, Limits(10**8, 100))
        except PetError as refused:
            raise ArgumentError(f"the analyst's public context: {refused}") from None
    elif start.public_context:
        raise ArgumentError(f"a public context is for fits under he+dp, not "
                            f"{start.backend or BACKENDS[0]}")
    check_privacy(start.epsilon, start.delta)
    if start.delta == 0:
        raise ArgumentError("a synthesizer's zCDP budget needs delta > 0")
    if start.bins < 0:
        raise ArgumentError(f"bins must be >= 0, got {start.bins}")


def _step(index: int, spend: Spend, steps: list[Spend], total: float) -> synthesis_pb2.Step:
    groups = common_pb2.Groups(items=[common_pb2.Texts(items=list(c)) for c in spend.cliques])
    return synthesis_pb2.Step(index=index, step=spend.step, cliques=groups, rho=spend.rho,
                              rho_spent=composed(steps), rho_total=total)


def _arrow(frame: Any) -> bytes:
    """One chunk of rows as an Arrow IPC stream (keeps each column's type)."""
    sink = io.BytesIO()
    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue()
