"""WebDataset shards -> uint8 image batches, resumable mid-epoch in O(1), elastic across layouts.

Every (rank, worker) pair owns a *slot* that reads an infinite, deterministic sequence of shard
*visits* (`Schedule`):
  epoch mode      each pass shuffles the shard list with (seed, pass) and slot k visits shards
                  k, k+S, k+2S... (S = world_size * workers), so ranks never share a sample
                  within a pass; with fewer shards than slots every slot visits every shard and
                  keeps the samples whose index in the pass is k mod S (strided);
  resampled mode  visit v draws a shard from (seed, salt, slot, v), with replacement.
A seeded shuffle buffer follows (the n-th draw from it is a hash of (seed, slot, n); a sample
that has waited 2 x buffer-size draws leaves first, so the buffer only ever holds samples from the
last 3 x buffer-size read, i.e. from few shards). In epoch mode a draw picks only among the
buffered samples of the oldest pass in the buffer, so a slot's first N draws are exactly the N
samples of its first pass, each once, even with a buffer larger than the data (a pass's last
draws are then less shuffled); resampled mode has no passes to keep apart. Then the
worker decodes JPEGs (at a reduced DCT scale when they are much larger than the model's input),
pads them onto one uint8 canvas and picks each image's random-resized-crop box and flip;
`trainer.augment` cuts, resizes and normalises the batch on the device.

A batch carries its slot's state after it: the visit and sample offset the slot reads next, the
(visit, sample) references of what sits in the shuffle buffer, the number of samples drawn and
the drop counters. Resuming opens the shard at that visit, skips to the offset by tar headers
(no sample before it is read or decoded), and re-reads the few buffered samples by reference:
the cost does not grow with the samples seen. Worker ids are rotated so the DataLoader's
round-robin continues with the worker that was next; crops are seeded from each batch's stream
position, so a resume with the same layout sees bit-identical batches.

A resume with another world size or worker count (`elastic_slot_states`) hands the rest of each
old slot's pass (its current shard from the sample it had reached, then its unvisited shards) to
the new slots round-robin. No shard is repeated within the pass; the samples that were in the old
shuffle buffers are not seen until the next pass (the count is logged).
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
import posixpath
import random
import re
import sys
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from braceexpand import braceexpand
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from trainer import augment
from trainer.augment import Augmentation, colour_params, draw_colour

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
# what the loader's `dropped` counts, in samples: bad_shard is the samples an unreadable or
# truncated shard lost on each visit (exact when sizes.json gives the shard's size; an unreadable
# shard whose size is not known counts 1), not the number of shards or visits
DROP_REASONS = ("missing_image", "missing_text", "bad_image", "bad_shard", "not_a_pool_sample")
# open_clip's training crop (AugmentationCfg defaults) and torchvision's aspect-ratio range
CROP_SCALE = augment.CROP_SCALE
CROP_RATIO = augment.CROP_RATIO
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_META_RE = re.compile(r"__[^/]*__($|/)")


def expand_urls(spec: str) -> list[str]:
    """'dir/{00000..00009}.tar', several such specs joined by '::', or a local shard folder."""
    if Path(spec).is_dir():
        urls = sorted(str(p) for p in Path(spec).glob("*.tar"))
    else:
        urls = [u for part in spec.split("::") for u in braceexpand(part.strip()) if u]
    if not urls:
        raise ValueError(f"no shards in {spec!r}")
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).is_file()]
    if missing:
        raise ValueError(f"shard {missing[0]} not found ({len(missing)} of {len(urls)} missing)")
    return urls


def expand_sources(spec: str) -> list[list[str]]:
    """The shards of each '::'-joined source of `spec`, one list per source."""
    if Path(spec).is_dir():
        return [expand_urls(spec)]
    return [expand_urls(part) for part in spec.split("::") if part.strip()]


def parse_weights(text: str, sources: int) -> list[float]:
    """--train-data-weights 'W1::W2...': one positive number per source, normalised."""
    try:
        weights = [float(w) for w in text.split("::")]
    except ValueError:
        raise ValueError(f"--train-data-weights {text!r}: numbers joined by '::'") from None
    if len(weights) != sources:
        raise ValueError(
            f"--train-data-weights has {len(weights)} weights for {sources} '::'-joined sources"
        )
    if any(not (w > 0) or w == float("inf") for w in weights):
        raise ValueError(f"--train-data-weights {text!r}: every weight must be positive")
    total = sum(weights)
    return [w / total for w in weights]


def _is_remote(url: str) -> bool:
    """A URL read over the network (http(s), s3://, gs://...), not a local path, file:// or
    pipe:CMD."""
    return not url.startswith("pipe:") and "://" in url.removeprefix("file://")


def _read_json_next_to(url: str, name: str) -> dict | None:
    """The JSON file `name` in the shard's folder (local, or remote as `_open_shard` reads it),
    None when there is none."""
    if url.startswith("pipe:"):
        return None
    if _is_remote(url):
        from curation.core.uris import is_not_found, open_binary

        try:
            with open_binary(posixpath.join(posixpath.dirname(url), name)) as f:
                return json.load(f)
        except OSError as error:
            if is_not_found(error):
                return None
            raise
    path = Path(url.removeprefix("file://")).parent / name
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def count_samples(urls: list[str]) -> int:
    """Samples in these shards from sizes.json (per shard), else manifest.json (all shards);
    shards from several folders are counted folder by folder."""
    folders: dict[str, list[str]] = {}
    for url in urls:
        folders.setdefault(posixpath.dirname(url), []).append(url)
    if len(folders) > 1:
        return sum(count_samples(group) for group in folders.values())
    sizes = _read_json_next_to(urls[0], "sizes.json")
    if sizes is not None:
        missing = [u for u in urls if os.path.basename(u) not in sizes]
        if not missing:
            return sum(int(sizes[os.path.basename(u)]) for u in urls)
    manifest = _read_json_next_to(urls[0], "manifest.json")
    if manifest is not None and sizes is None:
        for key in ("total_samples", "num_samples", "samples"):
            if key in manifest:
                return int(manifest[key])
    raise ValueError(
        f"cannot tell how many samples {urls[0]} and siblings hold (no sizes.json or "
        "manifest.json covering them); pass --train-num-samples"
    )


def mix(*parts) -> int:
    """A 64-bit hash of ints and strings, the same in every process (no PYTHONHASHSEED)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


# -- reading shards ------------------------------------------------------------------------------


def _open_shard(url: str):
    """(file object, seekable) for a local path, file://, pipe:CMD, or a remote URL: http(s),
    the object stores pyarrow reaches by itself (s3://, gs://, hdfs://, abfs://: endpoint and
    credentials from their standard variables, as the curation jobs read them), else fsspec."""
    if url.startswith("pipe:"):
        import webdataset as wds

        return wds.gopen(url, "rb"), False
    if _is_remote(url):
        from curation.core.uris import open_binary

        return open_binary(url), False
    return open(url.removeprefix("file://"), "rb"), True


# A remote shard whose read fails mid-way (a dropped connection, a throttled object store) is
# opened again up to SHARD_READ_ATTEMPTS times, with exponential backoff from
# SHARD_RETRY_BACKOFF_S, and read on from the sample where it broke.
SHARD_READ_ATTEMPTS = 4
SHARD_RETRY_BACKOFF_S = 1.0


class _Progress:
    """How far a read of one shard got: its first `done` samples are complete (yielded, or
    passed over by header); `counted` is the counter the sample being read was counted in."""

    def __init__(self):
        self.done, self.counted = 0, None


def read_shard(
    url: str, want: Callable[[int], bool], counters: Counter, warned: set | None = None
) -> Iterator[tuple[int, dict]]:
    """(k, sample) for the k-th sample (a run of tar members with one key) where want(k).

    The other samples are skipped by their tar headers: on a local file their data is seeked
    over, on a stream it is read but never decoded. Returns the number of samples in the shard.

    A remote read that fails with an I/O error (not a missing file, not bad tar bytes) is
    retried (SHARD_READ_ATTEMPTS, counted as `shard_retries`) from the first sample it had
    not finished: the samples before it are passed over by header, neither yielded nor
    counted again. An unreadable or truncated shard ends early (its samples so far stay; the
    partial one is dropped), and so does a tar that ends cleanly before the count sizes.json
    gives it (cut at a header); `_count_lost` counts what this read lost. Its warning is printed
    once per url in `warned` (a stream's set: not again on every later visit), every time
    without one.
    """
    import time

    from curation.core.uris import is_transient

    attempts = SHARD_READ_ATTEMPTS if _is_remote(url) else 1
    progress = _Progress()
    for attempt in range(attempts):
        try:
            yield from _tar_samples(url, want, counters, progress)
            break
        except (OSError, EOFError, tarfile.TarError, ValueError) as exc:
            failure = repr(exc)
            # an I/O error, not bad tar bytes and not a missing shard (or an HTTP 4xx)
            transient = isinstance(exc, OSError) and is_transient(exc)
            if transient and attempt + 1 < attempts:
                counters["shard_retries"] += 1
                if progress.counted:  # the broken sample is read again, and counted then
                    counters[progress.counted] -= 1
                time.sleep(SHARD_RETRY_BACKOFF_S * 2**attempt)
                continue
        _count_lost(url, progress.done, want, counters, warned, failure)
        return progress.done  # the partial sample is dropped with the rest of the shard
    if progress.done < (shard_size(url) or 0):
        _count_lost(url, progress.done, want, counters, warned, "the tar ends early")
    return progress.done


def _tar_samples(url, want, counters, progress: _Progress) -> Iterator[tuple[int, dict]]:
    """read_shard's one pass over the tar, from sample `progress.done` on."""
    first = progress.done
    k, key, sample = -1, None, None
    fileobj, seekable = _open_shard(url)
    with fileobj, tarfile.open(fileobj=fileobj, mode="r:*" if seekable else "r|*") as tar:
        for member in tar:
            if not member.isreg():
                continue
            parts = _KEY_RE.match(member.name)
            if parts is None or _META_RE.match(member.name):
                continue
            if parts.group(1) != key:
                if k >= first:
                    progress.done, progress.counted = k + 1, None
                if sample is not None:
                    yield k, sample
                k, key = k + 1, parts.group(1)
                wanted = k >= first and want(k)
                sample = {"__key__": key, "__url__": url} if wanted else None
                if k >= first:
                    progress.counted = "read" if wanted else "skipped"
                    counters[progress.counted] += 1
            if sample is not None:
                sample[parts.group(2).lower()] = tar.extractfile(member).read()
    if k >= first:
        progress.done, progress.counted = k + 1, None
    if sample is not None:
        yield k, sample


def _count_lost(url, done, want, counters, warned, reason) -> None:
    """Count `bad_shard` for the wanted samples from index `done` on that sizes.json says the
    shard holds (1 when its size is not known), and warn unless `warned` has the url."""
    size = shard_size(url)
    lost = 1 if size is None else sum(1 for j in range(done, size) if want(j))
    if lost:
        counters["bad_shard"] += lost
    if warned is not None and url in warned:
        return
    if warned is not None:
        warned.add(url)
    of = "" if size is None else f" of {size}"
    print(
        f"warning: skipping unreadable shard {url} after {done}{of} samples ({reason}); "
        "every visit counts the samples it lost as bad_shard (said once per stream)",
        file=sys.stderr,
    )


_SIZES: dict[str, dict] = {}  # shard folder -> its sizes.json, read once per process


def shard_size(url: str) -> int | None:
    """The shard's sample count from sizes.json next to it, or None when not known."""
    folder = posixpath.dirname(url)
    if folder not in _SIZES:
        try:
            _SIZES[folder] = _read_json_next_to(url, "sizes.json") or {}
        except (OSError, ValueError):
            _SIZES[folder] = {}
    size = _SIZES[folder].get(posixpath.basename(url))
    return None if size is None else int(size)


# -- which shard a slot reads next ----------------------------------------------------------------


class Schedule:
    """The url, first sample and pass of a slot's v-th visit.

    `plan` lists explicit visits [url, first sample, pass] that come first (what an elastic
    resume handed this slot); regular visits follow from pass `first_pass` on.
    """

    def __init__(self, urls, slot, num_slots, seed, resampled, plan=(), first_pass=0, salt=0):
        self.urls, self.slot, self.num_slots, self.seed = urls, slot, num_slots, seed
        self.resampled, self.plan, self.first_pass, self.salt = resampled, plan, first_pass, salt
        self.strided = not resampled and len(urls) < num_slots
        n = len(urls)
        self.per_pass = n if self.strided else len(range(slot, n, num_slots))
        self._orders: dict[int, list[str]] = {}

    def order(self, n_pass: int) -> list[str]:
        if n_pass not in self._orders:
            order = list(self.urls)
            random.Random(f"{self.seed}-pass-{n_pass}").shuffle(order)
            self._orders = {n_pass: order}
        return self._orders[n_pass]

    def visit(self, v: int) -> tuple[str, int, int]:
        """(url, first sample to read, pass) of visit v (pass -1 in resampled mode)."""
        if v < len(self.plan):
            url, start, n_pass = self.plan[v]
            return url, start, n_pass
        v -= len(self.plan)
        if self.resampled:
            return (
                self.urls[mix(self.seed, "resample", self.salt, self.slot, v) % len(self.urls)],
                0,
                -1,
            )
        n_pass = self.first_pass + v // self.per_pass
        i = v % self.per_pass
        order = self.order(n_pass)
        return (order[i] if self.strided else order[self.slot + i * self.num_slots]), 0, n_pass

    def starts_pass(self, v: int) -> bool:
        return v >= len(self.plan) and (v - len(self.plan)) % self.per_pass == 0


def fresh_slot_state(plan=(), first_pass=0, salt=0) -> dict:
    return {
        "visit": 0,
        "offset": plan[0][1] if plan else 0,
        "base": 0,  # strided mode: index in the pass of the visit's first sample
        "buffer": [],
        "position": 0,
        "dropped": {},
        "plan": [list(p) for p in plan],
        "first_pass": first_pass,
        "salt": salt,
    }


class SlotStream:
    """One slot's raw samples through the shuffle buffer, with its position as plain JSON."""

    def __init__(self, urls, slot, num_slots, seed, resampled, bufsize, state, counters):
        self.schedule = Schedule(
            urls, slot, num_slots, seed, resampled, state["plan"], state["first_pass"],
            state["salt"],
        )  # fmt: skip
        self.slot, self.num_slots, self.seed = slot, num_slots, seed
        self.bufsize = max(bufsize, 1)
        self.max_wait = 2 * self.bufsize
        self.visit, self.offset, self.base = state["visit"], state["offset"], state["base"]
        self.position = state["position"]
        self.counters = counters
        self.warned: set[str] = set()  # shards whose damage this stream has reported
        self.buffer = self._refill(state["buffer"])

    def _refill(self, refs: list[list[int]]) -> list[tuple[tuple[int, int], dict, int]]:
        """Re-read the buffered samples by (visit, sample, draw it entered at) reference."""
        wanted: dict[int, set[int]] = {}
        for v, k, _ in refs:
            wanted.setdefault(v, set()).add(k)
        found = {}
        for v, ks in wanted.items():
            url = self.schedule.visit(v)[0]
            last = max(ks)
            for k, sample in read_shard(url, ks.__contains__, self.counters, self.warned):
                sample["__pass__"] = self._pass_of(v)
                found[(v, k)] = sample
                if k == last:
                    break
        return [((v, k), found[(v, k)], t) for v, k, t in refs if (v, k) in found]

    def _pass_of(self, v: int) -> int:
        """The epoch of visit v (resampled: as many shard draws as there are shards)."""
        n_pass = self.schedule.visit(v)[2]
        if n_pass < 0:
            n_pass = (v - len(self.schedule.plan)) // len(self.schedule.urls)
        return n_pass

    def _raw(self) -> Iterator[tuple[tuple[int, int], dict]]:
        pass_samples = 0 if self.schedule.starts_pass(self.visit) and not self.offset else None
        empty = 0
        while True:
            url, _, _ = self.schedule.visit(self.visit)
            n_pass = self._pass_of(self.visit)
            base, start = self.base, self.offset
            if self.schedule.strided:

                def want(k, base=base, start=start):
                    return k >= start and (base + k) % self.num_slots == self.slot
            else:

                def want(k, start=start):
                    return k >= start

            got = 0
            reader = read_shard(url, want, self.counters, self.warned)
            while True:
                try:
                    k, sample = next(reader)
                except StopIteration as stop:
                    size = stop.value
                    break
                self.offset = k + 1
                got += 1
                sample["__pass__"] = n_pass  # the epoch online curation draws for
                yield (self.visit, k), sample
            if pass_samples is not None:
                pass_samples += got
            empty = 0 if got else empty + 1
            if self.schedule.resampled and empty > 4 * len(self.schedule.urls):
                raise ValueError(
                    f"data slot {self.slot}: {empty} shard draws in a row gave no samples"
                )
            self.base = base + size
            self.visit += 1
            self.offset = self.schedule.visit(self.visit)[1]
            if self.schedule.starts_pass(self.visit):
                if pass_samples == 0 and not self.schedule.resampled:
                    raise ValueError(
                        f"data slot {self.slot}/{self.num_slots} got no samples from a whole pass "
                        f"over {len(self.schedule.urls)} shards"
                    )
                self.base, pass_samples = 0, 0

    def __iter__(self) -> Iterator[dict]:
        raw = self._raw()
        while True:
            while len(self.buffer) < self.bufsize:
                self.buffer.append((*next(raw), self.position))
            # the buffer is in arrival order: the oldest leaves once it has waited too long
            if self.buffer[0][2] + self.max_wait <= self.position:
                j = 0
            else:
                j = mix(self.seed, "shuffle", self.slot, self.position) % self._drawable()
            _, sample, _ = self.buffer.pop(j)
            self.position += 1
            yield sample

    def _drawable(self) -> int:
        """How many buffered samples, from the oldest, the next draw picks among: all in
        resampled mode; in epoch mode those of the oldest pass in the buffer (passes never
        decrease in arrival order), so that one pass is drawn whole before the next begins."""
        if self.schedule.resampled:
            return len(self.buffer)
        oldest = self.buffer[0][1]["__pass__"]
        return bisect.bisect_right(self.buffer, oldest, key=lambda entry: entry[1]["__pass__"])

    def state(self) -> dict:
        return {
            "visit": self.visit,
            "offset": self.offset,
            "base": self.base,
            "buffer": [[*ref, t] for ref, _, t in self.buffer],
            "position": self.position,
        }


class MixedStream:
    """One slot's samples drawn from several sources with fixed weights (--train-data-weights).

    Each source is a `SlotStream` of its own (its own shard order, passes and shuffle buffer,
    seeded per source); draw n takes its source from a hash of (seed, slot, n) against the
    cumulative weights, so the sequence of sources, and with the sources' states the whole
    stream, resumes bit-identically from `state()`: {"sources": [each stream's state],
    "position": draws so far}. A source whose pass ends starts its next one on its own.
    """

    def __init__(
        self, sources, weights, slot, num_slots, seed, resampled, bufsize, state, counters
    ):
        self.slot, self.seed = slot, seed
        self.cumulative = np.cumsum(weights).tolist()
        self.cumulative[-1] = 1.0
        given = state.get("sources") or [fresh_slot_state() for _ in sources]
        self.position = state["position"] if "sources" in state else 0
        self.streams = [
            SlotStream(urls, slot, num_slots, mix(seed, "source", i) & 0x7FFF_FFFF, resampled,
                       bufsize, given[i], counters)
            for i, urls in enumerate(sources)
        ]  # fmt: skip
        self.fixed = [{k: g[k] for k in ("plan", "first_pass", "salt")} for g in given]

    def source_of(self, n: int) -> int:
        u = (mix(self.seed, "mix", self.slot, n) >> 11) / 2.0**53  # uniform in [0, 1)
        return bisect.bisect_right(self.cumulative, u)

    def __iter__(self) -> Iterator[dict]:
        iterators = [iter(stream) for stream in self.streams]
        while True:
            source = self.source_of(self.position)
            sample = next(iterators[source])
            self.position += 1
            sample["__source__"] = source
            yield sample

    def state(self) -> dict:
        sources = [{**s.state(), **f} for s, f in zip(self.streams, self.fixed, strict=True)]
        return {"sources": sources, "position": self.position}


def elastic_slot_states(
    old_slots: dict[int, dict], old_num_slots: int, num_slots: int, urls, seed, resampled
) -> tuple[dict[int, dict], str]:
    """Fresh states for `num_slots` new slots that continue what `old_slots` left of their
    pass (module docstring), and one log line saying what the approximation is."""
    salt = 1 + max((s["salt"] for s in old_slots.values()), default=0)
    buffered = sum(len(s["buffer"]) for s in old_slots.values())
    old = {
        slot: (Schedule(urls, slot, old_num_slots, seed, resampled, s["plan"], s["first_pass"],
                        s["salt"]), s)
        for slot, s in old_slots.items()
    }  # fmt: skip
    layout = f"{old_num_slots} -> {num_slots} data streams"
    if resampled:
        states = {k: fresh_slot_state(salt=salt) for k in range(num_slots)}
        return states, f"elastic resume ({layout}): resampled shards, new draws from here on"
    passes = [sched.visit(s["visit"])[2] for sched, s in old.values()]
    last_pass = max(passes)
    strided = len(urls) < old_num_slots or len(urls) < num_slots
    if strided:
        states = {
            k: fresh_slot_state(first_pass=last_pass + 1, salt=salt) for k in range(num_slots)
        }
        return states, (
            f"elastic resume ({layout}): fewer shards ({len(urls)}) than streams, so the rest of "
            f"pass {last_pass} is skipped; starting pass {last_pass + 1}"
        )
    remaining = []  # (pass, url, first sample) of every visit not yet done, up to last_pass
    for sched, s in old.values():
        v, start = s["visit"], s["offset"]
        while True:
            url, first, n_pass = sched.visit(v)
            if n_pass > last_pass:
                break
            remaining.append((n_pass, url, start if v == s["visit"] else first))
            v += 1
    remaining.sort(key=lambda item: item[0])  # stable: old slot order within a pass
    states = {
        k: fresh_slot_state(
            [[url, first, n_pass] for n_pass, url, first in remaining[k::num_slots]],
            first_pass=last_pass + 1,
            salt=salt,
        )
        for k in range(num_slots)
    }
    return states, (
        f"elastic resume ({layout}): {len(remaining)} shard visits left in passes "
        f"{min(passes)}-{last_pass} continue from the samples they had reached (none repeated); "
        f"the {buffered} samples that were in shuffle buffers are skipped until the next pass"
    )


# -- decoding ------------------------------------------------------------------------------------


def caption(sample: dict) -> str:
    text = sample.get("txt")
    return text.decode("utf-8", errors="replace").strip() if text else ""


def image_bytes(sample: dict) -> bytes | None:
    return next((sample[k] for k in IMAGE_KEYS if sample.get(k)), None)


def decode_image(data: bytes, draft_size: int | None = None) -> torch.Tensor | None:
    """H x W x 3 uint8, or None when the bytes are not an image. With draft_size, a JPEG much
    larger than that is decoded at a reduced DCT scale (1/2, 1/4, 1/8) keeping both sides >= it."""
    try:
        image = Image.open(io.BytesIO(data))
        if draft_size:
            image.draft("RGB", (draft_size, draft_size))
        return torch.from_numpy(np.array(image.convert("RGB")))
    except Exception:
        return None


def decode(sample: dict, draft_size: int | None = None) -> tuple[torch.Tensor, str] | str:
    """(H x W x 3 uint8 image, caption), or the drop reason."""
    data = image_bytes(sample)
    if data is None:
        return "missing_image"
    text = caption(sample)
    if not text:
        return "missing_text"
    pixels = decode_image(data, draft_size)
    return "bad_image" if pixels is None else (pixels, text)


def pad_to_canvas(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """B x Hmax x Wmax x 3 uint8 (top-left aligned, zero padded) and the B x 2 true (h, w)."""
    sizes = torch.tensor([img.shape[:2] for img in images], dtype=torch.int32)
    h, w = (int(x) for x in sizes.max(dim=0).values)
    canvas = torch.zeros(len(images), h, w, 3, dtype=torch.uint8)
    for i, img in enumerate(images):
        canvas[i, : img.shape[0], : img.shape[1]] = img
    return canvas, sizes


def crop_params(
    sizes: torch.Tensor,
    seed: int,
    train: bool,
    hflip: bool,
    scale=CROP_SCALE,
    ratio=CROP_RATIO,
    aug: Augmentation | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict | None, dict | None]:
    """Per image (top, left, height, width), flip flag, when `aug` jitters or greys colours
    its colour parameters (augment.draw_colour), else None, and with `aug.local_crops` the
    local crops' parameters (`_local_crop_params`), else None: torchvision's RandomResizedCrop
    (+ RandomHorizontalFlip, RandomApply([ColorJitter]), RandomGrayscale) parameters drawn from
    torch's RNG seeded with `seed`, image after image; for evaluation, the centred square (what
    Resize(shortest) + CenterCrop keep). `aug` replaces `hflip`, `scale` and `ratio`."""
    import torchvision.transforms as T

    if aug is not None:
        hflip, scale, ratio = aug.hflip, aug.scale, aug.ratio
    colours = train and aug is not None and aug.colours
    jitter = T.ColorJitter(*aug.color_jitter) if colours and aug.color_jitter else None
    boxes = torch.empty(len(sizes), 4, dtype=torch.int32)
    flips = torch.zeros(len(sizes), dtype=torch.bool)
    drawn = []
    local = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, (h, w) in enumerate(sizes.tolist()):
            if train:
                bounds = ratio
                if aug is not None and aug.native_aspect:
                    bounds = (ratio[0] * w / h, ratio[1] * w / h)
                boxes[i], flips[i], colour = _draw_view(h, w, scale, bounds, hflip, aug, jitter)
                if colours:
                    drawn.append(colour)
            else:
                side = min(h, w)  # torchvision's center_crop offsets
                top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
                boxes[i] = torch.tensor([top, left, side, side])
        if train and aug is not None and aug.local_crops:
            local = _local_crop_params(sizes, aug, ratio, jitter, colours)
    return boxes, flips, colour_params(drawn) if colours else None, local


def _draw_view(h: int, w: int, scale, ratio, hflip: bool, aug, jitter):
    """One training view of an h x w image from torch's RNG, in torchvision's order: its
    RandomResizedCrop box, its flip, then (with `jitter`, or `aug` greying) its colours, else
    None."""
    import torchvision.transforms as T

    box = torch.tensor(T.RandomResizedCrop.get_params(torch.empty(0, h, w), scale, ratio))
    flip = hflip and bool(torch.rand(1) < 0.5)
    colour = draw_colour(aug, jitter) if aug is not None and aug.colours else None
    return box, flip, colour


def _local_crop_params(sizes: torch.Tensor, aug: Augmentation, ratio, jitter, colours) -> dict:
    """Self-distillation's local crops, image after image and crop after crop, from torch's
    RNG as it stands after the global views: `local_boxes` N x B x 4, `local_flips` N x B
    (crop-major: each crop's rows are one contiguous, pinned block for the device) and (with
    colour augmentation) `local_colour`, a `colour_params` per crop index."""
    n = aug.local_crops
    boxes = torch.empty(n, len(sizes), 4, dtype=torch.int32)
    flips = torch.zeros(n, len(sizes), dtype=torch.bool)
    drawn = []
    for i, (h, w) in enumerate(sizes.tolist()):
        for j in range(n):
            boxes[j, i], flips[j, i], colour = _draw_view(
                h, w, aug.local_scale, ratio, aug.hflip, aug, jitter
            )
            if colours:
                drawn.append(colour)
    out = {"local_boxes": boxes, "local_flips": flips}
    if drawn:  # one colour_params per crop index, over the images
        out["local_colour"] = [colour_params(drawn[j::n]) for j in range(n)]
    return out


def make_batch(
    images, texts, tokenizer, seed, train, hflip, encoded=False, aug: Augmentation | None = None
) -> dict:
    """What a worker hands over: a uint8 canvas of the images, or with `encoded` the list of
    images as they are (JPEG bytes for the device to decode, or decoded H x W x 3), plus the true
    sizes, crop boxes, flips, colour parameters (with `aug`) and tokens."""
    if encoded:
        sizes = torch.tensor([_size(img) for img in images], dtype=torch.int32)
        batch = {"encoded": [img[1] if isinstance(img, tuple) else img for img in images]}
    else:
        pixels, sizes = pad_to_canvas(images)
        batch = {"pixels": pixels}
    boxes, flips, colour, local = crop_params(sizes, seed, train, hflip, aug=aug)
    batch.update(sizes=sizes, boxes=boxes, flips=flips, train=train, **(local or {}))
    if colour is not None:
        batch["colour"] = colour
    tokens = tokenizer(texts)  # a dict of token sets with a teacher (`distill.TeacherTokens`)
    batch.update(tokens if isinstance(tokens, dict) else {"tokens": tokens})
    return batch


def _size(image: torch.Tensor | tuple) -> tuple[int, int]:
    return image[0] if isinstance(image, tuple) else tuple(image.shape[:2])


# JPEG start-of-frame markers: baseline and extended sequential Huffman frames go to the device;
# progressive, lossless, hierarchical and arithmetic-coded ones the worker decodes (nvJPEG's
# batched decode takes the first kind only, and one image it refuses fails the whole batch)
_DEVICE_FRAMES = frozenset({0xC0, 0xC1})
_FRAMES = _DEVICE_FRAMES | {0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_frame(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(SOF marker, sample precision, height, width, components) from a JPEG's frame header,
    walking the marker segments before it; None when they do not parse."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length: TEM, RSTn, SOI
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or a scan before any frame header
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _FRAMES:
            if length < 8 or i + 10 > n:
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return marker, data[i + 4], height, width, data[i + 9]
        if length < 2:
            return None
        i += 2 + length
    return None


def jpeg_for_device(data: bytes) -> tuple[tuple[int, int], torch.Tensor] | str | None:
    """For --gpu-decode: ((h, w), the JPEG bytes as a 1-d uint8 tensor) for a JPEG the device
    decodes (baseline or extended sequential, 8-bit, 3 components, whole to its end marker);
    None for what the worker decodes itself (not a JPEG, or progressive, greyscale, CMYK, 12-bit:
    PIL reads them all); 'bad_image' for a JPEG cut short or whose headers do not parse."""
    if not data.startswith(b"\xff\xd8"):
        return None
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "bad_image"  # truncated: no end-of-image marker
    frame = jpeg_frame(data)
    if frame is None:
        return "bad_image"
    marker, precision, h, w, components = frame
    if not (h and w):
        return "bad_image"
    if marker not in _DEVICE_FRAMES or precision != 8 or components != 3:
        return None
    return (h, w), torch.frombuffer(bytearray(data), dtype=torch.uint8)


def sample_lang(sample: dict) -> str:
    """The language in a sample's json ("lang", as the export and trainer.datasets write it),
    "und" when it has none or the json does not parse."""
    try:
        lang = json.loads(sample.get("json") or b"{}").get("lang")
    except (ValueError, AttributeError):
        return "und"
    return lang if isinstance(lang, str) and lang else "und"


def online_text(online, sample: dict, counts: dict, drops: Counter) -> str | None:
    """The text online curation keeps this sample with in its epoch, or None (skipped, or not
    a pool sample: counted)."""
    # deferred on purpose: numba and the curation library load only with --online-curation
    from curation.curate.online import parse_candidates

    try:
        meta = json.loads(sample.get("json") or b"{}")
        candidates = parse_candidates(meta["candidates"])
        uid = meta["uid"]
    except (ValueError, KeyError, TypeError):
        drops["not_a_pool_sample"] += 1
        return None
    if not candidates:
        drops["not_a_pool_sample"] += 1
        return None
    chosen, _, kept = online.decide(uid, candidates, sample["__pass__"])
    counts["kept" if kept else "skipped"][chosen.lang] += 1
    return chosen.text if kept else None


class ShardBatches(IterableDataset):
    """Batches (batch dict, slot_state) for one rank; see module docstring."""

    def __init__(
        self,
        urls: list[str],
        tokenizer,
        batch_size: int,
        image_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        resampled: bool = False,
        shuffle_buffer: int = 1000,
        slot_states: dict | None = None,
        worker_offset: int = 0,
        record_keys: bool = False,
        hflip: bool = False,
        gpu_decode: bool = False,
        augmentation: Augmentation | None = None,
        online=None,
        with_langs: bool = False,
        sources: list[list[str]] | None = None,
        weights: list[float] | None = None,
    ):
        self.urls, self.tokenizer = urls, tokenizer
        self.with_langs = with_langs  # batch["langs"]: each sample's json "lang" ("und": none)
        self.sources, self.weights = sources, weights  # several sources mixed: MixedStream
        self.batch_size, self.image_size = batch_size, image_size
        self.rank, self.world_size = rank, world_size
        self.workers = max(num_workers, 1)
        self.seed, self.resampled, self.shuffle_buffer = seed, resampled, shuffle_buffer
        self.slot_states = slot_states or {}
        self.worker_offset = worker_offset
        self.record_keys, self.hflip, self.gpu_decode = record_keys, hflip, gpu_decode
        self.augmentation = augmentation  # crop scale and colours (replaces hflip when given)
        self.online = online  # curation.curate.online.OnlineCuration: balance the pool per epoch

    def __iter__(self):
        info = get_worker_info()
        worker = ((info.id if info else 0) + self.worker_offset) % self.workers
        slot = self.rank * self.workers + worker
        state = self.slot_states.get(slot) or fresh_slot_state()
        drops = Counter(state["dropped"])
        decisions = {
            k: Counter(v) for k, v in state.get("online", {"kept": {}, "skipped": {}}).items()
        }
        io_counts: Counter = Counter()  # samples read / skipped by header since this start
        if self.sources is not None:
            stream = MixedStream(
                self.sources, self.weights, slot, self.world_size * self.workers, self.seed,
                self.resampled, self.shuffle_buffer, state, io_counts,
            )  # fmt: skip
        else:
            stream = SlotStream(
                self.urls, slot, self.world_size * self.workers, self.seed, self.resampled,
                self.shuffle_buffer, state, io_counts,
            )  # fmt: skip
        fixed = {k: state[k] for k in ("plan", "first_pass", "salt")}
        images, texts, keys, langs = [], [], [], []
        for sample in stream:
            data, text = image_bytes(sample), caption(sample)
            if data is not None and self.online is not None:
                text = online_text(self.online, sample, decisions, drops)
                if text is None:
                    continue
            if data is None or not text:
                drops["missing_image" if data is None else "missing_text"] += 1
                continue
            image = jpeg_for_device(data) if self.gpu_decode else None
            if image is None:
                image = decode_image(data, 2 * self.image_size)
            if image is None or isinstance(image, str):
                drops["bad_image"] += 1
                continue
            images.append(image)
            texts.append(text)
            keys.append(sample["__key__"])
            if self.with_langs:
                langs.append(sample_lang(sample))
            if len(texts) < self.batch_size:
                continue
            if io_counts["bad_shard"]:
                drops["bad_shard"] += io_counts.pop("bad_shard")
            batch = make_batch(
                images, texts, self.tokenizer,
                mix(self.seed, "crop", fixed["salt"], slot, stream.position) & 0x7FFF_FFFF_FFFF,
                train=True, hflip=self.hflip, encoded=self.gpu_decode, aug=self.augmentation,
            )  # fmt: skip
            slot_state = {"slot": slot, **stream.state(), **fixed, "dropped": dict(drops)}
            if self.online is not None:
                slot_state["online"] = {k: dict(v) for k, v in decisions.items()}
            slot_state["io"] = dict(io_counts)
            if self.record_keys:
                slot_state["keys"] = keys
            if self.with_langs:
                batch["langs"] = langs
            yield batch, slot_state
            images, texts, keys, langs = [], [], [], []


def sum_online_counts(parts) -> dict[str, dict[str, int]]:
    """{"kept": {lang: n}, "skipped": {lang: n}} summed over streams (or ranks)."""
    total = {"kept": Counter(), "skipped": Counter()}
    for part in parts:
        for kind, counts in part.items():
            total[kind].update(counts)
    return {kind: dict(sorted(c.items())) for kind, c in total.items()}


class ResumableLoader:
    """Iterates a rank's batches and remembers where every slot stands.

    `state` is this rank's loader state from a checkpoint written with the same world size and
    workers; `elastic` instead takes (every old rank's loader state, old world size) and
    redistributes the data position (`elastic_slot_states`).
    """

    def __init__(
        self,
        make_dataset,
        num_workers: int,
        state: dict | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        elastic: tuple[list[dict], int] | None = None,
        urls=None,
        seed: int = 0,
        resampled: bool = False,
        pin_memory: bool = False,
        mixed: bool = False,
    ):
        self.num_workers, self.workers = num_workers, max(num_workers, 1)
        for given in [state] if elastic is None else elastic[0]:
            slots = given["slots"].values() if given is not None else ()
            if any(("sources" in s) != mixed for s in slots):
                raise ValueError(
                    "this checkpoint's data position "
                    + ("mixes sources: resume it with the same --train-data-weights"
                       if not mixed else
                       "reads one list of shards: resume it without --train-data-weights")
                )  # fmt: skip
        self.note = None
        if state is not None and state["num_workers"] != num_workers:
            raise ValueError(
                f"this loader state was written with --workers {state['num_workers']}, not "
                f"{num_workers}: pass it as elastic=(all ranks' states, world size)"
            )
        state = state or {"batches": 0, "layout_batches": 0, "slots": {}, "dropped_before": {}}
        for given in [state] if elastic is None else elastic[0]:
            slots = given["slots"].values() if given is not None else ()
            if any("visit" not in s and "sources" not in s for s in slots):
                raise ValueError(
                    "this checkpoint's data position was written by an older trainer (a "
                    "replayed stream position): resume it with that version, or start a new run"
                )
        if elastic is not None:
            old_states, old_world = elastic
            if any("sources" in s for st in old_states for s in st["slots"].values()):
                raise ValueError(
                    "a run that mixes sources (--train-data-weights) resumes with the world "
                    "size and --workers it was written with"
                )
            old_workers = max(old_states[0]["num_workers"], 1)
            old_slots = {int(k): v for s in old_states for k, v in s["slots"].items()}
            for slot in range(old_world * old_workers):
                old_slots.setdefault(slot, fresh_slot_state())
            new_slots, self.note = elastic_slot_states(
                old_slots, old_world * old_workers, world_size * self.workers, urls, seed,
                resampled,
            )  # fmt: skip
            dropped = Counter()
            for s in old_states:
                dropped.update(s.get("dropped_before", {}))
            for s in old_slots.values():
                dropped.update(s["dropped"])
            mine = range(rank * self.workers, (rank + 1) * self.workers)
            state = {
                "batches": sum(s["batches"] for s in old_states) // world_size,
                "layout_batches": 0,
                "slots": {k: new_slots[k] for k in mine},
                "dropped_before": dict(dropped) if rank == 0 else {},
            }
        self.batches, self.layout_batches = state["batches"], state["layout_batches"]
        self.dropped_before = Counter(state["dropped_before"])
        self.slots = {int(k): v for k, v in state["slots"].items()}
        self.last_keys: list[str] = []
        self.last_io: dict = {}  # the last batch's stream: samples read, skipped, retries
        self.io: dict[int, dict] = {}  # each slot's stream's, since this start
        self.last_slot = None
        dataset = make_dataset(
            slot_states=self.slots, worker_offset=self.layout_batches % self.workers
        )
        self.loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            prefetch_factor=4 if num_workers > 0 else None,
            pin_memory=pin_memory,
        )
        self.iterator = iter(self.loader)

    def __next__(self) -> dict:
        batch, slot_state = next(self.iterator)
        self.last_keys = slot_state.pop("keys", [])
        self.last_io = slot_state.pop("io", {})
        self.io[slot_state["slot"]] = self.last_io
        self.slots[slot_state["slot"]] = slot_state
        self.last_slot = slot_state["slot"]
        self.batches += 1
        self.layout_batches += 1
        return batch

    def online_counts(self) -> dict[str, dict[str, int]]:
        """Online curation: kept and skipped samples per language, over this rank's streams."""
        return sum_online_counts(s.get("online", {}) for s in self.slots.values())

    def io_counts(self) -> dict[str, int]:
        """This rank's shard reads since this start, over its streams: samples read and
        skipped by header, and remote reads retried (shard_retries)."""
        total = Counter()
        for counts in self.io.values():
            total.update(counts)
        return dict(sorted(total.items()))

    def dropped(self) -> dict[str, int]:
        total = Counter(self.dropped_before)
        for s in self.slots.values():
            total.update(s["dropped"])
        return dict(total)

    def state_dict(self) -> dict:
        return {
            "batches": self.batches,
            "layout_batches": self.layout_batches,
            "num_workers": self.num_workers,
            "dropped_before": dict(self.dropped_before),
            "slots": {str(k): v for k, v in self.slots.items()},
        }


def eval_batches(urls: list[str], tokenizer, batch_size: int, max_samples: int, image_size: int):
    """Held-out samples in shard order, no shuffling: batch dicts with centred square crops."""
    counters: Counter = Counter()
    images, texts, seen = [], [], 0
    for url in urls:
        for _, sample in read_shard(url, lambda k: True, counters):
            decoded = decode(sample, 2 * image_size)
            if isinstance(decoded, str):
                continue
            images.append(decoded[0])
            texts.append(decoded[1])
            seen += 1
            if len(images) == batch_size or seen == max_samples:
                yield make_batch(images, texts, tokenizer, 0, False, False)
                images, texts = [], []
            if seen == max_samples:
                return
    if images:
        yield make_batch(images, texts, tokenizer, 0, False, False)
