"""Move a directory through the device tool's limits (<= 8 files back per call, each
<= 16 MB): tar it, split the tar into parts, write a manifest with SHA-256s.

  device:  pack(src_dir, out_dir, "call1")  ->  call1.tar.part00.., call1.manifest.json
  local:   python3 train/pack.py unpack --from FILES_AT --name call1 --to .data/call1
"""
import argparse
import hashlib
import json
import os
import sys
import tarfile
import tempfile

PART = 15 * 2 ** 20


def _sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def pack(src_dir, out_dir, name, part_bytes=PART, max_parts=5):
    """Tar src_dir's contents, split into out_dir/name.tar.partNN, then write
    out_dir/name.manifest.json (last, so a manifest always describes complete parts)."""
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".tar")
    os.close(fd)
    try:
        files = []
        with tarfile.open(tmp, "w") as tf:
            for root, _, fnames in sorted(os.walk(src_dir)):
                for fn in sorted(fnames):
                    p = os.path.join(root, fn)
                    rel = os.path.relpath(p, src_dir)
                    tf.add(p, arcname=rel)
                    files.append({"path": rel, "bytes": os.path.getsize(p)})
        total = os.path.getsize(tmp)
        n_parts = max(1, -(-total // part_bytes))
        if n_parts > max_parts:
            part_bytes = -(-total // max_parts)
            if part_bytes > 16 * 10 ** 6 - 4096:
                raise RuntimeError(f"{total} bytes do not fit {max_parts} parts under 16 MB")
            n_parts = max_parts
        man_path = os.path.join(out_dir, name + ".manifest.json")
        if os.path.exists(man_path):
            os.remove(man_path)
        parts = []
        with open(tmp, "rb") as f:
            for i in range(n_parts):
                data = f.read(part_bytes)
                pn = f"{name}.tar.part{i:02d}"
                with open(os.path.join(out_dir, pn + ".tmp"), "wb") as g:
                    g.write(data)
                os.replace(os.path.join(out_dir, pn + ".tmp"), os.path.join(out_dir, pn))
                parts.append({"name": pn, "bytes": len(data),
                              "sha256": hashlib.sha256(data).hexdigest()})
        for fn in os.listdir(out_dir):  # parts left from an earlier, larger pack
            if fn.startswith(name + ".tar.part") and fn not in {p["name"] for p in parts}:
                os.remove(os.path.join(out_dir, fn))
        man = {"name": name, "tar_bytes": total, "tar_sha256": _sha(tmp), "parts": parts,
               "files": files}
        with open(man_path + ".tmp", "w") as g:
            json.dump(man, g, indent=1)
        os.replace(man_path + ".tmp", man_path)
        return man
    finally:
        os.remove(tmp)


def unpack(src, name, dest):
    with open(os.path.join(src, name + ".manifest.json")) as f:
        man = json.load(f)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(suffix=".tar")
    os.close(fd)
    try:
        with open(tmp, "wb") as out:
            for p in man["parts"]:
                with open(os.path.join(src, p["name"]), "rb") as f:
                    data = f.read()
                if hashlib.sha256(data).hexdigest() != p["sha256"]:
                    raise SystemExit(f"{p['name']}: sha256 mismatch")
                h.update(data)
                out.write(data)
        if h.hexdigest() != man["tar_sha256"]:
            raise SystemExit("tar sha256 mismatch")
        os.makedirs(dest, exist_ok=True)
        with tarfile.open(tmp) as tf:
            for m in tf.getmembers():
                if m.name.startswith("/") or ".." in m.name.split("/") or not (m.isfile() or m.isdir()):
                    raise SystemExit(f"refusing tar member {m.name}")
            tf.extractall(dest)
    finally:
        os.remove(tmp)
    for fi in man["files"]:
        print(f"  {fi['bytes']:>10}  {os.path.join(dest, fi['path'])}")
    return man


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("unpack")
    u.add_argument("--from", dest="src", required=True, help="folder with NAME.manifest.json")
    u.add_argument("--name", required=True)
    u.add_argument("--to", required=True)
    a = ap.parse_args(argv)
    unpack(a.src, a.name, a.to)


if __name__ == "__main__":
    sys.exit(main())
