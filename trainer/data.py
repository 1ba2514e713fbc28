"""WebDataset shards -> batches of (images, tokens), resumable mid-epoch.

Every (rank, worker) pair owns a *slot* that reads an infinite, deterministic stream:
  epoch mode      each pass shuffles the shard list with (seed, pass) and slot k takes
                  shards k, k+S, k+2S... (S = world_size * workers), so ranks never share a
                  sample within a pass; with fewer shards than slots it strides samples instead;
  resampled mode  each slot draws shards with replacement from its own RNG.
A seeded shuffle buffer follows, then decode + open_clip preprocessing + tokenisation.

A batch carries its slot's state after it: the number of raw samples the slot has consumed and
its drop counters. The loader keeps the state of every slot; on resume each worker replays its
stream up to that position *without decoding*, and worker ids are rotated so the DataLoader's
round-robin continues with the worker that was next. Augmentation randomness is seeded from
each batch's stream position, so a resumed run sees bit-identical batches.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import random
import sys
from collections import Counter
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import torch
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
DROP_REASONS = ("missing_image", "missing_text", "bad_image", "bad_shard")


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


def _read_json_next_to(url: str, name: str) -> dict | None:
    """The JSON file `name` in the shard's folder, local or any fsspec URI (s3://, gs://...)."""
    if url.startswith("pipe:"):
        return None
    if "://" in url.removeprefix("file://"):
        import fsspec

        fs, path = fsspec.core.url_to_fs(posixpath.join(posixpath.dirname(url), name))
        if not fs.exists(path):
            return None
        with fs.open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    path = Path(url.removeprefix("file://")).parent / name
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def count_samples(urls: list[str]) -> int:
    """Samples in these shards from sizes.json (per shard), else manifest.json (all shards)."""
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


def _log_bad_shard(counter: Counter):
    def handler(exn: Exception) -> bool:
        counter["bad_shard"] += 1
        print(f"warning: skipping unreadable shard data: {exn!r}", file=sys.stderr)
        return True

    return handler


def _read_shard(url: str, counter: Counter) -> Iterator[dict]:
    yield from wds.tarfile_samples([{"url": url}], handler=_log_bad_shard(counter))


def slot_stream(
    urls: list[str], slot: int, num_slots: int, seed: int, resampled: bool, counter: Counter
) -> Iterator[dict]:
    """The raw samples one slot reads, forever (see module docstring)."""
    if resampled:
        rng = random.Random(f"{seed}-resample-{slot}")
        while True:
            yield from _read_shard(rng.choice(urls), counter)
    for n_pass in count():
        order = list(urls)
        random.Random(f"{seed}-pass-{n_pass}").shuffle(order)
        produced = 0
        if len(order) >= num_slots:
            for url in order[slot::num_slots]:
                for sample in _read_shard(url, counter):
                    produced += 1
                    yield sample
        else:
            index = 0
            for url in order:
                for sample in _read_shard(url, counter):
                    if index % num_slots == slot:
                        produced += 1
                        yield sample
                    index += 1
        if produced == 0:
            raise ValueError(f"data slot {slot}/{num_slots} got no samples from {len(urls)} shards")


def shuffled(samples: Iterator[dict], bufsize: int, rng: random.Random) -> Iterator[dict]:
    buf: list[dict] = []
    for sample in samples:
        buf.append(sample)
        if len(buf) < bufsize:
            continue
        k = rng.randrange(len(buf))
        buf[k], buf[-1] = buf[-1], buf[k]
        yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def decode(sample: dict) -> tuple[Image.Image, str] | str:
    """(image, caption), or the drop reason."""
    image_bytes = next((sample[k] for k in IMAGE_KEYS if sample.get(k)), None)
    if image_bytes is None:
        return "missing_image"
    text = sample.get("txt")
    text = text.decode("utf-8", errors="replace").strip() if text else ""
    if not text:
        return "missing_text"
    try:
        image = Image.open(io.BytesIO(image_bytes))
        image = image.convert("RGB")
    except Exception:
        return "bad_image"
    return image, text


class ShardBatches(IterableDataset):
    """Batches (images, tokens, slot_state) for one rank; see module docstring."""

    def __init__(
        self,
        urls: list[str],
        preprocess,
        tokenizer,
        batch_size: int,
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
    ):
        self.urls, self.preprocess, self.tokenizer = urls, preprocess, tokenizer
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.workers = max(num_workers, 1)
        self.seed, self.resampled, self.shuffle_buffer = seed, resampled, shuffle_buffer
        self.slot_states = slot_states or {}
        self.worker_offset = worker_offset
        self.record_keys = record_keys

    def __iter__(self):
        info = get_worker_info()
        worker = ((info.id if info else 0) + self.worker_offset) % self.workers
        slot = self.rank * self.workers + worker
        state = self.slot_states.get(slot, {"position": 0, "dropped": {}})
        # shard-read failures are recounted while replaying; decode drops are not
        drops = Counter({k: v for k, v in state["dropped"].items() if k != "bad_shard"})
        raw = slot_stream(
            self.urls, slot, self.world_size * self.workers, self.seed, self.resampled, drops
        )
        stream = shuffled(raw, self.shuffle_buffer, random.Random(f"{self.seed}-shuffle-{slot}"))
        position = 0
        for _ in range(state["position"]):  # resume: replay without decoding
            next(stream)
            position += 1
        images, texts, keys = [], [], []
        for sample in stream:
            position += 1
            decoded = decode(sample)
            if isinstance(decoded, str):
                drops[decoded] += 1
                continue
            images.append(decoded[0])
            texts.append(decoded[1])
            keys.append(sample["__key__"])
            if len(images) < self.batch_size:
                continue
            # augmentations draw from torch's global RNG: seed it from the batch's position
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(hash((self.seed, slot, position)) & 0x7FFF_FFFF_FFFF_FFFF)
                pixels = torch.stack([self.preprocess(image) for image in images])
            slot_state = {"slot": slot, "position": position, "dropped": dict(drops)}
            if self.record_keys:
                slot_state["keys"] = keys
            yield pixels, self.tokenizer(texts), slot_state
            images, texts, keys = [], [], []


class ResumableLoader:
    """Iterates a rank's batches and remembers where every slot stands."""

    def __init__(self, make_dataset, num_workers: int, state: dict | None = None, seed: int = 0):
        self.num_workers = num_workers
        state = state or {"batches": 0, "slots": {}, "num_workers": num_workers}
        if state["num_workers"] != num_workers:
            raise ValueError(
                f"resume needs the same --workers as the checkpoint ({state['num_workers']}), "
                f"got {num_workers}"
            )
        self.batches = state["batches"]
        self.slots = {int(k): v for k, v in state["slots"].items()}
        self.last_keys: list[str] = []
        dataset = make_dataset(
            slot_states=self.slots, worker_offset=self.batches % max(num_workers, 1)
        )
        self.loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            prefetch_factor=4 if num_workers > 0 else None,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(seed),
        )
        self.iterator = iter(self.loader)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, tokens, slot_state = next(self.iterator)
        self.last_keys = slot_state.pop("keys", [])
        self.slots[slot_state["slot"]] = slot_state
        self.batches += 1
        return images, tokens

    def dropped(self) -> dict[str, int]:
        total = Counter()
        for s in self.slots.values():
            total.update(s["dropped"])
        return dict(total)

    def state_dict(self) -> dict:
        return {
            "batches": self.batches,
            "num_workers": self.num_workers,
            "slots": {str(k): v for k, v in self.slots.items()},
        }


def eval_batches(urls: list[str], preprocess, tokenizer, batch_size: int, max_samples: int):
    """Held-out samples in shard order, no shuffling; yields (images, tokens)."""
    drops: Counter = Counter()
    images, texts, seen = [], [], 0
    for url in urls:
        for sample in _read_shard(url, drops):
            decoded = decode(sample)
            if isinstance(decoded, str):
                continue
            images.append(preprocess(decoded[0]))
            texts.append(decoded[1])
            seen += 1
            if len(images) == batch_size or seen == max_samples:
                yield torch.stack(images), tokenizer(texts)
                images, texts = [], []
            if seen == max_samples:
                return
    if images:
        yield torch.stack(images), tokenizer(texts)
