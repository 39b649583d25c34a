"""Issue 12, operations: the deploy files (Dockerfile pinned, Kubernetes
manifest admissible under PodSecurity "restricted"), `cmake --install`,
the thread count under CPU affinity, and the metrics an operator expects."""
import os
import re
import shutil
import subprocess
import tempfile

import pytest
import yaml

from conftest import BIN, ROOT, Client, Server, make_model

DOCKERFILE = os.path.join(ROOT, "Dockerfile")
K8S = os.path.join(ROOT, "deploy", "kubernetes.yaml")


# ---- deploy files -----------------------------------------------------------

def test_dockerfile_base_images_pinned():
    """Every FROM names a base image by digest or by a point-release tag
    (debian:12.N[-slim]), never a moving tag such as debian:12 or latest."""
    with open(DOCKERFILE) as f:
        froms = re.findall(r"^FROM\s+(\S+)", f.read(), re.M)
    assert len(froms) >= 2, froms
    versions = set()
    for image in froms:
        if "@sha256:" in image:
            continue
        m = re.fullmatch(r"debian:(\d+\.\d+)(-slim)?", image)
        assert m, f"{image}: not pinned to a point release or digest"
        versions.add(m.group(1))
    assert len(versions) <= 1, f"build and run stages differ: {versions}"


def _pod_spec():
    with open(K8S) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    return dep["spec"]["template"]["spec"]


def test_kubernetes_manifest_pod_security_restricted():
    """The checks of the PodSecurity "restricted" profile (Kubernetes
    pod-security-standards) that a manifest can fail, pod and container."""
    pod = _pod_spec()
    psc = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(flag), flag
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        assert kinds <= {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                          "persistentVolumeClaim", "projected", "secret"}, v
    ctrs = pod["containers"] + pod.get("initContainers", [])
    assert ctrs
    for c in ctrs:
        sc = c.get("securityContext", {})
        name = c["name"]
        # runAsNonRoot: the container's, else the pod's, must be true
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, name
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        assert uid is None or uid != 0, name
        assert sc.get("allowPrivilegeEscalation") is False, name
        assert not sc.get("privileged"), name
        caps = sc.get("capabilities", {})
        assert [x.upper() for x in caps.get("drop", [])] == ["ALL"], name
        assert set(caps.get("add", [])) <= {"NET_BIND_SERVICE"}, name
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
        assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), name
        for p in c.get("ports", []):
            assert "hostPort" not in p, name


# ---- install ----------------------------------------------------------------

def test_cmake_install_puts_both_binaries_on_path(tmp_path):
    """cmake --install into a fresh prefix gives prefix/bin/recurd and
    prefix/bin/recur, and both run from there (no build-tree paths)."""
    build = os.path.dirname(os.path.dirname(os.path.abspath(BIN)))
    assert os.path.exists(os.path.join(build, "CMakeCache.txt")), \
        f"{BIN} is not in a CMake build tree"
    prefix = tmp_path / "prefix"
    subprocess.run(["cmake", "--install", build, "--prefix", str(prefix)], check=True,
                   capture_output=True, timeout=120)
    env = dict(os.environ, PATH=f"{prefix}/bin:/usr/bin:/bin")
    v = subprocess.run(["recurd", "version"], env=env, capture_output=True, text=True,
                       timeout=30, cwd=tmp_path)
    assert v.returncode == 0 and v.stdout.startswith("recurd "), v
    assert shutil.which("recurd", path=env["PATH"]) == str(prefix / "bin" / "recurd")
    h = subprocess.run(["recur", "--help"], env=env, capture_output=True, text=True,
                       timeout=30, cwd=tmp_path)
    assert h.returncode == 0 and "usage: recur" in h.stdout, h
    assert shutil.which("recur", path=env["PATH"]) == str(prefix / "bin" / "recur")


# ---- threads ----------------------------------------------------------------

def _pool_threads(pid):
    """Names of the server's threads (from /proc), counted by name."""
    names = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                n = f.read().strip()
        except OSError:
            continue
        names[n] = names.get(n, 0) + 1
    return names


def _metric(text, name):
    m = re.search(r"^" + re.escape(name) + r" (\S+)$", text, re.M)
    assert m, f"{name} missing"
    return float(m.group(1))


@pytest.mark.skipif(not shutil.which("taskset"), reason="taskset (util-linux) not installed")
def test_threads_auto_follows_affinity(models):
    """--threads 0 under `taskset -c 0`: one compute thread (no pool
    workers), and OpenBLAS told to use one too. Only the mask taskset sets
    is assumed, never the host's core count."""
    import conftest
    real = conftest.BIN
    wrapper = os.path.join(tempfile.mkdtemp(), "recurd-cpu0")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexec taskset -c 0 {real} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    conftest.BIN = wrapper
    try:
        # no OPENBLAS_NUM_THREADS: recurd decides BLAS's count too
        s = Server(models["a"], "--threads", "0",
                   env={"OPENBLAS_NUM_THREADS": "", "OMP_NUM_THREADS": ""})
    finally:
        conftest.BIN = real
    try:
        line = next(l for l in s.log() if " loaded: " in l)
        print("recurd says:", line)
        assert re.search(r"\bthreads=1\b", line), line
        assert re.search(r"\bblas_threads=1\b", line), line
        names = _pool_threads(s.p.pid)
        print("threads by name:", names)
        assert names.get("recur-pool", 0) == 0, names
        text = Client(s).get("/metrics").text
        assert _metric(text, 'recurd_threads{kind="compute"}') == 1
        assert _metric(text, 'recurd_threads{kind="blas"}') == 1
    finally:
        assert s.stop() == 0


def test_threads_explicit_wins_and_blas_follows(models):
    """--threads 3 is taken as asked (pool of 3 with the compute thread),
    and OpenBLAS follows it unless OPENBLAS_NUM_THREADS says otherwise."""
    s = Server(models["a"], "--threads", "3",
               env={"OPENBLAS_NUM_THREADS": "", "OMP_NUM_THREADS": ""})
    try:
        line = next(l for l in s.log() if " loaded: " in l)
        assert re.search(r"\bthreads=3\b", line), line
        assert re.search(r"\bblas_threads=3\b", line), line
        assert _pool_threads(s.p.pid).get("recur-pool", 0) == 2
    finally:
        assert s.stop() == 0
    s = Server(models["a"], "--threads", "3", env={"OPENBLAS_NUM_THREADS": "1"})
    try:
        line = next(l for l in s.log() if " loaded: " in l)
        assert re.search(r"\bblas_threads=1\b", line), line
    finally:
        assert s.stop() == 0
