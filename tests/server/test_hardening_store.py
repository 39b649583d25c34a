"""Issue 12, item 7: files that are not snapshots in the snapshot and state
directories. A FIFO planted under a snapshot's name used to block the libuv
worker that opened it (open(2) of a FIFO waits for a writer), so that saves
hung and SIGTERM never exited; a directory under a snapshot's name gave 500s.
Now every file is opened O_NONBLOCK|O_NOFOLLOW and refused unless fstat says
it is a regular file, and nothing that is not one is ever removed or
replaced.
"""
import os
import signal
import time

import pytest

from conftest import Client, Control, Server, error_of

TEXT = "A stream of text for the snapshot directory tests. " * 4
# every request here must be answered well within this (a blocked worker
# never answers)
PROMPT = 10


@pytest.fixture
def planted(models, tmp_path):
    """A server with --snapshot-dir holding a FIFO and a directory under
    snapshot names, and a real snapshot beside them."""
    d = tmp_path / "snaps"
    d.mkdir()
    os.mkfifo(d / "fifo")
    (d / "dir").mkdir()
    srv = Server(models["a"], "--snapshot-dir", str(d))
    yield srv, d
    if srv.alive():
        srv.stop()


def stop_promptly(srv):
    t = time.time()
    rc = srv.stop()
    assert rc == 0, "\n".join(srv.log()[-20:])
    assert time.time() - t < PROMPT, "SIGTERM took %.1f s" % (time.time() - t)


def test_fifo_and_directory_are_not_snapshots(planted):
    srv, d = planted
    c = Client(srv)
    sid = c.session(TEXT)
    c.ok(c.post(f"/v1/sessions/{sid}/save", {"name": "real"}), 201)
    for name in ("fifo", "dir"):
        # read: not a snapshot (404), at once, and the worker is free after
        e = error_of(c.get(f"/v1/snapshots/{name}", timeout=PROMPT), 404, "not_found")
        assert name in e["message"]
        error_of(c.post("/v1/sessions", {"snapshot": name}, timeout=PROMPT), 404, "not_found")
        # delete: never removes what is not a snapshot
        error_of(c.req("DELETE", f"/v1/snapshots/{name}", timeout=PROMPT), 404, "not_found")
        # save over it: a conflict, with or without overwrite; nothing replaced
        for overwrite in (False, True):
            r = c.post(f"/v1/sessions/{sid}/save", {"name": name, "overwrite": overwrite},
                       timeout=PROMPT)
            error_of(r, 409, "conflict")
    assert (d / "dir").is_dir() and os.path.exists(d / "fifo")
    assert not (d / "fifo").is_file()
    # the list holds the real snapshot only
    names = [s["name"] for s in c.ok(c.get("/v1/snapshots"))["data"]]
    assert names == ["real"]
    # the real one still works, and the workers are all free
    c.ok(c.post("/v1/sessions", {"snapshot": "real"}), 201)
    Control(c).check()
    stop_promptly(srv)


def test_fifo_swapped_in_for_a_snapshot(planted):
    """A snapshot that became a FIFO after it was listed (or between two
    requests) is refused, not waited on."""
    srv, d = planted
    c = Client(srv)
    sid = c.session(TEXT)
    c.ok(c.post(f"/v1/sessions/{sid}/save", {"name": "swap"}), 201)
    os.unlink(d / "swap")
    os.mkfifo(d / "swap")
    error_of(c.get("/v1/snapshots/swap", timeout=PROMPT), 404)
    error_of(c.post("/v1/sessions", {"snapshot": "swap"}, timeout=PROMPT), 404)
    stop_promptly(srv)


def test_fifo_in_the_state_dir(models, tmp_path):
    """--state-dir: a FIFO under a spill file's name is skipped at start-up,
    and a spilled session whose file became a FIFO fails its restore (500)
    instead of blocking a worker; shutdown still persists and exits 0."""
    d = tmp_path / "states"
    d.mkdir()
    os.mkfifo(d / ("0" * 32 + "." + "0" * 16 + ".state"))
    probe = Server(models["a"])
    size = Client(probe).ok(Client(probe).get("/v1/models"))["data"][0]["state_bytes"]
    assert probe.stop() == 0
    srv = Server(models["a"], "--state-dir", str(d), "--state-memory", 4 * size)
    try:
        c = Client(srv)
        assert c.ok(c.get("/v1/sessions"))["data"] == []
        ids = [c.session(TEXT) for _ in range(6)]  # past the budget: some spill
        deadline = time.time() + PROMPT
        spilled = []
        while time.time() < deadline and not spilled:
            spilled = [s["id"] for s in c.ok(c.get("/v1/sessions"))["data"] if s["spilled"]]
            time.sleep(0.05)
        assert spilled, "nothing spilled"
        sid = spilled[0]
        (f,) = [n for n in os.listdir(d) if n.startswith(sid)]
        os.unlink(d / f)
        os.mkfifo(d / f)
        r = c.get(f"/v1/sessions/{sid}/state", timeout=PROMPT)
        error_of(r, 500)
        others = [i for i in ids if i != sid]
        for i in others:
            c.ok(c.get(f"/v1/sessions/{i}/state", timeout=PROMPT))
    finally:
        stop_promptly(srv)
