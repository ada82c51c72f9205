import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread():
    """The suite's problems are small: with 2 threads on a busy 2-core machine torch spends
    most of its time synchronising (measured ~50x slower), so every test runs single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
