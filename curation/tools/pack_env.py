"""Pack the executors' Python environment: `make pack-env` -> dist/curation-env.tar.gz.

Spark executors run `./environment/bin/python` out of an archive shipped with
`--archives dist/curation-env.tar.gz#environment` (docs/operations.md). The archive has a virtual
environment's layout and holds exactly what executors import: the installed distributions that
this project's executor-side extras (`curate`; add `shards` for `export_shards.py
--distributor pyspark`) need, transitively, read from this
environment's metadata (no network, no torch), minus pyspark and py4j (Spark puts its own on the
executors' path), plus this checkout's `curation` package with `schemas/` as `curation/_schemas`.

A venv holds no interpreter: `bin/python*` link to the one the nodes must have at
`--python-prefix` (default: this interpreter's prefix; on a cluster, e.g. /usr). Every link is
checked before the archive is kept (`--check ARCHIVE` checks any archive, e.g. one from
venv-pack, whose `bin/python3.11 -> /usr/bin/python3.113.11` links are a known bug).

    python -m curation.tools.pack_env                          # dist/curation-env.tar.gz
    python -m curation.tools.pack_env --python-prefix /usr --output /tmp/env.tar.gz
    python -m curation.tools.pack_env --check some-env.tar.gz
"""

from __future__ import annotations

import argparse
import io
import os
import posixpath
import re
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

from curation.core.jobs import PackError, run_job

PROJECT = "metaclip-pipeline"
EXTRAS = ("curate",)  # + shards for `export_shards.py --distributor pyspark`
NOT_SHIPPED = {"pyspark", "py4j"}  # Spark ships its own to every executor
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # curation/, every subpackage of it
SCHEMAS_DIR = PACKAGE_DIR.parent / "schemas"


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def required_distributions(extras=EXTRAS) -> list[metadata.Distribution]:
    """The installed distributions the project's core + `extras` requirements pull in."""
    env = default_environment()
    todo = [(PROJECT, tuple(extras))]
    found: dict[str, metadata.Distribution] = {}
    seen = set()
    while todo:
        name, wanted = todo.pop()
        if (_key(name), wanted) in seen:
            continue
        seen.add((_key(name), wanted))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise PackError(
                f"{name} is required but not installed here: install '.[{','.join(EXTRAS)}]'"
            ) from None
        if _key(name) != PROJECT:
            found[_key(name)] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if _key(req.name) in NOT_SHIPPED:
                continue
            markers = [{**env, "extra": e} for e in (*wanted, "")]
            if req.marker is None or any(req.marker.evaluate(m) for m in markers):
                todo.append((req.name, tuple(sorted(req.extras))))
    return sorted(found.values(), key=lambda d: _key(d.metadata["Name"]))


def _site_packages() -> str:
    return f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_link(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, 0
    tar.addfile(info)


def _python_links(prefix: str) -> dict[str, str]:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return {
        "bin/python": f"python{version}",
        "bin/python3": f"python{version}",
        f"bin/python{version}": posixpath.join(prefix, "bin", f"python{version}"),
    }


def pack(output: Path, python_prefix: str | None = None, extras=EXTRAS) -> dict:
    """Write the archive (through a temporary file, checked before it replaces `output`)."""
    prefix = python_prefix or sys.base_prefix
    site = _site_packages()
    dists = required_distributions(extras)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp.{os.getpid()}")
    files = 0
    try:
        # gzip level 1: a third of the size at little CPU (Spark unpacks .tar.gz with its links)
        with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
            for name, target in _python_links(prefix).items():
                _add_link(tar, name, target)
            version = ".".join(str(v) for v in sys.version_info[:3])
            cfg = f"home = {posixpath.join(prefix, 'bin')}\ninclude-system-site-packages = false\n"
            _add_bytes(tar, "pyvenv.cfg", f"{cfg}version = {version}\n".encode())
            for dist in dists:
                for path in dist.files or []:
                    if path.parts[0] == ".." or "__pycache__" in path.parts:
                        continue  # scripts under bin/ and caches: executors need neither
                    source = Path(dist.locate_file(path))
                    if source.is_file():
                        tar.add(source, f"{site}/{path.as_posix()}", recursive=False)
                        files += 1
            for source in sorted(PACKAGE_DIR.rglob("*")):
                if source.is_file() and "__pycache__" not in source.parts:
                    rel = source.relative_to(PACKAGE_DIR.parent).as_posix()
                    tar.add(source, f"{site}/{rel}", recursive=False)
                    files += 1
            for source in sorted(SCHEMAS_DIR.iterdir()):
                if source.is_file():
                    tar.add(source, f"{site}/curation/_schemas/{source.name}", recursive=False)
                    files += 1
        problems = check_archive(tmp, prefix)
        if problems:
            raise PackError(f"{output}: " + "; ".join(problems))
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "archive": str(output),
        "bytes": output.stat().st_size,
        "files": files,
        "distributions": len(dists),
        "python": posixpath.join(
            prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}"
        ),
    }


def check_archive(archive: Path, python_prefix: str | None = None) -> list[str]:
    """Problems with the archive's `bin/python*`: each must exist and its links must end at a
    file inside the archive or at an interpreter under `python_prefix` that exists here."""
    with tarfile.open(archive) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
    problems = []
    pythons = sorted(n for n in members if re.fullmatch(r"bin/python[0-9.]*", n))
    if "bin/python" not in members:
        problems.append("no bin/python in the archive")
    for name in pythons:
        path, hops = name, 0
        while path in members and members[path].issym() and hops < 10:
            target = members[path].linkname
            if target.startswith("/"):
                path = target
                break
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
            hops += 1
        if path.startswith("/"):
            inside_prefix = python_prefix is None or path.startswith(
                python_prefix.rstrip("/") + "/"
            )
            if not os.path.isfile(path) or not inside_prefix:
                problems.append(
                    f"broken link {name} -> {path} (no such interpreter"
                    + (f" under --python-prefix {python_prefix}" if python_prefix else "")
                    + ")"
                )
        elif path not in members or not members[path].isfile():
            problems.append(f"broken link {name} -> {path} (not in the archive)")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--output",
        default="dist/curation-env.tar.gz",
        help="the .tar.gz to write",
    )
    p.add_argument(
        "--python-prefix",
        help="where the nodes have the same Python version (bin/pythonX.Y under it); default: "
        f"this interpreter's prefix ({sys.base_prefix})",
    )
    p.add_argument(
        "--extras",
        default=",".join(EXTRAS),
        help="project extras whose requirements to ship (curate,shards for export_shards.py "
        "--distributor pyspark: img2dataset and OpenCV, ~400 MB more unpacked; add filter for "
        "filter_images.py: pdqhash, imagehash, nudenet, onnxruntime, dlib)",
    )
    p.add_argument("--check", metavar="ARCHIVE", help="only check an existing archive's links")
    args = p.parse_args(argv)

    def body() -> int:
        if args.check:
            problems = check_archive(Path(args.check), args.python_prefix)
            if problems:
                raise PackError(f"{args.check}: " + "; ".join(problems))
            print(f"{args.check}: bin/python links resolve")
            return 0
        started = time.perf_counter()
        try:
            info = pack(Path(args.output), args.python_prefix, tuple(args.extras.split(",")))
        except tarfile.TarError as error:
            raise PackError(f"{args.output}: {error}") from None
        seconds = time.perf_counter() - started
        print(
            f"wrote {info['archive']}: {info['bytes'] / 2**20:.0f} MiB, {info['files']} files "
            f"from {info['distributions']} distributions + curation, in {seconds:.0f}s; "
            f"executors run {info['python']} (the nodes need it there)"
        )
        return 0

    return run_job("pack_env", body)


if __name__ == "__main__":
    raise SystemExit(main())
