"""Shared test configuration: one torch thread (2-core CI machines), a local Hub server, deterministic."""
import os

# --- Hugging Face Hub: a local Hub-compatible server (tests/hub_server.py) instead of the real Hub. ---
# huggingface_hub, timm and datasets read these at import time, so they are set here, before any test
# module imports them. Nothing can reach the real Hub: the endpoint is 127.0.0.1 on a port picked now,
# served for the whole session by the `hub_server` fixture (autouse: a thread, started in milliseconds), so
# a test that touches the Hub by accident gets a quick 404 instead of minutes of connection retries.
import atexit  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HUB_PORT = _free_port()
HF_HOME_DIR = tempfile.mkdtemp(prefix="spl_losses_test_hf_home_")
atexit.register(shutil.rmtree, HF_HOME_DIR, True)
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_TOKEN"] = "dummy-test-token"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HOME"] = HF_HOME_DIR
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
              "HF_DATASETS_CACHE", "HUGGINGFACE_HUB_CACHE", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
    os.environ.pop(_name, None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def hub_server():
    """The local Hub-compatible server on ``HF_ENDPOINT``, running for the whole session."""
    from hub_server import HubServer

    server = HubServer(port=HUB_PORT).start()
    yield server
    server.close()


@pytest.fixture
def hub(hub_server):
    """The session's Hub server, checked after the test: no request may have hit an unknown route."""
    hub_server.unknown_routes.clear()
    yield hub_server
    unknown = list(hub_server.unknown_routes)
    hub_server.unknown_routes.clear()
    assert not unknown, f"the client called routes the test Hub server does not implement: {unknown}"

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """A fresh accelerate state around every test (runs of the recipe create Accelerators in-process)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    """A datasets cache folder shared by a module's tests (tiny builds are reused)."""
    return str(tmp_path_factory.mktemp("hf_datasets"))
