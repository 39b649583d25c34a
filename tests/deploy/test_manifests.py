"""The cluster's deployment files agree with each other (docs/cluster.md):
deploy/compose.yaml, deploy/kubernetes/*.yaml, deploy/*.Dockerfile, and the
Redis and HAProxy configs they carry. None of them can run on this machine
(no Docker, no cluster); what can be checked without running them is here.
(Their RECURD_* variables against the binary's options, their probes and the
PodSecurity "restricted" settings: tests/server/test_docs.py and
test_deploy_threads_and_metrics.py.)

    python3 tests/deploy/test_manifests.py --sync

copies deploy/redis.conf and deploy/haproxy.cfg into the Kubernetes
ConfigMaps after either file changed.
"""
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEPLOY = os.path.join(ROOT, "deploy")
K8S = os.path.join(DEPLOY, "kubernetes")
# (manifest, ConfigMap key, the file it must hold verbatim)
CONFIGMAPS = [("redis.yaml", "redis.conf", "redis.conf"),
              ("haproxy.yaml", "haproxy.cfg", "haproxy.cfg")]


def read(*parts):
    with open(os.path.join(*parts)) as f:
        return f.read()


def docs(name):
    return [d for d in yaml.safe_load_all(read(K8S, name)) if d]


def kind(name, k):
    return [d for d in docs(name) if d["kind"] == k]


def sync():
    """Rewrite each ConfigMap's literal block with its file's text."""
    for manifest, key, src in CONFIGMAPS:
        path = os.path.join(K8S, manifest)
        text = read(path)
        body = "".join("    " + l if l.strip() else "\n"
                       for l in read(DEPLOY, src).splitlines(keepends=True))
        pat = re.compile(r"(^  " + re.escape(key) + r": \|\n)(?:    .*\n|\n)*", re.M)
        assert pat.search(text), f"{manifest}: no '{key}: |' block"
        text = pat.sub(lambda m: m.group(1) + body, text, count=1)
        with open(path, "w") as f:
            f.write(text)


def test_configmaps_hold_the_files():
    for manifest, key, src in CONFIGMAPS:
        (cm,) = kind(manifest, "ConfigMap")
        assert cm["data"][key] == read(DEPLOY, src), \
            f"{manifest}'s {key} differs from deploy/{src}: python3 tests/deploy/test_manifests.py --sync"


def test_kubernetes_files_listed():
    k = yaml.safe_load(read(K8S, "kustomization.yaml"))
    assert sorted(k["resources"]) == ["haproxy.yaml", "recurd.yaml", "redis.yaml"]
    assert os.path.exists(os.path.join(K8S, "single.yaml"))


def _env(ctr):
    return {e["name"]: e.get("value") for e in ctr.get("env", [])}


def test_kubernetes_wiring():
    (sts,) = kind("recurd.yaml", "StatefulSet")
    (svc,) = kind("recurd.yaml", "Service")
    assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == svc["metadata"]["name"]
    pod = sts["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    env = {e["name"]: e for e in ctr["env"]}
    # the replica id is the pod's stable name
    assert env["RECURD_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "RECURD_STATE_DIR" not in env and ctr["command"][:3] == ["env", "-u", "RECURD_STATE_DIR"]
    # the store is the redis Service, on the port Redis listens on
    store = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", env["RECURD_STORE"]["value"])
    assert store, env["RECURD_STORE"]
    redis_svcs = {s["metadata"]["name"]: s for s in kind("redis.yaml", "Service")}
    assert store.group(1) in redis_svcs
    assert redis_svcs[store.group(1)]["spec"]["ports"][0]["port"] == int(store.group(2)) == 6379
    # HAProxy's slots are the StatefulSet's pods by DNS name, in order, and
    # there are at least as many slots as replicas
    (dep,) = kind("haproxy.yaml", "Deployment")
    hctr = dep["spec"]["template"]["spec"]["containers"][0]
    henv = _env(hctr)
    slots = sorted((int(k.split("_")[1]), v) for k, v in henv.items() if k.startswith("REPLICA_"))
    assert [n for n, _ in slots] == list(range(1, 9))
    port = ctr["ports"][0]["containerPort"]
    for n, addr in slots:
        assert addr == f"{sts['metadata']['name']}-{n - 1}.{svc['metadata']['name']}" \
                       f".$(POD_NAMESPACE).svc.cluster.local:{port}", addr
    assert sts["spec"]["replicas"] <= len(slots)
    # Redis: the data directory is the claim's mount, the config the ConfigMap's
    (rsts,) = kind("redis.yaml", "StatefulSet")
    rpod = rsts["spec"]["template"]["spec"]
    (rctr,) = rpod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in rctr["volumeMounts"]}
    cmd = rctr["command"]
    assert cmd[cmd.index("--dir") + 1] == mounts["data"]
    assert cmd[1] == mounts["config"] + "/redis.conf"
    assert rsts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert "/etc/recurd/haproxy.cfg" in read(DEPLOY, "haproxy.Dockerfile")
    assert [m["mountPath"] for m in hctr["volumeMounts"]] == ["/etc/recurd"]
    # every PodDisruptionBudget selects a workload of these files
    labels = [w["spec"]["selector"]["matchLabels"] for f in ("recurd.yaml", "redis.yaml", "haproxy.yaml")
              for w in docs(f) if w["kind"] in ("StatefulSet", "Deployment")]
    pdbs = [p for f in ("recurd.yaml", "redis.yaml", "haproxy.yaml") for p in kind(f, "PodDisruptionBudget")]
    assert len(pdbs) == 3 and all(p["spec"]["selector"]["matchLabels"] in labels for p in pdbs)


def test_kubernetes_uids_match_images():
    """Each pod runs as the uid its image's Dockerfile gives its user."""
    for manifest, dockerfile in (("redis.yaml", "redis.Dockerfile"),
                                 ("haproxy.yaml", "haproxy.Dockerfile")):
        uid = int(re.search(r"usermod --uid (\d+)", read(DEPLOY, dockerfile)).group(1))
        assert re.search(rf"^USER {uid}:", read(DEPLOY, dockerfile), re.M), dockerfile
        (w,) = [d for d in docs(manifest) if d["kind"] in ("StatefulSet", "Deployment")]
        assert w["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid, manifest
    uid = int(re.search(r"--uid (\d+)", read(ROOT, "Dockerfile")).group(1))
    (sts,) = kind("recurd.yaml", "StatefulSet")
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid


def test_images_pinned_like_the_main_one():
    main = set(re.findall(r"^FROM\s+debian:(\S+?)(?:-slim)?(?:\s|$)", read(ROOT, "Dockerfile"), re.M))
    assert len(main) == 1, main
    for f in ("redis.Dockerfile", "haproxy.Dockerfile"):
        froms = re.findall(r"^FROM\s+(\S+)", read(DEPLOY, f), re.M)
        assert froms == [f"debian:{next(iter(main))}-slim"], (f, froms)


def test_compose_wiring():
    c = yaml.safe_load(read(DEPLOY, "compose.yaml"))
    svcs = c["services"]
    replicas = sorted(n for n in svcs if n.startswith("recurd-"))
    assert len(replicas) == 3
    ids = [svcs[n]["environment"]["RECURD_REPLICA_ID"] for n in replicas]
    assert len(set(ids)) == 3
    hp = svcs["haproxy"]["environment"]
    assert sorted(v for k, v in hp.items() if k.startswith("REPLICA_")) == \
        sorted(f"{n}:{svcs[n]['environment']['RECURD_PORT']}" for n in replicas)
    for n in replicas:
        s, env = svcs[n], svcs[n]["environment"]
        assert env["RECURD_STORE"] == "redis://redis:6379/0"
        assert env["RECURD_HOST"] == "0.0.0.0"
        assert "RECURD_STATE_DIR" not in env and s["entrypoint"][:3] == ["env", "-u", "RECURD_STATE_DIR"]
        assert int(s["stop_grace_period"].rstrip("s")) > int(env["RECURD_DRAIN_TIMEOUT"])
        assert "/health" in " ".join(s["healthcheck"]["test"])
        assert s["depends_on"]["redis"]["condition"] == "service_healthy"
    assert svcs["redis"]["volumes"] == ["redis-data:/data"] and "redis-data" in c["volumes"]
    assert "--dir\", \"/data\"" in read(DEPLOY, "redis.Dockerfile")
    # only HAProxy is published: Redis has no password
    assert [n for n in svcs if svcs[n].get("ports")] == ["haproxy"]


def test_redis_conf_durable():
    conf = dict(l.split(None, 1) for l in read(DEPLOY, "redis.conf").splitlines()
                if l.strip() and not l.startswith("#"))
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "always"
    assert conf["aof-use-rdb-preamble"] == "yes" and conf["no-appendfsync-on-rewrite"] == "no"
    assert conf["maxmemory-policy"] == "noeviction"
    assert "dir" not in conf  # from the command line (the file says why)


if __name__ == "__main__":
    if sys.argv[1:] == ["--sync"]:
        sync()
    else:
        sys.exit("usage: test_manifests.py --sync")
