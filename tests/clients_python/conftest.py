"""Harness for the Python client's tests: the real recurd binary with a tiny
generated model, started by tests/server/conftest.py's Server (loaded here
under another module name), and recur_client from clients/python/."""
import gc
import importlib.util
import os
import sys
import warnings

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLIENT_DIR = os.path.join(ROOT, "clients", "python")
sys.path.insert(0, CLIENT_DIR)

_spec = importlib.util.spec_from_file_location(
    "recurd_server_harness", os.path.join(ROOT, "tests", "server", "conftest.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)
Server = harness.Server
make_model = harness.make_model

import recur_client  # noqa: E402

TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom."
MORE = " It was the epoch of belief, it was the epoch of incredulity."


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "a": make_model(str(d / "model-a"), seed=1),
        "b": make_model(str(d / "model-b"), seed=2),
    }


@pytest.fixture(scope="session")
def srv(models, tmp_path_factory):
    """One server for the whole run, with named snapshots enabled."""
    snaps = tmp_path_factory.mktemp("snapshots")
    s = Server(models["a"], "--snapshot-dir", str(snaps), "--quiet")
    yield s
    stop(s)


def stop(s):
    """Stop a Server and close its stderr pipe (the harness leaves it open)."""
    rc = s.stop()
    s.p.stderr.close()
    assert rc == 0, "\n".join(s.log()[-20:])


@pytest.fixture(autouse=True)
def no_resource_warnings():
    """Every test fails if the client left a socket or file unclosed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, leaks


@pytest.fixture
def client(srv, monkeypatch):
    monkeypatch.delenv("RECURD_API_KEY", raising=False)
    return recur_client.Client(srv.base, timeout=60)
