"""Issue 12, state hardening: sessions, spill, the snapshot store and the
snapshot format under hostile or unlucky conditions.

Run these against the ASan build too (RECURD_BIN=build-asan/server/recurd):
the fork-under-spill test is a use-after-free that only ASan sees reliably.
"""
import os
import signal
import struct
import threading
import time

import pytest
import requests

from conftest import Client, Server, error_of, make_model

STATE = 20480  # bytes of one state of the default test model


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """A wider model: its ticks are slow enough for a spill to finish while
    a job queued behind one waits."""
    d = tmp_path_factory.mktemp("bigmodel")
    return make_model(str(d / "m"), seed=3, d_model=256, n_layer=4)


def state_bytes_of(c):
    return c.ok(c.get("/v1/models"))["data"][0]["state_bytes"]


def test_fork_never_spills_its_source(big_model, tmp_path):
    """POST /v1/sessions {"fork_of": A} with the budget near full must not
    spill A while the fork job reads it (ASan: heap-use-after-free in
    state_copy, freed by sessions_spilled)."""
    d = tmp_path / "states"
    probe = Server(big_model)
    size = state_bytes_of(Client(probe))
    assert probe.stop() == 0
    # C appending (its state), A idle, the fork's new state B: three states
    # fit; the third passes the 90% high-water mark, so creating B spills
    # the least recently used idle session, which is A unless A is held.
    srv = Server(big_model, "--state-dir", d, "--state-memory", 3 * size + size // 10,
                 "--batch-tokens", 4096)
    try:
        c = Client(srv)
        sc = c.session()
        text = "a long document keeps the compute thread busy. " * 4000
        forks = 0
        for rnd in range(6):
            sa = c.session("the source session's own history " * 3)
            ref = c.state(sa)
            time.sleep(0.05)  # A is now the least recently used idle one
            busy = threading.Thread(target=lambda: Client(srv).post(
                f"/v1/sessions/{sc}/append", {"text": text}, timeout=120))
            busy.start()
            time.sleep(0.2)
            r = c.post("/v1/sessions", {"fork_of": sa})
            busy.join(120)
            assert srv.alive(), "server died:\n" + "\n".join(srv.log()[-40:])
            assert r.status_code in (201, 409, 503), r.text
            if r.status_code == 201:
                forks += 1
                sb = r.json()["id"]
                assert c.state(sa) == ref
                # the fork holds A's history exactly (pos and floats)
                assert c.state(sb) == ref
                c.ok(c.req("DELETE", f"/v1/sessions/{sb}"))
            c.ok(c.req("DELETE", f"/v1/sessions/{sa}"))
        assert forks >= 3
    finally:
        rc = srv.stop()
        assert rc == 0, "\n".join(srv.log()[-40:])
