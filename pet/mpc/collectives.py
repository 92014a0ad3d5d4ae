"""CrypTen's communication primitives over a session's TLS `Channel`.

Point-to-point messages, collectives over a group of ranks (the parties, or the parties
and the dealer), and small objects: what CrypTen's communicator offers, with the same
arguments and results, so that `pet.crypten_shim` can hand it to CrypTen. A collective
is one exchange of frames among the group's members, each member combining what it
receives in rank order (so every member computes the same result). Every process of a
session runs the same sequence of calls, which keeps the frames of each connection in
order without tags.

Objects travel in a small tagged JSON encoding of pet's own, never as pickles: None,
booleans, numbers, text, torch.Size, and tuples, lists and text-keyed dicts of these —
what CrypTen's dealer exchanges (its requests name a function, sizes, a device and an
operation). Anything else is refused, on either end.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

import torch
from torch.distributed import ReduceOp

from pet.mpc.channel import Channel, ChannelError

COMBINE = {ReduceOp.SUM: torch.add, ReduceOp.BXOR: torch.bitwise_xor}
"""The reductions CrypTen asks for: sums of arithmetic shares, xor of binary ones."""
TAGS = ("size", "tuple", "list", "dict")


class Done:
    """A finished request: `isend` and `irecv` complete before they return."""

    def wait(self) -> None:
        """Nothing left to wait for."""

    def is_completed(self) -> bool:
        return True


class Collectives:
    """CrypTen's communicator calls over a `Channel`; ranks are the channel's (the parties,
    then the dealer), and a group is a tuple of ranks (by default the parties). The group
    CrypTen passes to point-to-point calls is accepted but not needed: a rank names one
    process of the session whatever the group."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.rank = channel.rank
        self.parties = channel.world - 1
        self.main_group = tuple(range(self.parties))
        self.ttp_group = tuple(range(channel.world))
        self.ttp_comm_group = (0, self.parties)

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        self.channel.send(dst, _payload([tensor]))

    def recv(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        """A new tensor shaped like `tensor`, from `src`."""
        return self._receive([tensor], src)[0]

    def isend(self, tensor: torch.Tensor, dst: int) -> Done:
        self.send(tensor, dst)
        return Done()

    def irecv(self, tensor: torch.Tensor, src: int) -> Done:
        """Receive into `tensor` itself, as torch.distributed does."""
        tensor.copy_(self.recv(tensor, src))
        return Done()

    def scatter(self, scatter_list: Sequence[torch.Tensor], src: int,
                size: Any = None, device: Any = None) -> torch.Tensor:
        """`scatter_list[r]` from `src` to each party r; this party's."""
        if self.rank == src:
            for peer in self._others(self.main_group):
                self.send(scatter_list[peer], peer)
            return scatter_list[self.rank]
        if size is None:
            size = scatter_list[self.rank].size()
        return self.recv(torch.empty(size=size, dtype=torch.long, device=device), src)

    def reduce(self, input: Any, dst: int, op: Any = ReduceOp.SUM,
               batched: bool = False) -> Any:
        """The parties' tensors (or lists of tensors) combined, at `dst`; None elsewhere."""
        tensors = _listed(input, batched)
        if self.rank != dst:
            self.channel.send(dst, _payload(tensors))
            return None
        result = self._combine({dst: tensors, **self._from_others(tensors)}, op)
        return result if batched else result[0]

    def all_reduce(self, input: Any, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        """The parties' tensors (or lists of tensors) combined, at every party."""
        tensors = _listed(input, batched)
        payload = _payload(tensors)
        for peer in self._others(self.main_group):
            self.channel.send(peer, payload)
        result = self._combine({self.rank: tensors, **self._from_others(tensors)}, op)
        return result if batched else result[0]

    def gather(self, tensor: torch.Tensor, dst: int) -> list[Any]:
        """Every party's tensor, by rank, at `dst`; [None] elsewhere."""
        if self.rank != dst:
            self.send(tensor, dst)
            return [None]
        received = self._from_others([tensor])
        return [tensor if r == dst else received[r][0] for r in self.main_group]

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every party's tensor, by rank, at every party."""
        payload = _payload([tensor])
        for peer in self._others(self.main_group):
            self.channel.send(peer, payload)
        received = self._from_others([tensor])
        return [tensor if r == self.rank else received[r][0] for r in self.main_group]

    def broadcast(self, input: Any, src: int, group: Sequence[int] | None = None,
                  batched: bool = False) -> Any:
        """`src`'s tensor (or list of tensors), written into every member's own."""
        group = self._member(group)
        tensors = _listed(input, batched)
        if self.rank == src:
            payload = _payload(tensors)
            for peer in self._others(group):
                self.channel.send(peer, payload)
        else:
            for tensor, value in zip(tensors, self._receive(tensors, src), strict=True):
                tensor.copy_(value)
        return input

    def barrier(self, group: Sequence[int] | None = None) -> None:
        """Wait until every member of the group has reached its barrier."""
        others = self._others(self._member(group))
        for peer in others:
            self.channel.send(peer, b"")
        for peer in others:
            if self.channel.recv(peer):
                raise ChannelError(f"{self.channel.who(peer)} sent data where a barrier was "
                                   "expected; the processes ran different programs")

    def send_obj(self, obj: Any, dst: int, group: Sequence[int] | None = None) -> None:
        self.channel.send(dst, encode(obj))

    def recv_obj(self, src: int, group: Sequence[int] | None = None) -> Any:
        return decode(self.channel.recv(src), self.channel.who(src))

    def broadcast_obj(self, obj: Any, src: int, group: Sequence[int] | None = None) -> Any:
        """`src`'s object, at every member of the group."""
        group = self._member(group)
        if self.rank != src:
            return self.recv_obj(src)
        payload = encode(obj)
        for peer in self._others(group):
            self.channel.send(peer, payload)
        return obj

    def close(self) -> None:
        self.channel.close()

    def _member(self, group: Sequence[int] | None) -> Sequence[int]:
        group = self.main_group if group is None else group
        if self.rank not in group:
            raise ChannelError(f"{self.channel.who(self.rank)} is not in the group {group}")
        return group

    def _others(self, group: Sequence[int]) -> list[int]:
        return [r for r in group if r != self.rank]

    def _receive(self, like: Sequence[torch.Tensor], src: int) -> list[torch.Tensor]:
        """Tensors shaped like `like`, from one frame of `src`."""
        frame = self.channel.recv(src)
        sizes = [t.numel() * t.element_size() for t in like]
        if len(frame) != sum(sizes):
            raise ChannelError(f"{self.channel.who(src)} sent {len(frame)} bytes where "
                               f"{sum(sizes)} were expected; the processes ran different "
                               "programs")
        ends = list(itertools.accumulate(sizes))
        return [_tensor(frame[end - size:end], t) for size, end, t in zip(sizes, ends, like,
                                                                          strict=True)]

    def _from_others(self, like: Sequence[torch.Tensor]) -> dict[int, list[torch.Tensor]]:
        """One frame of tensors shaped like `like` from every other party."""
        return {peer: self._receive(like, peer) for peer in self._others(self.main_group)}

    @staticmethod
    def _combine(parts: dict[int, Sequence[torch.Tensor]], op: Any) -> list[torch.Tensor]:
        """Each tensor combined over the parties, in rank order."""
        if op not in COMBINE:
            raise ChannelError(f"reduction {op} is not one pet's parties perform; CrypTen "
                               "uses SUM and BXOR")
        combine = COMBINE[op]
        ranks = sorted(parts)
        result = [t.clone() for t in parts[ranks[0]]]
        for rank in ranks[1:]:
            result = [combine(a, b) for a, b in zip(result, parts[rank], strict=True)]
        return result


def _listed(input: Any, batched: bool) -> list[torch.Tensor]:
    return list(input) if batched else [input]


def _payload(tensors: Sequence[torch.Tensor]) -> bytes:
    """The tensors' bytes, one after the other (their shapes are known at both ends)."""
    return b"".join(t.detach().cpu().contiguous().numpy().tobytes() for t in tensors)


def _tensor(data: bytes, like: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like `like` from its bytes."""
    if not data:
        return torch.empty_like(like)
    flat = torch.frombuffer(bytearray(data), dtype=like.dtype)
    return flat.reshape(like.shape).to(like.device)


def encode(value: Any) -> bytes:
    """An object as tagged JSON (see the module docstring); anything else is refused."""
    return json.dumps(_tagged(value)).encode()


def decode(data: bytes, sender: str) -> Any:
    """An object sent by `encode`; anything else is refused, naming the sender."""
    try:
        return _untagged(json.loads(data))
    except (ValueError, TypeError) as error:
        raise ChannelError(f"{sender} sent an object pet does not accept ({error}); "
                           "parties exchange only numbers, text, sizes, and tuples, lists "
                           "and dicts of these") from None


def _tagged(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Size):
        return {"size": [int(d) for d in value]}
    if isinstance(value, tuple | list):
        return {type(value).__name__: [_tagged(v) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _tagged(v) for k, v in value.items()}}
    raise ChannelError(f"pet sends only numbers, text, sizes, and tuples, lists and dicts "
                       f"of these between parties, not a {type(value).__name__}")


def _untagged(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in TAGS:
        raise ValueError(f"an untagged {type(value).__name__}")
    tag, content = next(iter(value.items()))
    if tag == "dict":
        if not isinstance(content, dict):
            raise ValueError("a dict tag without a dict")
        return {k: _untagged(v) for k, v in content.items()}
    if not isinstance(content, list):
        raise ValueError(f"a {tag} tag without a list")
    if tag == "size":
        if not all(type(d) is int for d in content):
            raise ValueError("a size with a dimension that is not an integer")
        return torch.Size(content)
    items = [_untagged(v) for v in content]
    return tuple(items) if tag == "tuple" else items
