"""CrypTen installs by the project's route and imports through pet's shim."""

import ast
import types
from collections import OrderedDict, deque
from pathlib import Path

import pytest
import torch

import pet.crypten_shim as shim
from pet.crypten_shim import (
    MAX_DEALT,
    DealtClient,
    _checked,
    dealer_request,
    dealt_ahead,
    load_crypten,
)
from pet.errors import PetError


def test_crypten_imports_and_round_trips_a_secret_shared_tensor() -> None:
    crypten = load_crypten()
    crypten.init()
    try:
        values = torch.tensor([1.5, -2.25, 1000.0])
        shared = crypten.cryptensor(values)
        assert torch.allclose(shared.get_plain_text(), values, atol=1e-4)
        assert torch.allclose((shared + shared).get_plain_text(), 2 * values, atol=1e-4)
    finally:
        crypten.uninit()


def test_the_shim_is_the_only_module_that_imports_crypten() -> None:
    root = Path(__file__).resolve().parents[1]
    importers = []
    sources = [*root.glob("pet/**/*.py"), *root.glob("benchmarks/**/*.py"),
               *root.glob("tests/**/*.py")]
    for path in sources:
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # virtual environments of benchmark peers, caches
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "crypten" or n.startswith("crypten.") for n in names):
                importers.append(path.relative_to(root).as_posix())
    assert sorted(set(importers)) == ["pet/crypten_shim.py"]


def test_the_dealer_deals_only_what_cryptens_parties_ask_for() -> None:
    request = {"function": "additive", "device": None, "kwargs": {},
               "args": (torch.Size([2, 3]), torch.Size([2, 3]), "mul")}
    assert dealer_request(request) == ("additive", request["args"], {})
    refused = [{**request, "function": "__init__"},
               {**request, "args": (torch.Size([2]), torch.Size([2]), "exp")},
               {**request, "extra": 1}, "shutdown"]
    for message in refused:
        with pytest.raises(PetError, match="the dealer refuses party 0's"):
            dealer_request(message)


def test_the_dealer_checks_every_request_of_a_batch_before_dealing() -> None:
    request = {"function": "wraps", "device": None, "kwargs": {}, "args": (torch.Size([4]),)}
    assert _checked([request, request]) == [("wraps", (torch.Size([4]),), {}, None)] * 2
    for batch in ([request, {**request, "function": "__init__"}], "wraps", (request,),
                  [request] * (MAX_DEALT + 1)):
        with pytest.raises(PetError, match="the dealer"):
            _checked(batch)


def test_material_dealt_ahead_is_taken_only_in_the_order_dealt() -> None:
    """Party 0's parts come from a batch in the order the dealer drew them; any other
    request is refused, never answered with another request's material."""
    client = _client()
    wraps = ("wraps", None, (torch.Size([2]),), {})
    square = ("square", None, (torch.Size([2]),), {})
    client.dealt = deque([(wraps, torch.ones(2, dtype=torch.long))])
    with pytest.raises(PetError, match="out of the order dealt ahead"):
        client.ttp_request(*square[:2], *square[2])
    assert client.ttp_request(*wraps[:2], *wraps[2]).tolist() == [1, 1]
    with pytest.raises(PetError, match="out of the order dealt ahead"):
        client.ttp_request(*wraps[:2], *wraps[2])


def test_a_program_that_fails_with_material_dealt_ahead_stops_every_later_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure midway leaves the parties' draws out of step with the dealer's: the
    client then refuses every request, even if the session were not ended."""
    client = _client()
    wraps = ("wraps", None, (torch.Size([2]),), {})
    monkeypatch.setattr(shim.ttp_provider.TTPClient, "get", staticmethod(lambda: client))
    monkeypatch.setattr(shim.comm, "get", lambda: types.SimpleNamespace(get_rank=lambda: 0))
    client.schedules[shim._digest(("secure",))] = [(wraps, torch.Size([2]))] * 2
    monkeypatch.setattr(DealtClient, "ask", lambda self, schedule: setattr(
        self, "dealt", deque((r, torch.zeros(s)) for r, s in schedule)))
    with pytest.raises(ValueError), dealt_ahead(("secure",)):
        client.ttp_request(*wraps[:2], *wraps[2])
        raise ValueError("a party failed")
    with pytest.raises(PetError, match="out of step and it must end"):
        client.ttp_request(*wraps[:2], *wraps[2])


def test_the_dealers_answers_are_read_at_the_first_request_not_before(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Party 0 asks for a known program's material on entering it and reads the answers
    only when the program first needs one: what the program does before (a reveal of n)
    overlaps the round trip to the dealer."""
    client = _client()
    client.comm_group = client.ttp_group = None
    wraps = ("wraps", None, (torch.Size([2]),), {})
    steps: list[str] = []

    def broadcast(flat: torch.Tensor, src: int, group: object) -> None:
        steps.append("answers read")
        flat.fill_(7)

    party = types.SimpleNamespace(
        get_rank=lambda: 0, get_ttp_rank=lambda: 3, broadcast=broadcast,
        send_obj=lambda obj, dst, group: steps.append(f"asked {len(obj['batch'])}"))
    monkeypatch.setattr(shim.ttp_provider.TTPClient, "get", staticmethod(lambda: client))
    monkeypatch.setattr(shim.comm, "get", lambda: party)
    client.schedules[shim._digest(("secure",))] = [(wraps, torch.Size([2]))] * 2
    with dealt_ahead(("secure",)):
        steps.append("n revealed")
        first = client.ttp_request(*wraps[:2], *wraps[2])
        second = client.ttp_request(*wraps[:2], *wraps[2])
    assert steps == ["asked 2", "n revealed", "answers read"]
    assert first.tolist() == second.tolist() == [7, 7]


def test_material_asked_for_and_never_needed_is_refused_as_left_over(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A program that asks for nothing of what was dealt for it leaves the draws out of
    step: the answers are read off the channel, then refused."""
    client = _client()
    client.comm_group = client.ttp_group = None
    wraps = ("wraps", None, (torch.Size([2]),), {})
    read: list[int] = []
    party = types.SimpleNamespace(
        get_rank=lambda: 0, get_ttp_rank=lambda: 3,
        broadcast=lambda flat, src, group: read.append(flat.numel()),
        send_obj=lambda obj, dst, group: None)
    monkeypatch.setattr(shim.ttp_provider.TTPClient, "get", staticmethod(lambda: client))
    monkeypatch.setattr(shim.comm, "get", lambda: party)
    client.schedules[shim._digest(("secure",))] = [(wraps, torch.Size([2]))]
    with pytest.raises(PetError, match="left unused"), dealt_ahead(("secure",)):
        pass
    assert read == [2] and client.awaited is None and client.broken


@pytest.mark.parametrize("fails", ["before the first request", "while reading the answers"])
def test_a_failure_after_asking_the_dealer_ends_every_later_request_and_asking(
        monkeypatch: pytest.MonkeyPatch, fails: str) -> None:
    """Once party 0 has asked, the dealer may have drawn the material from every party's
    seed: a program that fails before it reads the answers, or whose reading fails,
    leaves the draws out of step. The client then refuses every request, and asks the
    dealer for nothing more."""
    client = _client()
    client.comm_group = client.ttp_group = None
    wraps = ("wraps", None, (torch.Size([2]),), {})
    sent: list[int] = []

    def broadcast(flat: torch.Tensor, src: int, group: object) -> None:
        raise ConnectionError("the dealer's frame was cut short")

    party = types.SimpleNamespace(
        get_rank=lambda: 0, get_ttp_rank=lambda: 3, broadcast=broadcast,
        send_obj=lambda obj, dst, group: sent.append(len(obj["batch"])))
    monkeypatch.setattr(shim.ttp_provider.TTPClient, "get", staticmethod(lambda: client))
    monkeypatch.setattr(shim.comm, "get", lambda: party)
    client.schedules[shim._digest(("secure",))] = [(wraps, torch.Size([2]))]
    with pytest.raises((ValueError, ConnectionError)), dealt_ahead(("secure",)):
        if fails == "before the first request":
            raise ValueError("a party failed")
        client.ttp_request(*wraps[:2], *wraps[2])
    assert client.broken and sent == [1]
    with pytest.raises(PetError, match="out of step and it must end"):
        client.ttp_request(*wraps[:2], *wraps[2])
    with pytest.raises(PetError, match="out of step and it must end"), \
            dealt_ahead(("secure",)):
        pass
    assert sent == [1]


def _client() -> DealtClient:
    """Party 0's client without a session: only its queue of dealt material is used."""
    client = object.__new__(DealtClient)
    client.schedules, client.dealt, client.recording = OrderedDict(), None, None
    client.awaited = None
    client.broken = False
    return client


def test_a_party_reads_no_validation_setting_on_each_attribute_of_a_tensor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """CrypTen's hook reads `cfg.debug.validation_mode` (through omegaconf) on every
    attribute of an encrypted tensor; a party drops it, and refuses validation mode."""
    crypten = load_crypten()
    debug = crypten.debug  # the hook reads this module's `cfg`

    hooked = shim.CrypTensor.__dict__["__getattribute__"]
    monkeypatch.setattr(shim.CrypTensor, "__getattribute__", hooked)  # restored after

    class Watched:
        reads = 0

        @property
        def debug(self) -> types.SimpleNamespace:
            Watched.reads += 1
            return types.SimpleNamespace(validation_mode=False)

    monkeypatch.setattr(debug, "cfg", Watched())
    crypten.init()
    try:
        shared = crypten.cryptensor(torch.tensor([1.0, 2.0]))
        shared.get_plain_text()
        assert Watched.reads > 0  # CrypTen as shipped
        with crypten.cfg.temp_override({"debug.validation_mode": True}), \
                pytest.raises(PetError, match="validation mode"):
            shim.unvalidated()
        shim.unvalidated()
        Watched.reads = 0
        assert torch.allclose((shared + shared).get_plain_text(), torch.tensor([2.0, 4.0]))
        assert Watched.reads == 0
    finally:
        crypten.uninit()
