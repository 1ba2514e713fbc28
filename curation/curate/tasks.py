"""What the curation job's Python tasks run on the executors (the plan: curation/curate/job.py).

1. `read_and_pack`: the records of an input split (or those Spark read, when it reads the
   input), matched where they are read, sent on as one Arrow blob per reduce partition
   (curation/curate/exchange.py).
2. `choose_and_write`: a reduce partition's records, which hold every copy of its images:
   distinct records, routed languages and the one chosen text per image, written as the
   partition's matches/ files (one per language), with its partial entry counts.
3. `keep_and_write`: the chosen rows of matches/ files, kept by their seeded draws against the
   global counts, written as curated/ files.
Tasks write their files with pyarrow (`tables.write_parquet`) and yield one dict per file.
The job runs them as RDD partition functions (`mapPartitions`).
"""

from __future__ import annotations

import gc
import itertools
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.alt_text.derive import derive_columns
from curation.balance import (
    choose_texts,
    entry_probabilities,
    keep_probabilities,
    keep_uniforms,
)
from curation.core import hashing, tables
from curation.core.arrays import run_starts
from curation.curate import exchange
from curation.curate.input_splits import Split, read_split
from curation.curate.recount import only_survivors
from curation.matching import EntryMatcher

OTHER = "other"
RECORD_COLUMNS = ("uid", "url", "page_url", "text", "lang")
UNIQUE_STRINGS = ("uid", "url", "text")  # written without dictionary pages or statistics
# A Python worker keeps automata up to this many entries (~0.7 KB each, so ~1.4 GB; English
# alone is ~0.5M in MetaCLIP 2's metadata), evicting the least recently used: 329 languages
# never all sit in one worker.
MATCHER_CACHE_ENTRIES = 2_000_000
PROBS_CACHE_ENTRIES = 50_000_000  # float64 keep probabilities, 400 MB
MATCH_BATCH_ROWS = 65_536


_MATCHERS: OrderedDict = OrderedDict()
_PROBS: OrderedDict = OrderedDict()


def _cached(cache: OrderedDict, key, build, size, budget: int):
    """A per-worker LRU bounded by `size` (entries) of what it holds, newest always kept."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = build()
    while len(cache) > 1 and sum(size(v) for v in cache.values()) > budget:
        cache.popitem(last=False)
    return value


def metadata_entries(metadata_uri: str, lang: str) -> pa.Table:
    """(entry_id, entry) of one language of the metadata table, in id order, checked: a table
    with a duplicated or null entry or id (two copies of a file, a hand-edited table) would
    change every count silently, so it is an error naming the partition (section 9)."""
    table = tables.read_partition(metadata_uri, lang, ["entry_id", "entry"]).sort_by("entry_id")
    where = f"metadata {metadata_uri.rstrip('/')}/lang={lang}"
    for name in ("entry_id", "entry"):
        column = table.column(name)
        if column.null_count:
            raise ValueError(f"{where}: {column.null_count} row(s) with a null {name}")
        distinct = pc.count_distinct(column).as_py()
        if distinct != table.num_rows:
            counts = pc.value_counts(column).to_pylist()
            example = next(c["values"] for c in counts if c["counts"] > 1)
            raise ValueError(
                f"{where}: {table.num_rows - distinct} duplicate {name} value(s), e.g. "
                f"{example!r} (the same file twice?); each entry and id must appear once"
            )
    if table.num_rows and pc.min(table.column("entry_id")).as_py() < 0:
        raise ValueError(f"{where}: negative entry_id")
    blank = pc.sum(pc.equal(pc.utf8_trim_whitespace(table.column("entry")), "")).as_py()
    if blank:
        raise ValueError(f"{where}: {blank} empty or blank entr{'y' if blank == 1 else 'ies'}")
    return table


def language_matcher(
    metadata_uri: str, lang: str, version: str = ""
) -> tuple[EntryMatcher, np.ndarray | None]:
    """The matcher of one language, built from the metadata table (never unpickled)."""

    def build():
        table = metadata_entries(metadata_uri, lang)
        entry_ids = table.column("entry_id").to_numpy().astype(np.int32)
        identity = bool(np.array_equal(entry_ids, np.arange(len(entry_ids))))
        matcher = EntryMatcher(table.column("entry").to_pylist())
        # a reused worker's collector would otherwise rescan the automaton's objects forever
        gc.freeze()
        return matcher, None if identity else entry_ids

    return _cached(
        _MATCHERS,
        (metadata_uri, version, lang),
        build,
        lambda value: max(1, len(value[0])),
        MATCHER_CACHE_ENTRIES,
    )


def match_language(metadata_uri: str, lang: str, version: str, texts) -> pa.ListArray:
    """entry_ids of each text (list<int32>); none for `other` (no metadata language)."""
    if lang == OTHER:
        return pa.ListArray.from_arrays(
            pa.array(np.zeros(len(texts) + 1, np.int32)), pa.array([], pa.int32())
        )
    matcher, entry_ids = language_matcher(metadata_uri, lang, version)
    matched = matcher.match_arrow(texts)
    if entry_ids is not None:
        values = entry_ids[matched.values.to_numpy()]
        matched = pa.ListArray.from_arrays(matched.offsets, pa.array(values))
    return matched


def match_records(metadata_uri: str, version: str, metadata_langs: list[str]):
    """A function over Arrow batches, before the shuffle: entry_ids of each input record against the
    entries of its (routed) language, the input's own lang column kept for de-duplication."""
    known = frozenset(metadata_langs)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            encoded = pc.dictionary_encode(batch.column("lang"))
            # routed language of code + 1; a null lang (code -1) is `other`
            langs = [OTHER, *(x if x in known else OTHER for x in encoded.dictionary.to_pylist())]
            codes = pc.fill_null(encoded.indices, -1).to_numpy()
            if (codes == codes[0]).all():
                texts = batch.column("text")
                entry_ids = match_language(metadata_uri, langs[codes[0] + 1], version, texts)
            else:
                entry_ids = _match_mixed(batch.column("text"), codes, langs, metadata_uri, version)
            yield pa.RecordBatch.from_arrays(
                [*(batch.column(c) for c in RECORD_COLUMNS), entry_ids],
                names=[*RECORD_COLUMNS, "entry_ids"],
            )

    return run


def _match_mixed(texts, codes, langs, metadata_uri, version) -> pa.ListArray:
    """entry_ids of a batch of several languages (`langs[code + 1]`), in the batch's row order:
    each language's texts are matched together and their ids scattered back."""
    order = np.argsort(codes, kind="stable")
    cuts = [0, *(np.flatnonzero(np.diff(codes[order])) + 1), len(order)]
    lengths = np.zeros(len(order), dtype=np.int64)
    pieces = []
    for start, stop in zip(cuts[:-1], cuts[1:]):
        rows = order[start:stop]
        lang = langs[codes[rows[0]] + 1]
        matched = match_language(metadata_uri, lang, version, texts.take(pa.array(rows)))
        piece_offsets = matched.offsets.to_numpy()
        lengths[rows] = np.diff(piece_offsets)
        pieces.append((rows, piece_offsets, matched.values.to_numpy()))
    offsets = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.empty(offsets[-1], dtype=np.int32)
    for rows, piece_offsets, piece_values in pieces:
        first, last = piece_offsets[0], piece_offsets[-1]
        shift = np.repeat(offsets[rows] - piece_offsets[:-1], np.diff(piece_offsets))
        values[shift + np.arange(first, last)] = piece_values[first:last]
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))


# --- map: read, match, pack ------------------------------------------------------------------


def read_and_pack(
    metadata_uri: str,
    version: str,
    metadata_langs: list[str],
    num_partitions: int,
    derive: tuple[str, ...] = (),
    lid_model: str | None = None,
    splits: bool = True,
    survivors: str | None = None,
    folder: str | None = None,
):
    """The map side. With `splits`: an RDD partition function over input splits (each read
    here), yielding blob pairs `(partition, (records, nulls, blob, path))`. Without: a
    mapInArrow function over records Spark read (RECORD_COLUMNS), yielding the same as
    exchange.BLOB_SCHEMA rows (`key` the partition). Either way the records, `derive`d columns
    (uid, lang) filled in, go to the reduce partition of their uid hash as blobs: the bytes, or
    with a `folder` (--exchange files) the paths of the files they are written to; the first
    pair of each read (no blob) counts the records read and dropped. With `survivors`
    (--recount-from), only the records of the images that file lists."""
    match = match_records(metadata_uri, version, metadata_langs)
    known = pa.array(sorted(metadata_langs), pa.string())

    def pairs_of(records: pa.Table, send) -> list[tuple]:
        records = derive_columns(records, derive, lid_model)
        if survivors is not None:
            records = only_survivors(records, survivors)
        return _pack(records, match, num_partitions, known, send)

    def sender():
        if folder is None:
            return lambda share: (exchange.to_blob(share), None)
        from pyspark import TaskContext

        # one writer per name, even where another attempt of this task runs at the same time
        task = TaskContext.get()
        names = (f"{folder}/{task.partitionId():06d}-{task.attemptNumber()}-{n:06d}.arrow"
                 for n in itertools.count())  # fmt: skip

        def send(share: pa.Table) -> tuple[None, str]:
            path = next(names)
            exchange.write_blob(path, share)
            return None, path

        return send

    def over_splits(splits: Iterator[Split]) -> Iterator[tuple]:
        send = sender()
        for split in splits:
            yield from pairs_of(read_split(split, list(RECORD_COLUMNS)), send)

    def over_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        send = sender()
        for batch in batches:
            records = pa.Table.from_batches([batch]).select(list(RECORD_COLUMNS))
            pairs = pairs_of(records, send)
            columns = list(zip(*(value for _, value in pairs)))
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array([key for key, _ in pairs], pa.int32()),
                    pa.array(columns[0], pa.int64()),
                    pa.array(columns[1], pa.int64()),
                    pa.array(columns[2], pa.binary()),
                    pa.array(columns[3], pa.string()),
                ],
                names=["key", "records", "nulls", "blob", "path"],
            )

    return over_splits if splits else over_batches


def same_partition(partition: int) -> int:
    """The partition function of the job's shuffles (`partitionBy`): each pair is keyed by the
    index of the task it goes to. It runs in the workers, so it lives here, not in job.py."""
    return partition


def blob_pair(row) -> tuple:
    """A blob row of `--input-reader spark`'s map tasks (exchange.BLOB_SCHEMA) as a pair."""
    blob = None if row.blob is None else bytes(row.blob)
    return row.key, (row.records, row.nulls, blob, row.path)


def _pack(records: pa.Table, match, partitions: int, known: pa.Array, send) -> list[tuple]:
    """Blob pairs `(partition, (records, nulls, blob, path))` of some records: first one (no
    blob) with the number of records read and dropped, then the matched ones with a uid, url
    and text, by partition of their uid hash, each share `send`-ed (its bytes, or its file's
    path)."""
    columns = [records.column(c) for c in ("uid", "url", "text")]
    valid = pc.and_(
        pc.and_(pc.is_valid(columns[0]), pc.is_valid(columns[1])), pc.is_valid(columns[2])
    )
    kept = records.filter(valid)
    pairs = [(0, (records.num_rows, records.num_rows - kept.num_rows, None, None))]
    if kept.num_rows:
        matched = pa.Table.from_batches(match(kept.to_batches(max_chunksize=MATCH_BATCH_ROWS)))
        matched = matched.cast(exchange.RECORD_SCHEMA)
        hashes = hashing.uid_hashes(matched.column("uid"))
        partition = (hashes % np.uint64(partitions)).astype(np.int64)
        order = _write_order(matched, partition, hashes, known)
        matched = matched.append_column(exchange.UID_HASH, pa.array(hashes))  # spares the reduce
        for p, share in exchange.pack(matched, partition, partitions, order=order):
            pairs.append((p, (0, 0, *send(share))))
    return pairs


def _write_order(
    records: pa.Table, partition: np.ndarray, hashes: np.ndarray, known: pa.Array
) -> np.ndarray:
    """The records by partition, each partition's rows in the order in which its reduce task
    writes them (partition_records: routed lang, matched first, uid hash). It only changes
    speed: the reduce task sorts its rows itself, but with each blob already in that order its
    final gather reads every blob front to back instead of jumping around hundreds of MB
    (measured: 0.2 against 0.07 µs per row)."""
    lang = _routed(records.column("lang"), known)
    matched = has_matches(records.column("entry_ids"))
    ranks = _lang_ranks(lang)
    groups = (partition * (int(ranks.max(initial=0)) + 1) + ranks) * 2 + ~matched
    return _order_by_group_then_hash(groups, hashes)


def _order_by_group_then_hash(groups: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """np.lexsort((hashes, groups)) for non-negative group numbers, in ~60% of its time: a
    stable sort of the hashes, then a stable sort of their groups, which numpy radix-sorts when
    they fit in 16 bits. Rows with equal keys keep their order, as with lexsort."""
    by_hash = np.argsort(hashes, kind="stable")
    groups = groups[by_hash]
    if groups.size and 0 <= groups.min() and groups.max() < 2**15:
        groups = groups.astype(np.int16)
    return by_hash[np.argsort(groups, kind="stable")]


def has_matches(entry_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Whether each record matched at least one entry (a null list matched none)."""
    lengths = pc.list_value_length(entry_ids)
    return pc.fill_null(lengths, 0).to_numpy(zero_copy_only=False) > 0


# --- reduce: distinct records, the chosen text, matches/ files -------------------------------


def choose_and_write(matches_uri: str, counts_uri: str, seed: int, metadata_langs: list[str]):
    """RDD partition function over a reduce partition's blob pairs (read_and_pack's, bytes or
    paths of files): writes its matches/ files (`lang=L/part-NNNNN.parquet`, NNNNN the
    partition) and its partial entry counts (`counts_uri/part-NNNNN.parquet`); yields a
    dict per file (part, lang, file, rows, chosen, matched), and one (lang null) with the input
    counts it received."""
    known = pa.array(sorted(metadata_langs), pa.string())

    def run(pairs: Iterator[tuple]) -> Iterator[dict]:
        from pyspark import TaskContext

        part = TaskContext.get().partitionId()
        blobs, read, dropped = [], 0, 0
        for _, (records, nulls, blob, path) in pairs:
            read, dropped = read + records, dropped + nulls
            if blob is not None or path is not None:
                blobs.append(blob if blob is not None else path)
        stats = dict(part=part, lang=None, file=None, rows=0, chosen=0, matched=0,
                     input_records=read, nulls=dropped)  # fmt: skip
        rows = [stats]
        if blobs:
            records = partition_records(exchange.unpack(blobs), seed, known)
            del blobs
            rows += write_matches(matches_uri, counts_uri, part, records)
            if any(r["matched"] for r in rows):  # the partial counts file (lang null)
                stats["file"] = counts_file(part)
        yield from rows

    return run


def partition_records(table: pa.Table, seed: int, known: pa.Array) -> pa.Table:
    """The matches/ rows of one partition, which holds every copy of its images: one row per
    distinct (uid, text) record, languages without metadata routed to `other`, and the one
    chosen text per image flagged (section 8). Rows come out grouped by lang (code-point
    order), the chosen ones first in each group, then in (uid hash, uid, text) order.

    Rows are grouped by a 64-bit hash of their uid: a row alone with its hash is its own
    record. Only rows that share their hash (several texts or copies of one image, or the rare
    collision of two uids) are resolved by comparing the strings (`_resolve_copies`)."""
    hashes = _uid_hashes(table)
    order = np.argsort(hashes, kind="stable")
    ranked = hashes[order]
    starts = np.ones(order.size, dtype=np.bool_)
    starts[1:] = ranked[1:] != ranked[:-1]
    group = np.cumsum(starts) - 1
    shared = np.bincount(group)[group] > 1
    alone = order[~shared]
    lang = _routed(table.column("lang").take(alone), known)
    chosen = has_matches(table.column("entry_ids").take(alone))
    rows, smallest = alone, None
    if shared.any():
        copies, copy_lang, copy_chosen, smallest = _resolve_copies(
            table, order[shared], seed, known
        )
        rows = np.concatenate([alone, copies])
        lang = pa.concat_arrays([lang, copy_lang])
        chosen = np.concatenate([chosen, copy_chosen])
    # rows of equal hash are all copies, in _resolve_copies' order: a stable sort keeps it
    final = _order_by_group_then_hash(_lang_ranks(lang) * 2 + ~chosen, hashes[rows])
    out = table.select([*RECORD_COLUMNS, "entry_ids"]).take(rows[final])  # the one full copy
    if smallest is not None:
        position = np.empty(final.size, dtype=np.int64)
        position[final] = np.arange(final.size)
        out = _with_smallest_urls(out, position[alone.size + smallest[0]], *smallest[1:])
    out = out.set_column(out.schema.get_field_index("lang"), "lang", lang.take(final))
    return out.append_column("chosen", pa.array(chosen[final]))


def _uid_hashes(table: pa.Table) -> np.ndarray:
    """hashing.uid_hashes of the rows: the map task's, sent along with the blob, if it is there."""
    if exchange.UID_HASH in table.column_names:
        return table.column(exchange.UID_HASH).to_numpy()
    return hashing.uid_hashes(table.column("uid"))


def _lang_ranks(lang: pa.Array) -> np.ndarray:
    """Each row's rank of its lang in sorted order: a sort key that groups rows by language."""
    encoded = pc.dictionary_encode(lang)
    rank = np.argsort(np.argsort(np.array(encoded.dictionary.to_pylist(), dtype=object)))
    return rank[encoded.indices.to_numpy()]


def _routed(lang: pa.Array | pa.ChunkedArray, known: pa.Array) -> pa.Array:
    """Labels with metadata as they are, the rest (and null) as `other`."""
    routed = pc.if_else(pc.is_in(lang, value_set=known), lang, pa.scalar(OTHER))
    return routed.combine_chunks() if isinstance(routed, pa.ChunkedArray) else routed


def write_matches(matches_uri: str, counts_uri: str, part: int, records: pa.Table) -> list[dict]:
    """One file per language of partition_records' output (chosen rows in their own first row
    groups) and the partition's per-entry counts; the dict choose_and_write yields per file."""
    langs = records.column("lang").combine_chunks()
    cuts = np.flatnonzero(run_starts(langs))
    bounds = np.append(cuts, records.num_rows)
    chosen = records.column("chosen").to_numpy()
    matched_rows = has_matches(records.column("entry_ids"))
    body = records.drop_columns(["lang"])
    rows, counted = [], []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        lang = langs[start].as_py()
        first = int(chosen[start:stop].sum())
        name = f"lang={lang}/part-{part:05d}.parquet"
        pieces = [body.slice(start, first), body.slice(start + first, stop - start - first)]
        tables.write_parquet(
            f"{matches_uri}/{name}", [p for p in pieces if p.num_rows], plain=UNIQUE_STRINGS
        )
        matched = int(np.count_nonzero(matched_rows[start:stop]))
        rows.append(dict(part=part, lang=lang, file=name, rows=int(stop - start), chosen=first,
                         matched=matched, input_records=0, nulls=0))  # fmt: skip
        if matched:
            ids = pc.list_flatten(records.column("entry_ids").slice(start, stop - start))
            counts = np.bincount(ids.to_numpy())
            entry_ids = np.flatnonzero(counts)
            counted.append(
                pa.table(
                    {
                        "lang": pa.array([lang] * entry_ids.size, pa.string()),
                        "entry_id": pa.array(entry_ids.astype(np.int32)),
                        "count": pa.array(counts[entry_ids].astype(np.int64)),
                    }
                )
            )
    if counted:
        tables.write_parquet(f"{counts_uri}/{counts_file(part)}", [pa.concat_tables(counted)])
    return rows


def counts_file(part: int) -> str:
    return f"part-{part:05d}.parquet"


# --- entry counts: partial counts summed per language ----------------------------------------

ENTRY_COUNTS_FILE = "part-00000.parquet"


def count_blobs(lang_index: dict[str, int]):
    """RDD partition function over partial counts files (paths): each file's counts of each
    language as one blob (entry_id, count), in a pair `(its language's task, (lang, blob))`."""

    def run(paths: Iterator[str]) -> Iterator[tuple]:
        for path in paths:
            fs, local = tables.filesystem(path)
            with fs.open_input_file(local) as handle:
                counts = pq.read_table(handle)
            langs = counts.column("lang").combine_chunks()
            bounds = np.append(np.flatnonzero(run_starts(langs)), counts.num_rows)
            for start, stop in zip(bounds[:-1], bounds[1:]):
                lang = langs[start].as_py()
                piece = counts.slice(start, stop - start).select(["entry_id", "count"])
                yield lang_index[lang], (lang, exchange.to_blob(piece))

    return run


def sum_counts_and_write(metadata_uri: str, entry_counts_uri: str):
    """RDD partition function over count_blobs' pairs (and a marker `(task, (lang, None))` per
    language, so that a language without matches is written too): every metadata entry of the
    language with its summed count, zeros included, as `lang=L/part-00000.parquet`. Yields
    (lang, entries) per language."""

    def run(pairs: Iterator[tuple]) -> Iterator[tuple[str, int]]:
        blobs: dict[str, list] = {}
        for _, (lang, blob) in pairs:
            blobs.setdefault(lang, [])
            if blob is not None:
                blobs[lang].append(blob)
        for lang in sorted(blobs):
            metadata = metadata_entries(metadata_uri, lang)
            entry_ids = metadata.column("entry_id").to_numpy().astype(np.int64)
            counts = np.zeros(int(entry_ids.max()) + 1 if entry_ids.size else 0, dtype=np.int64)
            for blob in blobs[lang]:
                piece = pa.ipc.open_stream(pa.py_buffer(blob)).read_all()
                np.add.at(
                    counts, piece.column("entry_id").to_numpy(), piece.column("count").to_numpy()
                )
            table = pa.table(
                {
                    "entry_id": pa.array(entry_ids.astype(np.int32)),
                    "entry": metadata.column("entry").combine_chunks().cast(pa.string()),
                    "count": pa.array(counts[entry_ids]),
                }
            )
            path = f"{entry_counts_uri}/lang={lang}/{ENTRY_COUNTS_FILE}"
            tables.write_parquet(path, [table], plain=("entry",))
            yield lang, table.num_rows

    return run


def _resolve_copies(
    table: pa.Table, shared: np.ndarray, seed: int, known: pa.Array
) -> tuple[np.ndarray, pa.Array, np.ndarray, tuple | None]:
    """partition_records for rows `shared` of `table`, which share their uid hash, by comparing
    the strings themselves. Returns the rows of `table` that are its records (one per distinct
    (uid, text), its copy of the smallest lang), grouped by lang, chosen ones first, each group
    in (uid, text) order; their routed langs; their chosen flags; and for the records that had
    several copies (index among those rows, smallest url, smallest page_url), or None. Only the
    columns it compares are copied; only images with several rows pay for comparing texts."""
    sub = table.select(["uid", "text", "lang", "entry_ids"]).take(shared)
    keys = [("uid", "ascending", "at_end"), ("text", "ascending", "at_end")]
    order = pc.sort_indices(sub, sort_keys=[*keys, ("lang", "ascending", "at_end")])
    order = order.to_numpy()
    uid = sub.column("uid").take(order)
    image = np.cumsum(run_starts(uid)) - 1
    first = np.ones(order.size, dtype=np.bool_)  # the first copy of each distinct (uid, text)
    several = np.flatnonzero(np.bincount(image)[image] > 1)
    if several.size:
        texts = sub.column("text").take(order[several])
        first[several] = run_starts(uid.take(several), texts)
    rows, image = order[first], image[first]  # one row per record, smallest lang first
    lang = _routed(sub.column("lang").take(rows), known)
    chosen = chosen_texts(seed, sub, rows, image)
    final = np.lexsort((~chosen, _lang_ranks(lang)))
    smallest = None
    if not first.all():  # url and page_url: the smallest of the record's copies
        smallest = _smallest_urls(table, shared[order], np.cumsum(first) - 1, final)
    return shared[rows[final]], lang.take(final), chosen[final], smallest


def _smallest_urls(table, copies_in_order, record, final) -> tuple:
    """For the records with several copies (`record[i]`: the record of row `copies_in_order[i]`
    of `table`, records numbered in (uid, text) order, `final` their output order): (each one's
    index in that output order, the smallest non-null url and page_url of its copies), as
    Spark's min."""
    several = np.flatnonzero(np.bincount(record)[record] > 1)
    subset = table.select(["url", "page_url"]).take(copies_in_order[several])
    smallest = (
        subset.append_column("g", pa.array(record[several]))
        .group_by("g", use_threads=False)
        .aggregate([("url", "min"), ("page_url", "min")])
    )
    position = np.empty(final.size, dtype=np.int64)
    position[final] = np.arange(final.size)  # record (in uid order) -> output index
    where = position[smallest.column("g").to_numpy()]
    return where, smallest.column("url_min"), smallest.column("page_url_min")


def _with_smallest_urls(out: pa.Table, where: np.ndarray, urls, page_urls) -> pa.Table:
    """`out` with url and page_url of rows `where` replaced by those values."""
    ascending = np.argsort(where)
    mask = np.zeros(out.num_rows, dtype=np.bool_)
    mask[where] = True
    for name, values in (("url", urls), ("page_url", page_urls)):
        values = values.take(pa.array(ascending)).combine_chunks()
        column = pc.replace_with_mask(out.column(name), pa.array(mask), values)
        out = out.set_column(out.schema.get_field_index(name), name, column)
    return out


def chosen_texts(seed: int, table: pa.Table, rows: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Section 8's one text per image, for records `rows` of `table` in (uid, text) order
    (`image` numbers their uids): among an image's matched texts the smallest
    (text_choice_key, text). Only images with several matched texts hash a key."""
    chosen = has_matches(table.column("entry_ids").take(rows))
    matched = np.flatnonzero(chosen)
    if matched.size < 2:
        return chosen
    shared = np.bincount(image[matched], minlength=image[-1] + 1)[image[matched]] > 1
    matched = matched[shared]
    if not matched.size:
        return chosen
    candidates = pa.array(rows[matched])
    best = choose_texts(
        seed,
        table.column("uid").take(candidates),
        table.column("text").take(candidates),
        image[matched],
    )
    chosen[matched[~best]] = False
    return chosen


def language_probabilities(counts_uri: str, lang: str, t: float, version: str = "") -> np.ndarray:
    """prob per entry id of one language, from its entry_counts partition (zeros included)."""

    def build():
        table = tables.read_partition(counts_uri, lang, ["entry_id", "count"])
        ids = table.column("entry_id").to_numpy()
        counts = np.zeros(int(ids.max()) + 1 if ids.size else 0, dtype=np.int64)
        counts[ids] = table.column("count").to_numpy()
        return entry_probabilities(counts, t)

    return _cached(
        _PROBS, (counts_uri, version, lang, t), build, lambda p: max(1, p.size), PROBS_CACHE_ENTRIES
    )


def batch_keep_probabilities(
    batch: pa.RecordBatch, counts_uri: str, thresholds: dict[str, float], version: str
) -> np.ndarray:
    """keep_probability of each row of a batch (lang, entry_ids), language by language."""
    entry_ids = batch.column("entry_ids")
    offsets = entry_ids.offsets.to_numpy()
    values = entry_ids.values.to_numpy()
    langs = batch.column("lang").to_numpy(zero_copy_only=False)
    keep_probs = np.empty(batch.num_rows, dtype=np.float64)
    for lang in dict.fromkeys(langs):
        rows = np.flatnonzero(langs == lang)
        probs = language_probabilities(counts_uri, lang, thresholds[lang], version)
        keep_probs[rows] = keep_probabilities(probs, offsets, values, rows)
    return keep_probs


# --- curated: the keep draw over the chosen rows ---------------------------------------------


def keep_and_write(
    matches_uri: str,
    curated_uri: str,
    counts_uri: str,
    thresholds: dict[str, float],
    seed: int,
    version: str,
):
    """RDD partition function over lists of matches/ files, `(lang, file, chosen)` each: the
    keep probability of each chosen row from its language's counts, kept when its image's
    seeded draw falls below it; the kept rows written to the same file name under curated/.
    Yields a (lang, file, rows kept) dict per file."""

    def run(groups: Iterator[list[tuple]]) -> Iterator[dict]:
        for files in groups:
            for lang, name, chosen in files:
                rows = _first_rows(
                    f"{matches_uri}/{name}", chosen, ["uid", "url", "text", "entry_ids"]
                )
                entry_ids = rows.column("entry_ids").combine_chunks()
                probs = language_probabilities(counts_uri, lang, thresholds[lang], version)
                keep_probs = keep_probabilities(
                    probs,
                    entry_ids.offsets.to_numpy(),
                    entry_ids.values.to_numpy(),
                    np.arange(rows.num_rows),
                )
                kept = keep_uniforms(seed, rows.column("uid")) < keep_probs
                if kept.any():
                    out = rows.append_column("keep_prob", pa.array(keep_probs, pa.float64()))
                    tables.write_parquet(
                        f"{curated_uri}/{name}", [out.filter(pa.array(kept))], plain=UNIQUE_STRINGS
                    )
                yield dict(lang=lang, file=name, rows=int(kept.sum()))

    return run


def _first_rows(uri: str, n: int, columns: list[str]) -> pa.Table:
    """The first n rows of a Parquet file, reading only the row groups that hold them."""
    fs, path = tables.filesystem(uri)
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        groups, total = [], 0
        while total < n:
            total += parquet.metadata.row_group(len(groups)).num_rows
            groups.append(len(groups))
        return parquet.read_row_groups(groups, columns=columns, use_threads=False).slice(0, n)
