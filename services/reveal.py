"""The analyst's part in a run under `he` or `he+dp`: the coordinator holds no secret key,
so it sends each round's combined ciphertext to the analyst, on the call's own stream,
and takes back the analyst's conclusion of it (`Coordinator.Run`, and `Synthesis.Fit`
under he+dp)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np

from pet import codec
from pet.backends import Backend
from pet.backends.base import Conclusion
from pet.errors import PetError, QueryError
from pet.layout import Layout
from services import convert
from services.jobs import Post
from services.pb import coordinator_pb2
from services.site import PIECE_BYTES
from services.status import CallError

Wrap = Callable[[coordinator_pb2.Reveal, Any], Any]
"""The stream's message for one piece of a reveal, given the query it concludes."""


class AnalystReveal(Backend):
    """A backend whose reveal needs the analyst's secret key (he, he+dp), as the coordinator
    holds it: it combines like the public backend and asks the analyst, on the call's
    stream, to conclude each round; `wrap` makes each piece the stream's message."""

    def __init__(self, public: Backend, requests: Iterator[Any], post: Post,
                 wrap: Wrap) -> None:
        self.public, self.requests, self.post, self.wrap = public, requests, post, wrap
        self.name = public.name  # type: ignore[misc]
        self.differentially_private = public.differentially_private  # type: ignore[misc]
        self.rounds = 0

    def cost(self) -> tuple[float, float]:
        return self.public.cost()

    def open(self, n_sites: int) -> None:
        self.public.open(n_sites)

    def protect(self, partial: np.ndarray, layout: Layout) -> bytes:
        raise PetError("sites protect their own partials; the coordinator never sees one")

    def combine(self, messages: Sequence[bytes], layout: Layout) -> bytes:
        return self.public.combine(messages, layout)

    def reveal(self, combined: bytes, layout: Layout) -> Any:
        raise PetError("only the analyst, who holds the secret key, reveals")

    def noise_sd(self, layout: Layout, sites: int) -> np.ndarray:
        return self.public.noise_sd(layout, sites)

    def conclude(self, query: Any, schema: Any, state: Any, combined: bytes,
                 layout: Layout) -> Conclusion:
        """Send the combined ciphertext to the analyst in pieces; their conclusion back."""
        self.rounds += 1
        starts = range(0, max(len(combined), 1), PIECE_BYTES)
        for start in starts:
            reveal = coordinator_pb2.Reveal(
                data=combined[start:start + PIECE_BYTES], last=start == starts[-1],
                state_json=codec.dumps(state) if start == 0 else "", round=self.rounds)
            self.post(self.wrap(reveal, query if start == 0 else None))
        try:
            request = next(self.requests)
        except (StopIteration, grpc.RpcError):
            raise CallError(grpc.StatusCode.CANCELLED, "the analyst left the run") from None
        if request.WhichOneof("kind") != "conclusion":
            raise QueryError("the analyst must answer a Reveal with a Conclusion")
        answer = request.conclusion
        return Conclusion(codec.loads(answer.outcome_json), np.asarray(answer.head),
                          np.asarray(answer.error_bounds, dtype=np.float64),
                          convert.privacy_of(answer.guarantee),
                          interval=convert.interval_of(answer))
