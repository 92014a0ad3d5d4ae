"""The one place pet imports CrypTen, and what pet changes in it.

- CrypTen 0.4.1 imports `torch.onnx._internal.registration` at import time, a module that
  current torch no longer has. CrypTen uses it only to convert ONNX models, which pet
  never does, so a stub module (with `registry = None`) is registered before the import.
- CrypTen's parties talk over torch.distributed, whose gloo transport here has no TLS
  (torch rejects GLOO_DEVICE_TRANSPORT=TCP_TLS). `start_party` puts `TlsCommunicator` in
  the place of CrypTen's communicator: the same calls, run by `pet.mpc.collectives` over
  the session's mutually authenticated TLS connections, with rounds and bytes counted by
  CrypTen's own bookkeeping.
- CrypTen's trusted-third-party client and server exchange their seeds through
  torch.distributed directly, and the server runs whatever function party 0 names.
  `DealtClient` and `Dealer` exchange the seeds over the session's channel (the dealer
  draws them from the operating system), and the dealer answers only CrypTen's five
  dealer functions and Beaver operations, with arguments decoded by pet's own codec.
- CrypTen's party 0 asks the dealer for each product's triple, and each truncation's wrap
  counts, the moment it needs them: one round trip each, a third of a regression's
  rounds. The material depends only on public shapes, so `dealt_ahead` asks for a whole
  program's in one exchange, in the order the program recorded the first time a program
  of its shape ran (see `DealtClient`), and reads the answers while the program's first
  steps run.
- CrypTen turns an arithmetic sharing into a binary one (every comparison does) by
  adding the parties' binary shares with a tree of full adders, 7 rounds each: 14 for
  three parties. `carry_save_a2b` first reduces three addends to two with carry-save
  adders (one round for each level of the reduction), then adds once: 8 rounds for
  three parties (the same as CrypTen's for two), 11 for eight instead of 21.
- CrypTen wraps every attribute access of an encrypted tensor in a validation hook that
  reads `cfg.debug.validation_mode` through omegaconf. pet never validates, and the hook
  took a fifth of a party's time (a variance's program at 1 000 rows: 17.6 ms → 10.2 ms
  without it), so `start_party` removes it (`unvalidated`).

Importing this module imports CrypTen, which takes about 2 s on top of torch, so only the
party processes import it (see `pet.mpc.parties`).
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import secrets
import sys
import types
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Any

import torch
from torch.distributed import ReduceOp

from pet.errors import PetError
from pet.mpc.channel import ChannelError
from pet.mpc.collectives import Collectives

_STUB = "torch.onnx._internal.registration"
if _STUB not in sys.modules:
    _stub = types.ModuleType(_STUB)
    _stub.registry = None  # type: ignore[attr-defined]
    sys.modules[_STUB] = _stub

import crypten  # noqa: E402
import crypten.communicator as comm  # noqa: E402
from crypten.communicator.communicator import Communicator, _logging  # noqa: E402
from crypten.cryptensor import CrypTensor  # noqa: E402
from crypten.mpc.primitives import converters  # noqa: E402
from crypten.mpc.primitives.binary import BinarySharedTensor  # noqa: E402
from crypten.mpc.provider import ttp_provider  # noqa: E402

BEAVER_OPS = frozenset({"mul", "matmul", "conv1d", "conv2d", "conv_transpose1d",
                        "conv_transpose2d"})
"""The products CrypTen's Beaver protocol asks the dealer to deal triples for."""
REQUEST_KEYS = frozenset({"function", "device", "args", "kwargs"})
MAX_DEALT = 100_000
"""The most requests the dealer answers in one exchange."""
MAX_DEALT_ELEMENTS = 2**27
"""The most numbers (1 GiB) the dealer deals in one exchange: a correlation asks for
about 60 000, a 7-term linear regression 200 000."""
KEPT_SCHEDULES = 64
"""The programs whose dealer requests party 0 keeps, the most recently run."""


def load_crypten() -> Any:
    """The `crypten` module (imported behind the ONNX stub)."""
    return crypten


def carry_save_a2b(arithmetic: Any) -> BinarySharedTensor:
    """A binary sharing of an arithmetic one: each party's share is an addend, shared in
    binary without a round (CrypTen's PRZS); carry-save adders turn every three addends
    into two, a + b + c = (a ⊕ b ⊕ c) + 2·maj(a, b, c) with maj = a ⊕ ((a ⊕ b) ∧ (a ⊕ c)),
    one secure AND for each level of the tree; one full adder adds the last two."""
    addends = [BinarySharedTensor(arithmetic.share, src=party)
               for party in range(comm.get().get_world_size())]
    while len(addends) > 2:
        triples = len(addends) // 3
        a, b, c = (BinarySharedTensor.stack(addends[i:3 * triples:3]) for i in range(3))
        partial = a ^ b
        carries = (a ^ (partial & (a ^ c))) << 1
        sums = partial ^ c
        addends = ([sums[i] for i in range(triples)] + [carries[i] for i in range(triples)]
                   + addends[3 * triples:])
    binary = addends[0] + addends[1] if len(addends) == 2 else addends[0]
    binary.encoder = arithmetic.encoder
    return binary


def start_party(collectives: Collectives) -> Any | None:
    """Join CrypTen's session over pet's channel, with the trusted-third-party provider,
    counting rounds and bytes. A party gets the `crypten` module back; the dealer serves
    Beaver triples until party 0 ends the session, then gets None."""
    crypten.cfg.mpc.provider = "TTP"
    converters._A2B = carry_save_a2b
    unvalidated()
    crypten.cfg.communicator.verbose = True
    TlsCommunicator.pending = collectives
    comm.DistributedCommunicator = TlsCommunicator
    ttp_provider.TTPClient._TTPClient__TTPClient = DealtClient
    crypten.init()
    if collectives.rank < collectives.parties:
        return crypten
    Dealer().serve()
    crypten.uninit()
    return None


def unvalidated() -> None:
    """Drop CrypTen's validation hook from every attribute of an encrypted tensor, which
    pet never turns on: the hook reads `cfg.debug.validation_mode` through omegaconf on
    each access, a fifth of a party's time in a variance's program."""
    if crypten.cfg.debug.validation_mode:
        raise PetError("CrypTen's validation mode (cfg.debug.validation_mode) is on; "
                       "pet's parties run without it: set it to False before a session "
                       "starts")
    hooked = CrypTensor.__dict__["__getattribute__"]
    CrypTensor.__getattribute__ = getattr(hooked, "__wrapped__", hooked)


class TlsCommunicator(Communicator):
    """CrypTen's communicator, run over pet's TLS channel by `Collectives`; CrypTen's
    `_logging` counts each call's rounds and bytes as it does for its own."""

    BYTES_PER_ELEMENT = 8
    instance: TlsCommunicator | None = None
    pending: Collectives | None = None
    """The session's collectives, set by `start_party` before CrypTen initialises."""

    def __init__(self, collectives: Collectives, init_ttp: bool) -> None:
        self.collectives = collectives
        self.rank = collectives.rank
        self.main_group = collectives.main_group
        self.ttp_group = collectives.ttp_group
        self.ttp_comm_group = collectives.ttp_comm_group
        self.ttp_initialized = init_ttp
        self._name = f"rank{self.rank}"
        self.reset_communication_stats()

    @classmethod
    def initialize(cls, rank: int, world_size: int, init_ttp: bool = False) -> None:
        """Take the session `start_party` prepared (CrypTen's rank and world size
        arguments are placeholders; the channel knows both)."""
        if cls.pending is None:
            raise PetError("pet's parties start CrypTen through pet.crypten_shim.start_party, "
                           "which hands it the session's channel")
        cls.instance, cls.pending = cls(cls.pending, init_ttp), None

    @classmethod
    def get(cls) -> TlsCommunicator | None:
        return cls.instance

    @classmethod
    def is_initialized(cls) -> bool:
        return cls.instance is not None

    @classmethod
    def shutdown(cls) -> None:
        """Party 0 tells the dealer the session is over; every process closes its
        connections."""
        instance, cls.instance = cls.instance, None
        if instance is None:
            return
        try:
            if instance.rank == 0 and instance.ttp_initialized:
                with contextlib.suppress(ChannelError):  # the dealer may have gone already
                    instance.collectives.send_obj("terminate", instance.get_ttp_rank())
        finally:
            instance.collectives.close()

    @_logging
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        self.collectives.send(tensor, dst)

    @_logging
    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        return self.collectives.recv(tensor, self._source(src))

    @_logging
    def isend(self, tensor: torch.Tensor, dst: int) -> Any:
        return self.collectives.isend(tensor, dst)

    @_logging
    def irecv(self, tensor: torch.Tensor, src: int | None = None) -> Any:
        return self.collectives.irecv(tensor, self._source(src))

    @_logging
    def scatter(self, scatter_list: Any, src: int, size: Any = None,
                device: Any = None) -> torch.Tensor:
        return self.collectives.scatter(scatter_list, src, size, device)

    @_logging
    def reduce(self, input: Any, dst: int, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        return self.collectives.reduce(input, dst, op, batched)

    @_logging
    def all_reduce(self, input: Any, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        return self.collectives.all_reduce(input, op, batched)

    @_logging
    def gather(self, tensor: torch.Tensor, dst: int) -> list[Any]:
        return self.collectives.gather(tensor, dst)

    @_logging
    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return self.collectives.all_gather(tensor)

    @_logging
    def broadcast(self, input: Any, src: int, group: Any = None, batched: bool = False) -> Any:
        return self.collectives.broadcast(input, src, group, batched)

    @_logging
    def barrier(self) -> None:
        self.collectives.barrier()

    @_logging
    def send_obj(self, obj: Any, dst: int, group: Any = None) -> None:
        self.collectives.send_obj(obj, dst, group)

    @_logging
    def recv_obj(self, src: int, group: Any = None) -> Any:
        return self.collectives.recv_obj(src, group)

    @_logging
    def broadcast_obj(self, obj: Any, src: int, group: Any = None) -> Any:
        return self.collectives.broadcast_obj(obj, src, group)

    def get_world_size(self) -> int:
        """The number of parties (the dealer is not counted, as in CrypTen)."""
        return self.collectives.parties

    def get_rank(self) -> int:
        return self.rank

    def get_ttp_rank(self) -> int:
        return self.collectives.parties

    def set_name(self, name: str) -> None:
        self._name = name

    def get_name(self) -> str:
        return self._name

    def _source(self, src: int | None) -> int:
        if src is None:
            raise PetError(f"party {self.rank}: pet's channel receives from a named party "
                           "only")
        return src


OUT_OF_STEP = ("a program failed while its dealer material was dealt ahead: this "
               "session's draws are out of step and it must end")
"""Why a client refuses every request once broken (`DealtClient`)."""


class DealtClient(ttp_provider.TTPClient._TTPClient__TTPClient):
    """CrypTen's trusted-third-party client, taking its seed from the dealer over pet's
    channel. CrypTen keeps the client class private to its `TTPClient` singleton;
    `start_party` puts this subclass in its place.

    Inside `dealt_ahead`, party 0 records a program's requests the first time it runs,
    and the next time takes their answers from one exchange: it asks before the program
    starts and reads the answers when the program first needs one, so that the round
    trip overlaps what the program does first (a secure program's reveal of n). The
    dealer draws each party's part of the material from that party's seed, in order; the
    parties draw theirs as the program asks for them. So the answers must be taken in
    exactly the recorded order, and all of them: any other request is
    refused as out of step, and so is material left over, and the session ends (its
    parties' draws no longer match the dealer's). Should the session's owner not end it,
    the client refuses every later request (`broken`): never a share drawn out of step."""

    def __init__(self) -> None:
        self.schedules: OrderedDict[bytes, list[tuple[tuple, torch.Size]]] = OrderedDict()
        self.dealt: deque | None = None
        self.awaited: list[tuple[tuple, torch.Size]] | None = None
        self.recording: list[tuple[tuple, torch.Size]] | None = None
        self.broken = False
        super().__init__()

    def ttp_request(self, func_name: str, device: Any, *args: Any, **kwargs: Any) -> Any:
        request = (func_name, None if device is None else str(device), args, kwargs)
        if self.broken:
            raise PetError(OUT_OF_STEP)
        if self.awaited is not None:
            self.receive()
        if self.dealt is not None:
            if not self.dealt or self.dealt[0][0] != request:
                raise PetError(f"party 0 asked the dealer for {func_name} {args} out of the "
                               "order dealt ahead")
            return self.dealt.popleft()[1]
        answer = super().ttp_request(func_name, device, *args, **kwargs)
        if self.recording is not None:
            self.recording.append((request, answer.size()))
        return answer

    def ask(self, schedule: list[tuple[tuple, torch.Size]]) -> None:
        """Ask the dealer for every request of `schedule` at once, without waiting for
        the answers (`receive` reads them); nothing is sent where the program asks for
        nothing."""
        if not schedule:
            self.dealt = deque()
            return
        communicator = comm.get()
        communicator.send_obj({"batch": [
            {"function": f, "device": d, "args": a, "kwargs": k}
            for (f, d, a, k), _ in schedule]}, communicator.get_ttp_rank(), self.ttp_group)
        self.awaited = schedule

    def receive(self) -> None:
        """Read the answers to what `ask` sent and keep them in the schedule's order. The
        answers' sizes were recorded with the requests, so the dealer sends the numbers
        alone, in one frame whose length the channel checks."""
        schedule, self.awaited = self.awaited, None
        counts = [size.numel() for _, size in schedule]
        flat = torch.empty(sum(counts), dtype=torch.long)
        communicator = comm.get()
        communicator.broadcast(flat, communicator.get_ttp_rank(), self.comm_group)
        self.dealt = deque((request, part.view(size)) for (request, size), part
                           in zip(schedule, flat.split(counts), strict=True))

    def _setup_generators(self) -> None:
        collectives = comm.get().collectives
        seed = collectives.recv(torch.empty(size=(), dtype=torch.long), collectives.parties)
        collectives.barrier(collectives.ttp_group)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed.item())
        self.generator_cuda = None
        if torch.cuda.is_available():
            self.generator_cuda = torch.Generator(device="cuda")
            self.generator_cuda.manual_seed(seed.item())


class Dealer(ttp_provider.TTPServer):
    """CrypTen's trusted third party over pet's channel: one seed per party from the
    operating system's randomness, then triples for party 0's requests until it ends the
    session. Requests are checked before anything is computed."""

    def __init__(self) -> None:  # CrypTen's own starts CrypTen and serves right away
        self.collectives = comm.get().collectives
        self.ttp_group = comm.get().ttp_group
        self.comm_group = comm.get().ttp_comm_group
        self.device = "cpu"
        self._setup_generators()

    def serve(self) -> None:
        """Answer party 0's requests until it says "terminate": one at a time, or a whole
        program's at once (`DealtClient.deal`), in the order asked."""
        me = self.collectives.parties
        while True:
            message = comm.get().recv_obj(0, self.ttp_group)
            if message == "terminate":
                return
            batch = isinstance(message, dict) and set(message) == {"batch"}
            results: list[torch.Tensor] = []
            dealt = 0
            for function, args, kwargs, device in _checked(
                    message["batch"] if batch else [message]):
                self.device = device
                results.append(getattr(self, function)(*args, **kwargs))
                dealt += results[-1].numel()
                if dealt > MAX_DEALT_ELEMENTS:
                    raise PetError(f"the dealer deals at most {MAX_DEALT_ELEMENTS} numbers "
                                   "in one exchange")
            if not batch:  # party 0 knows a batch's sizes from when it recorded them
                comm.get().send_obj(results[0].size(), 0, self.ttp_group)
            # one frame either way: a tensor travels as its bytes, shaped by the receiver
            comm.get().broadcast(torch.cat([r.reshape(-1) for r in results]) if results
                                 else torch.empty(0, dtype=torch.long), me, self.comm_group)

    def _setup_generators(self) -> None:
        parties = self.collectives.parties
        seeds = [secrets.randbits(64) - 2**63 for _ in range(parties)]
        self.generators = [torch.Generator(device="cpu") for _ in range(parties)]
        self.generators_cuda = [torch.Generator(device="cuda") if torch.cuda.is_available()
                                else None for _ in range(parties)]
        for party, seed in enumerate(seeds):
            self.generators[party].manual_seed(seed)
            if self.generators_cuda[party] is not None:
                self.generators_cuda[party].manual_seed(seed)
            self.collectives.send(torch.tensor(seed, dtype=torch.long), party)
        self.collectives.barrier(self.collectives.ttp_group)


def _checked(requests: Any) -> list[tuple[str, tuple, dict, str | None]]:
    """Requests as (function, arguments, keyword arguments, device), every one checked
    (`dealer_request`) before the dealer computes anything."""
    if not isinstance(requests, list) or len(requests) > MAX_DEALT:
        raise PetError(f"the dealer answers a list of at most {MAX_DEALT} requests at once")
    return [(*dealer_request(request), request["device"]) for request in requests]


@contextlib.contextmanager
def dealt_ahead(key: tuple) -> Iterator[None]:
    """Run a program with its dealer requests answered in one exchange where party 0 has
    seen them before: `key` holds every public value the program's requests depend on
    (its parameters and the shapes of its shares). Party 0 asks on entering and reads the
    answers at the program's first request, so the program's first steps that need no
    material (a reveal) overlap the round trip. Elsewhere (the first run, the other
    parties) the program runs as it would, party 0 recording what it asks."""
    client = ttp_provider.TTPClient.get()
    if comm.get().get_rank() != 0:
        yield
        return
    if client.broken:  # nothing is asked of the dealer for a program that would be refused
        raise PetError(OUT_OF_STEP)
    digest = _digest(key)
    schedule = client.schedules.get(digest)
    # Once asked (even should the asking or the reading fail midway), the dealer may have
    # drawn the material from every party's seed: any failure then leaves the draws out
    # of step.
    asked = bool(schedule)
    try:
        if schedule is not None:
            client.schedules.move_to_end(digest)
            client.ask(schedule)
        else:
            client.recording = []
        yield
        if client.awaited is not None:  # asked for, never needed: read, then refuse
            client.receive()
        if client.dealt:
            raise PetError(f"{len(client.dealt)} of the dealer's answers dealt ahead were "
                           "left unused: the session's draws are out of step")
        if client.recording is not None:
            client.schedules[digest] = client.recording
            while len(client.schedules) > KEPT_SCHEDULES:
                client.schedules.popitem(last=False)
    except BaseException:
        client.broken = client.broken or asked
        raise
    finally:
        client.dealt, client.awaited, client.recording = None, None, None


def _digest(key: tuple) -> bytes:
    """A program's public inputs, hashed (pickled only to be hashed, never loaded)."""
    return hashlib.sha256(pickle.dumps(key, protocol=5)).digest()


def dealer_request(message: Any) -> tuple[str, tuple, dict]:
    """A dealer request's function, arguments and keyword arguments, if it is one CrypTen
    makes: one of its dealer functions, sizes as arguments, a Beaver operation."""
    if not isinstance(message, dict) or set(message) != REQUEST_KEYS:
        raise PetError(f"the dealer refuses party 0's message {message!r}: not a request "
                       "for Beaver triples")
    function, args, kwargs = message["function"], message["args"], message["kwargs"]
    device = message["device"]
    if (function not in ttp_provider.TTP_FUNCTIONS or not isinstance(args, tuple)
            or not isinstance(kwargs, dict) or not (device is None or isinstance(device, str))
            or (function == "additive" and (len(args) < 3 or args[2] not in BEAVER_OPS))):
        raise PetError(f"the dealer refuses party 0's request {function!r} with arguments "
                       f"{args!r}: it deals only {sorted(ttp_provider.TTP_FUNCTIONS)} for "
                       f"the operations {sorted(BEAVER_OPS)}")
    return function, args, kwargs
