"""WebDataset tars, one sample at a time: the members that share a key, in tar order."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def split_name(name: str) -> tuple[str, str]:
    """WebDataset's key/extension split: the key runs up to the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext


def iter_samples(stream) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of each sample of a tar read front to back."""
    key, members = None, {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            member_key, ext = split_name(member.name)
            if member_key != key and members:
                yield key, members
                members = {}
            key = member_key
            members[ext] = tar.extractfile(member).read()
    if members:
        yield key, members


def image_of(members: dict[str, bytes]) -> tuple[str | None, bytes | None]:
    for ext in IMAGE_EXTENSIONS:
        if ext in members:
            return ext, members[ext]
    return None, None


def metadata_of(members: dict[str, bytes]) -> dict:
    """The sample's KEY.json (img2dataset writes url, uid, caption, ...), {} when absent or
    unreadable."""
    try:
        value = json.loads(members.get("json", b"{}"))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def meta_text(meta: dict, field: str) -> str | None:
    """A KEY.json field as text (img2dataset writes uids as strings, other tools may not)."""
    value = meta.get(field)
    return None if value is None else str(value)


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # byte-identical reruns
    tar.addfile(info, io.BytesIO(data))
