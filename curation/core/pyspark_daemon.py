"""Spark's Python daemon (pyspark.daemon), importing pyspark with its bytecode cache.

Spark puts its own pyspark.zip and py4j zip first on its Python workers' path. zipimport keeps
no bytecode cache, so the daemon, and every worker it forks (each imports pyspark.worker after
the fork), compiled pyspark's sources again before its first task: ~0.6 CPU-s per local session
here, a fixed cost of every job. Where the Python that runs the workers has the very same pyspark
and py4j installed (pip's pyspark, as `make` installs it; each archive's version.py compared
byte for byte with the installed one), this daemon moves the archives to the end of sys.path and
then runs pyspark.daemon's own loop; with another version, or none installed, the path is left
as Spark made it. Local sessions run it through `spark.python.daemon.module`
(core/spark.py: `get_spark`).
"""

from __future__ import annotations

import os
import sys
import zipfile

# archive name prefix -> the package's version file inside it
_ARCHIVES = {"pyspark": "pyspark/version.py", "py4j": "py4j/version.py"}


def _archive_package(entry: str) -> str | None:
    name = os.path.basename(entry)
    if not name.endswith(".zip"):
        return None
    return next((p for p in _ARCHIVES if name.startswith(p)), None)


# modules the workers need from an installed package besides its version file: a partial
# package of the same version (a client-only build) keeps the archive first
_NEEDED = {"pyspark": ("pyspark/daemon.py", "pyspark/worker.py"), "py4j": ()}


def _installed_version_file(package: str, path: list[str]) -> bytes | None:
    for entry in path:
        if os.path.isdir(entry):
            candidate = os.path.join(entry, _ARCHIVES[package])
            if os.path.isfile(candidate):
                if not all(os.path.isfile(os.path.join(entry, f)) for f in _NEEDED[package]):
                    return None
                with open(candidate, "rb") as handle:
                    return handle.read()
    return None


def prefer_installed(path: list[str]) -> list[str]:
    """`path` with Spark's archives moved last, each one whose package is installed in the same
    version elsewhere on `path`; the others stay where they were."""
    archives = [e for e in path if _archive_package(e)]
    moved = []
    for archive in archives:
        package = _archive_package(archive)
        installed = _installed_version_file(package, [e for e in path if e not in archives])
        try:
            with zipfile.ZipFile(archive) as bundle:
                bundled = bundle.read(_ARCHIVES[package])
        except (OSError, KeyError, zipfile.BadZipFile):
            continue
        if installed is not None and installed == bundled:
            moved.append(archive)
    return [e for e in path if e not in moved] + moved


def main() -> None:
    sys.path[:] = prefer_installed(sys.path)
    from pyspark import daemon

    daemon.manager()


if __name__ == "__main__":
    main()
