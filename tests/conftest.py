import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The unit tests use tiny models, for which torch's thread pool costs more
    than it gains (and on a shared 2-core machine, much more)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
