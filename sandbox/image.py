"""The docker sandbox's image, built locally from the Python environment that runs kernelwright.

No registry is needed: the image is a tarball of the files a worker uses given to `docker
import` (an image from scratch), at the same absolute paths as on this machine, so the interpreter, its prefix and every RPATH just work:

- the interpreter and its standard library (minus tests, IDLE, tkinter), and the virtual
  environment on top of it when there is one;
- the installed distributions a worker imports: torch and numpy with everything they require,
  and whatever else importing the worker's modules loads (triton where installed), each from
  its RECORD file;
- the shared libraries all of that loads (ldd), including those a fast-path build links
  (libstdc++, libgomp), and /bin/sh and a few tools;
- a passwd/group file and empty mount points.

No compiler: fast-path kernels are compiled by the supervisor and only loaded in the
container. kernelwright's own packages are not in the image either: the docker sandbox mounts
the supervisor's copy read-only, so worker and supervisor always speak the same protocol.
The tag is a hash of what went in (paths, sizes, modification times), so an unchanged
environment reuses its image.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata as md
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from sandbox.process import SandboxConfig

FORMAT = "1"
REPOSITORY = "kernelwright-sandbox"
MOUNT_POINTS = ("/kw/work", "/kw/sock", "/kw/app", "/tmp")
STDLIB_SKIP = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3/tests", "site-packages")
PACKAGE_SKIP = re.compile(r"^torch/(test/|bin/(?!torch_shm_manager$))")
_SO = re.compile(r"\.so(\.[0-9.]+)?$")


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    roots: tuple[str, ...] = ("torch", "numpy")  # distributions whose requirement closure goes in
    # and what these load: a container worker's warm imports and its entry point
    modules: tuple[str, ...] = (*SandboxConfig.warm_modules, "sandbox.jail.container")
    tools: tuple[str, ...] = ("sh", "sleep", "cat", "ls", "env")
    skip: tuple[str, ...] = ()  # distributions left out even so (e.g. triton on a CPU-only machine)
    repository: str = REPOSITORY


@dataclasses.dataclass(frozen=True)
class BuildInfo:
    tag: str
    size_bytes: int
    seconds: float
    reused: bool
    files: int


class Plan:
    """What goes into the image: arcname (absolute path) -> host path, link target or text."""

    def __init__(self) -> None:
        self.files: dict[str, Path] = {}
        self.links: dict[str, str] = {}
        self.texts: dict[str, str] = {}
        self.dirs: set[str] = set(MOUNT_POINTS)

    def add(self, path: str | Path) -> None:
        """Add a path as it is reached from /, keeping each symlink met on the way as a link."""
        parts = Path(os.path.abspath(path)).parts[1:]
        cur = Path("/")
        for i, part in enumerate(parts):
            nxt = cur / part
            if nxt.is_symlink():
                target = os.readlink(nxt)
                self.links[str(nxt)] = target
                rest = Path(os.path.normpath(cur / target), *parts[i + 1:])
                if str(rest) != str(nxt):
                    self.add(rest)
                return
            cur = nxt
        if cur.is_file():
            self.files[str(cur)] = cur
        elif cur.is_dir():
            self.dirs.add(str(cur))

    def add_tree(self, root: Path, skip: tuple[str, ...] = ()) -> None:
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel, d)) not in skip]
            self.add(dirpath)
            for name in filenames:
                p = Path(dirpath, name)
                if name.startswith("_tkinter"):  # Tk and X11 libraries: no GUI in a sandbox
                    continue
                if p.is_symlink() or p.is_file():
                    self.add(p)

    def key(self, spec: ImageSpec) -> str:
        h = hashlib.sha256(json.dumps([FORMAT, dataclasses.astuple(spec)]).encode())
        for arc in sorted(self.files):
            st = self.files[arc].stat()
            h.update(f"f {arc} {st.st_size} {st.st_mtime_ns} {st.st_mode & 0o111}\n".encode())
        for arc in sorted(self.links):
            h.update(f"l {arc} {self.links[arc]}\n".encode())
        for arc in sorted(self.texts):
            h.update(f"t {arc} {self.texts[arc]}\n".encode())
        for arc in sorted(self.dirs):
            h.update(f"d {arc}\n".encode())
        return h.hexdigest()[:16]

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wanted(marker: str) -> bool:
    """Does a requirement's environment marker hold here (extras never do)?"""
    if not marker.strip():
        return True
    if "extra" in marker:
        return False
    try:
        from packaging.markers import Marker
    except ImportError:  # no packaging: take the requirement
        return True
    try:
        return bool(Marker(marker).evaluate())
    except Exception:  # noqa: BLE001 - an odd marker: take the requirement
        return True


def _closure(roots: list[str]) -> dict[str, md.Distribution]:
    found: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if _norm(name) in found:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        found[_norm(name)] = dist
        for req in dist.requires or []:
            head, _, marker = req.partition(";")
            if not _wanted(marker):
                continue
            m = re.match(r"[A-Za-z0-9_.\-]+", head.strip())
            if m:
                todo.append(m.group(0))
    return found


def _loaded_distributions(modules: tuple[str, ...]) -> list[str]:
    """The distributions whose code importing `modules` loads, asked of a fresh interpreter."""
    code = (
        "import json, sys, importlib.metadata as md\n"
        "from sandbox.jail.startup import warm\n"
        f"warm({list(modules)!r})  # as the container's keeper does (sandbox/jail/startup.py)\n"
        "pd = md.packages_distributions()\n"
        "print(json.dumps(sorted({d for m in list(sys.modules) for d in pd.get(m.split('.')[0], [])})))\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [root, os.environ.get("PYTHONPATH", "")] if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"cannot import the worker's modules: {out.stderr.strip()[-300:]}")
    return [d for d in json.loads(out.stdout.strip().splitlines()[-1]) if _norm(d) != "kernelwright"]


def _ldd(paths: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(paths), 64):
        out = subprocess.run(["ldd", *paths[i:i + 64]], capture_output=True, text=True, timeout=300).stdout
        for line in out.splitlines():
            m = re.search(r"=>\s*(/\S+)\s*\(", line) or re.match(r"\s+(/\S+)\s*\(", line)
            if m:
                found.add(m.group(1))
    return found


def _fastpath_libraries() -> list[str]:
    """A tiny fast-path build, to learn what such libraries link (libstdc++, libgomp...)."""
    from sandbox.compiler import CompilerConfig, CompileSpec, build

    with tempfile.TemporaryDirectory() as d:
        res = build(CompileSpec('#include <vector>\nextern "C" int f(int n) { std::vector<int> v(n);\n'
                                "#pragma omp parallel for\nfor (int i = 0; i < n; ++i) v[i] = i;\nreturn v.back(); }\n"),
                    CompilerConfig(cache_dir=Path(d)))
        return sorted(_ldd([res.path])) if res.ok else []


def plan(spec: ImageSpec = ImageSpec()) -> Plan:
    p = Plan()
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base, prefix = Path(sys.base_prefix), Path(sys.prefix)
    p.add(sys.executable)
    p.add(Path(sysconfig.get_paths()["stdlib"]))
    p.add_tree(Path(sysconfig.get_paths()["stdlib"]), STDLIB_SKIP)
    for exe in (base / "bin").glob("python*"):
        p.add(exe)
    if prefix != base:  # a virtual environment on top of the base interpreter
        p.add(prefix / "pyvenv.cfg")
        for exe in (prefix / "bin").glob("python*"):
            p.add(exe)
    dists = _closure([*spec.roots, *_loaded_distributions(spec.modules)])
    for name, dist in dists.items():
        if name in {_norm(n) for n in spec.skip}:
            continue
        for f in dist.files or []:
            rel = str(f)
            if PACKAGE_SKIP.search(rel) or rel.startswith(".."):
                continue
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                p.add(path)
    for tool in spec.tools:
        for found in {shutil.which(tool), f"/bin/{tool}"}:
            if found and os.path.exists(found):
                p.add(found)
    objects = [a for a in p.files if _SO.search(a) or a.endswith(ver) or os.access(a, os.X_OK) and "/bin/" in a]
    for lib in sorted(_ldd(objects) | set(_fastpath_libraries())):
        p.add(lib)
    uid, gid = os.getuid(), os.getgid()
    users = "root:x:0:0:root:/kw/work:/bin/sh\n" + (f"kw:x:{uid}:{gid}:kw:/kw/work:/bin/sh\n" if uid else "")
    p.texts["/etc/passwd"] = users
    p.texts["/etc/group"] = "root:x:0:\n" + (f"kw:x:{gid}:\n" if gid else "")
    p.dirs |= {str(Path(a).parent) for a in [*p.texts]}
    return p


def _tarinfo(name: str, kind: bytes, mode: int, size: int = 0, mtime: float = 0.0) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.size, ti.mtime = kind, mode, size, int(mtime)
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def write_rootfs(p: Plan, out: Any) -> None:
    """The image's filesystem as one tar stream: directories, links, generated files, files."""
    dirs = set(p.dirs)
    for arc in [*p.files, *p.links, *p.texts, *p.dirs]:
        parent = Path(arc).parent
        while str(parent) != "/" and str(parent) not in p.links:
            dirs.add(str(parent))
            parent = parent.parent
    dirs -= set(p.links)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for arc in sorted(dirs):
            tar.addfile(_tarinfo(arc.lstrip("/"), tarfile.DIRTYPE, 0o1777 if arc == "/tmp" else 0o755))
        for arc in sorted(p.links):
            ti = _tarinfo(arc.lstrip("/"), tarfile.SYMTYPE, 0o777)
            ti.linkname = p.links[arc]
            tar.addfile(ti)
        for arc in sorted(p.texts):
            data = p.texts[arc].encode()
            tar.addfile(_tarinfo(arc.lstrip("/"), tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
        for arc in sorted(p.files):
            src = p.files[arc]
            with open(src, "rb") as f:
                st = os.fstat(f.fileno())
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                tar.addfile(_tarinfo(arc.lstrip("/"), tarfile.REGTYPE, mode, st.st_size, st.st_mtime), f)


def find_image(client: Any, tag: str) -> Any | None:
    import docker

    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def build_image(client: Any, spec: ImageSpec = ImageSpec(), tag: str | None = None,
                say: Callable[[str], None] = lambda s: None) -> BuildInfo:
    """Build (or find, when its inputs are unchanged) the sandbox image; returns its tag and size."""
    t0 = time.monotonic()
    p = plan(spec)
    key = p.key(spec)
    tag = tag or f"{spec.repository}:{key}"
    image = find_image(client, tag)
    if image is not None and image.labels.get("org.kernelwright.inputs") == key:
        return BuildInfo(tag, int(image.attrs.get("Size", 0)), time.monotonic() - t0, True, len(p.files))
    say(f"building {tag}: {len(p.files)} files, {p.size() / 2**20:.0f} MiB")
    repository, _, version = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "latest")
    changes = [f"LABEL org.kernelwright.inputs={key} org.kernelwright.format={FORMAT}",
               "ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8"]
    r, w = os.pipe()
    failed: list[BaseException] = []

    def produce() -> None:  # the tar is streamed to the daemon as it is written: no copy on disk
        try:
            with open(w, "wb") as out:
                write_rootfs(p, out)
        except BaseException as e:  # noqa: BLE001 - reported below; a cut stream fails the import
            failed.append(e)

    writer = threading.Thread(target=produce, daemon=True)
    writer.start()
    try:
        with open(r, "rb") as stream:
            answer = client.api.import_image_from_stream(stream, repository=repository, tag=version, changes=changes)
    except Exception as e:  # noqa: BLE001 - docker's APIError and the like: one line for the user
        raise RuntimeError(f"docker import failed: {str(e).strip().splitlines()[0][:300]}") from None
    finally:
        writer.join()
    if failed:
        raise RuntimeError(f"cannot write the image's files: {failed[0]}")
    image = find_image(client, tag)
    if image is None:
        raise RuntimeError(f"docker import did not create {tag}: {str(answer)[:300]}")
    return BuildInfo(tag, int(image.attrs.get("Size", 0)), time.monotonic() - t0, False, len(p.files))


def latest_tag(client: Any, repository: str = REPOSITORY) -> str | None:
    """The newest local image of the sandbox repository, if any."""
    images = sorted(client.images.list(name=repository), key=lambda i: i.attrs.get("Created", ""), reverse=True)
    for image in images:
        for t in image.tags:
            if t.startswith(repository + ":"):
                return t
    return None
