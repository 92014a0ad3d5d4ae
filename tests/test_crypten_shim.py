"""CrypTen installs by the project's route and imports through pet's shim."""

import torch

from pet.crypten_shim import load_crypten


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
