"""Fixtures every study test shares: one torch thread, and a private cache folder."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a busy 2-core machine two threads wait on each other (an
    OpenMP barrier behind another job) and a run takes ten times as long."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Unpacked Fashion-MNIST copies and checkpoints go to a temporary cache, not the
    user's; the fixture gives the checkpoint folder of the command line."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "captum_regularized" / "study"
