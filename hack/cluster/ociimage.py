#!/usr/bin/env python3
"""Build a single-layer container image archive without a registry or base image.

The archive is both an OCI image layout (oci-layout, index.json, blobs/sha256/...)
and a docker-archive (manifest.json with RepoTags pointing at the same blobs), so
it loads with `ctr -n k8s.io images import`, `kind load image-archive` and
`docker load`.

The layer holds: the given files (a binary and the shared libraries it links,
found with ldd), /etc/passwd and /etc/group with root and nonroot (65532),
/tmp (1777), and the host's CA bundle. The output is reproducible: every entry
has mtime 0 and owner root unless said otherwise.
"""
import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def ldd_deps(path):
    """Absolute paths of the shared libraries (and loader) a dynamic ELF needs."""
    try:
        out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    except FileNotFoundError:
        sys.exit("ldd not found")
    deps = []
    for line in out.splitlines():
        line = line.strip()
        m = re.match(r"\S+ => (/\S+) \(0x", line) or re.match(r"(/\S+) \(0x", line)
        if m:
            deps.append(m.group(1))
    return deps


class Layer:
    def __init__(self):
        self.buf = io.BytesIO()
        self.entries = {}  # path -> TarInfo, data

    def _parents(self, path):
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.entries:
                self.add_dir("/" + d)

    def add_dir(self, path, mode=0o755):
        name = path.strip("/")
        if name in self.entries:
            return
        self._parents(path)
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode = tarfile.DIRTYPE, mode
        self.entries[name] = (ti, None)

    def add_bytes(self, path, data, mode=0o644, uid=0, gid=0):
        self._parents(path)
        ti = tarfile.TarInfo(path.strip("/"))
        ti.size, ti.mode, ti.uid, ti.gid = len(data), mode, uid, gid
        self.entries[ti.name] = (ti, data)

    def add_file(self, src, dst, mode=None):
        # Symlinked sources (e.g. libc.so.6 -> libc-2.36.so) are stored as regular files.
        with open(src, "rb") as f:
            data = f.read()
        self.add_bytes(dst, data, mode if mode is not None else (os.stat(src).st_mode & 0o777))

    def add_symlink(self, path, target):
        self._parents(path)
        ti = tarfile.TarInfo(path.strip("/"))
        ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, target, 0o777
        self.entries[ti.name] = (ti, None)

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for name in sorted(self.entries):
                ti, data = self.entries[name]
                ti.mtime = 0
                ti.uname = ti.gname = ""
                tf.addfile(ti, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def blob(blobs, data):
    digest = hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return "sha256:" + digest, len(data)


def normalize(ref):
    """Docker-style normalisation: qwp-worker:dev -> docker.io/library/qwp-worker:dev."""
    name, tag = ref, "latest"
    if "@" in ref:
        sys.exit("digest references are not supported: " + ref)
    if ":" in ref.rsplit("/", 1)[-1]:
        name, tag = ref.rsplit(":", 1)
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = "docker.io/library/" + name
    elif not ("." in first or ":" in first or first == "localhost"):
        name = "docker.io/" + name
    return name + ":" + tag, tag


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary", help="executable to put at /usr/local/bin/<name> (with its ldd libraries)")
    ap.add_argument("image", help="image reference, e.g. qwp-worker:dev or registry.k8s.io/pause:3.10")
    ap.add_argument("out", help="output archive (.tar)")
    ap.add_argument("--dest", help="path of the binary inside the image (default /usr/local/bin/<name>)")
    ap.add_argument("--entrypoint", help="JSON list (default: [dest])")
    ap.add_argument("--cmd", help="JSON list for Cmd")
    ap.add_argument("--user", default="65532:65532")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE (repeatable)")
    ap.add_argument("--add", action="append", default=[], help="SRC:DST extra file (its ldd libraries too)")
    ap.add_argument("--busybox", help="static busybox to install as /bin/busybox with applet links (a shell)")
    a = ap.parse_args()

    layer = Layer()
    for d in ("/bin", "/etc", "/usr/local/bin", "/lib", "/proc", "/sys", "/dev", "/var"):
        layer.add_dir(d)
    layer.add_dir("/tmp", 0o1777)
    layer.add_dir("/home/nonroot", 0o755)
    layer.entries["home/nonroot"][0].uid = layer.entries["home/nonroot"][0].gid = 65532
    layer.add_bytes("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                    b"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
                    b"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")
    layer.add_bytes("/etc/group", b"root:x:0:\nnonroot:x:65532:\nnobody:x:65534:\n")
    layer.add_bytes("/etc/nsswitch.conf", b"hosts: files dns\n")
    ca = "/etc/ssl/certs/ca-certificates.crt"
    if os.path.exists(ca):
        layer.add_file(ca, ca, 0o644)

    dest = a.dest or "/usr/local/bin/" + os.path.basename(a.binary)
    files = [(a.binary, dest)] + [tuple(x.split(":", 1)) for x in a.add]
    if a.busybox:
        files.append((a.busybox, "/bin/busybox"))
    for src, dst in files:
        src = os.path.realpath(src)
        layer.add_file(src, dst, 0o755 if os.access(src, os.X_OK) else 0o644)
        for lib in ldd_deps(src):
            layer.add_file(lib, lib, 0o755)
    if a.busybox:
        applets = subprocess.run([a.busybox, "--list-full"], capture_output=True, text=True).stdout.split()
        for ap_path in applets:
            if "/" + ap_path != "/bin/busybox" and ap_path.strip("/") not in layer.entries:
                layer.add_symlink("/" + ap_path, "/bin/busybox")
    layer_tar = layer.tar()
    blobs = {}
    layer_digest, layer_size = blob(blobs, layer_tar)
    entrypoint = json.loads(a.entrypoint) if a.entrypoint else [dest]
    env = ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "SSL_CERT_FILE=" + ca] + a.env
    config = {
        "architecture": ARCH,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"User": a.user, "Env": env, "Entrypoint": entrypoint, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "hack/cluster/build-image.sh"}],
    }
    if a.cmd:
        config["config"]["Cmd"] = json.loads(a.cmd)
    cfg_digest, cfg_size = blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest, "size": cfg_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    }
    man_digest, man_size = blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    full_ref, tag = normalize(a.image)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": man_digest, "size": man_size,
            "platform": {"architecture": ARCH, "os": "linux"},
            "annotations": {"io.containerd.image.name": full_ref, "org.opencontainers.image.ref.name": tag},
        }],
    }
    docker_manifest = [{
        "Config": "blobs/sha256/" + cfg_digest[7:],
        "RepoTags": [a.image if ":" in a.image.rsplit("/", 1)[-1] else a.image + ":latest"],
        "Layers": ["blobs/sha256/" + layer_digest[7:]],
    }]

    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        def put(name, data, mode=0o644):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), mode, 0
            out.addfile(ti, io.BytesIO(data))
        for d in ("blobs", "blobs/sha256"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
            out.addfile(ti)
        for digest in sorted(blobs):
            put("blobs/sha256/" + digest, blobs[digest])
        put("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        put("index.json", json.dumps(index, sort_keys=True).encode())
        put("manifest.json", json.dumps(docker_manifest).encode())
    os.replace(tmp, a.out)
    print(f"{full_ref} {man_digest} {a.out} ({layer_size // 1024} KiB layer)")


if __name__ == "__main__":
    main()
