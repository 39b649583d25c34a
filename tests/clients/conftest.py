"""Black-box tests of the recur client against the real server: the
server harness (Server, make_model, Client) is tests/server/conftest.py's,
imported. RECUR_BIN names the client (CTest sets it), else build/clients/recur."""
import importlib.util
import os
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
_spec = importlib.util.spec_from_file_location(
    "server_harness", os.path.join(ROOT, "tests", "server", "conftest.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)
Client, Server, make_model, error_of = (harness.Client, harness.Server, harness.make_model,
                                        harness.error_of)

RECUR = os.environ.get("RECUR_BIN", os.path.join(ROOT, "build", "clients", "recur"))


def recur(*args, url=None, key=None, timeout=120, stdin=None, env=None):
    """Run recur; returns CompletedProcess with text stdout/stderr."""
    if not os.path.exists(RECUR):
        pytest.skip(f"recur binary not found at {RECUR} (set RECUR_BIN)")
    e = dict(os.environ)
    for k in ("RECUR_URL", "RECURD_URL", "RECUR_API_KEY", "RECURD_API_KEY"):
        e.pop(k, None)
    e.update(env or {})
    cmd = [RECUR, *map(str, args)]
    if url:
        cmd += ["--url", url]
    if key:
        cmd += ["--api-key", key]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=stdin,
                          env=e)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return make_model(str(tmp_path_factory.mktemp("models") / "tiny"), seed=1)


@pytest.fixture(scope="module")
def srv(tiny):
    s = Server(tiny)
    yield s
    assert s.stop() == 0, "\n".join(s.log()[-20:])


@pytest.fixture
def c(srv):
    return Client(srv)
