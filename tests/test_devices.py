"""Devices are normalised where they enter: two spellings of one device compare equal after `normalize`."""

from __future__ import annotations

import pytest
import torch

from flowergan.devices import normalize, pick_device


def test_the_two_spellings_of_one_device_differ_until_normalised(monkeypatch):
    assert torch.device("cuda") != torch.device("cuda", 0)  # the fault this guards against (issue 25, item 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # a bare "cuda" is the current GPU
    assert normalize("cuda") == normalize(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert normalize(torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert normalize("cpu:0") == normalize("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cpu", "cpu:0", torch.device("cpu", 0)])
def test_pick_device_spells_the_cpu_one_way(name):
    assert pick_device(name) == torch.device("cpu") and pick_device(name).index is None
