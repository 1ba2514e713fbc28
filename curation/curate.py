"""The curation job (semantics doc, sections 3-9) as Spark stages.

records -> matches/ -> entry_counts/ -> thresholds/ -> curated/, each a table under the output
URI, then run.json and _SUCCESS. The full records cross one shuffle (docs/architecture.md):
1. matches: each input split's records are matched against their language's entries where they
   are read (input from extract_alt_text is partitioned by lang, so a worker holds few automata),
   hash-partitioned on uid, and each partition, in one Python pass, drops duplicate (uid, text)
   records, routes languages and marks the one text per image that section 8 chooses. Written
   once, the chosen rows first in every file.
2. entry_counts and thresholds read only (lang, entry_ids) of matches/.
3. curated: a map-only pass over the chosen rows (the keep draw needs the global counts).
Everything that decides what is kept is a pure function of (seed, uid, text) and the counts, so
partitioning and input order do not matter. `--plan per-stage` runs the previous plan
(curation/curate_legacy.py), whose output the tests compare against.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation import tables
from curation.balance import (
    T_EN_METACLIP2,
    entry_probabilities,
    keep_probabilities,
    keep_uniforms,
    tail_fraction,
    text_choice_keys,
    threshold_for_fraction,
)
from curation.matching import EntryMatcher

log = logging.getLogger("curate")

OTHER = "other"
PLANS = ("one-shuffle", "per-stage")
STAGES = ("matches", "entry_counts", "thresholds", "curated")
RECORD_COLUMNS = ("uid", "url", "page_url", "text", "lang")
MATCHED_SCHEMA = (
    "uid string, url string, page_url string, text string, lang string, entry_ids array<int>"
)
MATCHES_SCHEMA = MATCHED_SCHEMA + ", chosen boolean"
# what the job's own tables hold (schemas/tables.json; lang is the partition directory)
TABLE_SCHEMAS = {
    "matches": MATCHES_SCHEMA,
    "entry_counts": "lang string, entry_id int, entry string, count long",
    "thresholds": "lang string, t double, tail_fraction double, entries long, matched_records long",
    "curated": "uid string, url string, text string, lang string, entry_ids array<int>, "
    "keep_prob double",
}
UNIQUE_STRINGS = ("uid", "url", "text")  # written without Parquet dictionary pages
# A Python worker keeps automata up to this many entries (~0.7 KB each, so ~1.4 GB; English
# alone is ~0.5M in MetaCLIP 2's metadata), evicting the least recently used: 329 languages
# never all sit in one worker.
MATCHER_CACHE_ENTRIES = 2_000_000
PROBS_CACHE_ENTRIES = 50_000_000  # float64 keep probabilities, 400 MB
INPUT_BYTES_PER_TASK = 16 * 2**20  # ~100k alt-text records of Parquet input
OUTPUT_WRITERS_PER_TASK = 64  # open files per task (one per language) before Spark sorts


class CurationError(Exception):
    """A problem with the job's inputs or flags, reported as one line."""


@dataclass(frozen=True)
class CurateConfig:
    metadata: str
    input: str
    output: str
    t_en: float | None = T_EN_METACLIP2
    tail_fraction: float | None = None
    seed: int = 0
    format: str = "parquet"
    languages: tuple[str, ...] | None = None
    resume: bool = False
    salt_buckets: int = 1024
    lid_model: str | None = None
    partitions: int | None = None
    plan: str = "one-shuffle"

    def __post_init__(self):
        if self.tail_fraction is not None and not 0.0 < self.tail_fraction <= 1.0:
            raise CurationError(f"--tail-fraction must be in (0, 1], got {self.tail_fraction}")
        if self.tail_fraction is None and (self.t_en is None or self.t_en <= 0):
            raise CurationError("give a positive --t-en or a --tail-fraction")
        if self.format not in ("parquet", "delta"):
            raise CurationError(f"--format must be parquet or delta, got {self.format!r}")
        if self.plan not in PLANS:
            raise CurationError(f"--plan must be one of {', '.join(PLANS)}, got {self.plan!r}")


@dataclass
class RunReport:
    config: dict
    counts: dict = field(default_factory=dict)
    drops: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)


# --- executor side ---------------------------------------------------------------------------

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


def language_matcher(
    metadata_uri: str, lang: str, version: str = ""
) -> tuple[EntryMatcher, np.ndarray | None]:
    """The matcher of one language, built from the metadata table (never unpickled)."""

    def build():
        table = tables.read_partition(metadata_uri, lang, ["entry_id", "entry"])
        table = table.sort_by("entry_id")
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
    """mapInArrow function, before the shuffle: entry_ids of each input record against the
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


def choose_records(seed: int, metadata_langs: list[str]):
    """mapInArrow function, after the shuffle on uid (a partition holds every copy of its
    images): distinct records, routed languages and the chosen flag, in one pass. Rows come out
    grouped by lang, chosen ones first, each group in (uid, text) order."""
    known = pa.array(sorted(metadata_langs), pa.string())

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = [b for b in batches if b.num_rows]
        if batches:
            table = pa.Table.from_batches(batches).combine_chunks()
            yield from partition_records(table, seed, known).to_batches(max_chunksize=65536)

    return run


def partition_records(table: pa.Table, seed: int, known: pa.Array) -> pa.Table:
    """The matches/ rows of one partition (see choose_records). The full rows are copied once,
    into their final order; only images with several rows pay for comparing texts."""
    keys = [("uid", "ascending", "at_end"), ("text", "ascending", "at_end")]
    order = pc.sort_indices(table, sort_keys=[*keys, ("lang", "ascending", "at_end")])
    order = order.to_numpy()
    uid = table.column("uid").take(order)
    image = np.cumsum(_run_starts(uid)) - 1
    first = np.ones(order.size, dtype=np.bool_)  # the first copy of each distinct (uid, text)
    several = np.flatnonzero(np.bincount(image)[image] > 1)
    if several.size:
        texts = table.column("text").take(order[several])
        first[several] = _run_starts(uid.take(several), texts)
    rows, image = order[first], image[first]  # one row per record, smallest lang first
    lang = table.column("lang").take(rows)
    lang = pc.if_else(pc.is_in(lang, value_set=known), lang, pa.scalar(OTHER)).combine_chunks()
    chosen = chosen_texts(seed, table, rows, image)
    encoded = pc.dictionary_encode(lang)
    rank = np.argsort(np.argsort(np.array(encoded.dictionary.to_pylist(), dtype=object)))
    final = np.lexsort((~chosen, rank[encoded.indices.to_numpy()]))
    out = table.take(rows[final])
    if not first.all():  # url and page_url: the smallest of the record's copies
        group = np.cumsum(first) - 1
        out = _smallest_of_copies(out, table, order, group, final)
    out = out.set_column(out.schema.get_field_index("lang"), "lang", lang.take(final))
    return out.append_column("chosen", pa.array(chosen[final]))


def _smallest_of_copies(out, table, order, group, final) -> pa.Table:
    """`out` (records in `final` order) with url and page_url replaced, for the records that had
    several copies, by the smallest non-null value among them (Spark's min)."""
    copies = np.flatnonzero(np.bincount(group)[group] > 1)
    subset = table.select(["url", "page_url"]).take(order[copies])
    smallest = (
        subset.append_column("g", pa.array(group[copies]))
        .group_by("g", use_threads=False)
        .aggregate([("url", "min"), ("page_url", "min")])
    )
    position = np.empty(final.size, dtype=np.int64)
    position[final] = np.arange(final.size)  # record (in uid order) -> row of out
    where = position[smallest.column("g").to_numpy()]
    ascending = np.argsort(where)
    mask = np.zeros(final.size, dtype=np.bool_)
    mask[where] = True
    for name in ("url", "page_url"):
        values = smallest.column(f"{name}_min").take(pa.array(ascending))
        column = pc.replace_with_mask(out.column(name), pa.array(mask), values.combine_chunks())
        out = out.set_column(out.schema.get_field_index(name), name, column)
    return out


def _run_starts(*columns) -> np.ndarray:
    """True where a row differs from the previous one in any of the (sorted) columns."""
    n = len(columns[0])
    starts = np.ones(n, dtype=np.bool_)
    if n > 1:
        same = None
        for column in columns:
            equal = pc.equal(column.slice(1), column.slice(0, n - 1))
            same = equal if same is None else pc.and_(same, equal)
        starts[1:] = ~pc.fill_null(same, False).to_numpy(zero_copy_only=False)
    return starts


def chosen_texts(seed: int, table: pa.Table, rows: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Section 8's one text per image, for records `rows` of `table` in (uid, text) order
    (`image` numbers their uids): among an image's matched texts the smallest
    (text_choice_key, text). Only images with several matched texts hash a key."""
    lengths = pc.list_value_length(table.column("entry_ids").take(rows))
    chosen = pc.fill_null(lengths, 0).to_numpy(zero_copy_only=False) > 0
    matched = np.flatnonzero(chosen)
    if matched.size < 2:
        return chosen
    shared = np.bincount(image[matched], minlength=image[-1] + 1)[image[matched]] > 1
    matched = matched[shared]
    if not matched.size:
        return chosen
    candidates = pa.array(rows[matched])
    choice = text_choice_keys(
        seed,
        table.column("uid").take(candidates).to_pylist(),
        table.column("text").take(candidates).to_pylist(),
    )
    group = image[matched]
    order = np.lexsort((np.array(choice, dtype=np.uint64), group))  # stable: ties keep text order
    best = np.ones(order.size, dtype=np.bool_)
    best[1:] = group[order][1:] != group[order][:-1]
    chosen[matched[order[~best]]] = False
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


def keep_batches(counts_uri: str, thresholds: dict[str, float], seed: int, version: str):
    """mapInArrow function over the chosen rows: the keep probability of each, kept when the
    image's seeded draw falls below it."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            keep_probs = batch_keep_probabilities(batch, counts_uri, thresholds, version)
            kept = keep_uniforms(seed, batch.column("uid").to_pylist()) < keep_probs
            if kept.any():
                columns = [batch.column(c) for c in ("uid", "url", "text", "lang", "entry_ids")]
                out = pa.RecordBatch.from_arrays(
                    [*columns, pa.array(keep_probs, pa.float64())],
                    names=["uid", "url", "text", "lang", "entry_ids", "keep_prob"],
                )
                yield out.filter(pa.array(kept))

    return run


# --- driver side -----------------------------------------------------------------------------


def compute_thresholds(
    nonzero_counts: dict[str, np.ndarray], t_en: float | None, p: float | None
) -> dict[str, tuple[float, float]]:
    """{lang: (t, tail_fraction)} per section 7, for every language with at least one match."""
    if p is None:
        if "en" not in nonzero_counts:
            raise CurationError(
                "no English record matched, so --t-en cannot set the tail fraction; "
                "pass --tail-fraction instead"
            )
        p = tail_fraction(nonzero_counts["en"], t_en)
    result = {}
    for lang, counts in sorted(nonzero_counts.items()):
        t = float(t_en) if lang == "en" and t_en is not None else threshold_for_fraction(counts, p)
        result[lang] = (float(t), p)
    return result


class CurationJob:
    def __init__(self, spark, config: CurateConfig):
        self.spark = spark
        self.config = config
        self.fs = tables.HadoopFS(spark)
        self.report = RunReport(config={k: v for k, v in asdict(config).items()})
        self.out = config.output.rstrip("/")
        self.fingerprints: dict[str, str] = {}
        self.input_bytes = 0
        self._match_stats: dict[str, tuple[int, int]] | None = None

    def table_uri(self, name: str) -> str:
        return f"{self.out}/{name}"

    def read(self, name: str):
        return tables.read_table(self.spark, self.table_uri(name), TABLE_SCHEMAS[name])

    def input_counts_uri(self) -> str:
        return f"{self.out}/_stages/input_counts.json"

    # stages ----------------------------------------------------------------------------------

    def run(self) -> RunReport:
        started = time.perf_counter()
        self.check_output_writable()
        self.fs.delete(f"{self.out}/_SUCCESS")
        self.fs.delete(f"{self.out}/run.json")
        self.metadata_langs = self.metadata_languages()
        records, observed = self.load_records()
        fingerprint = self.input_fingerprint()
        from curation.spark import size_shuffle_partitions

        size_shuffle_partitions(self.spark, self.input_bytes)  # unless the user set them
        self.stage("matches", fingerprint, lambda: self.write_matches(records, observed))
        if "input_records" not in self.report.counts:  # matches skipped: counted by the last run
            self.report_input_counts(json.loads(self.fs.read_text(self.input_counts_uri())))
        # the counts do not depend on the seed (the chosen flags of matches/ do): a new seed
        # reruns matches and curated only
        fp = self.fingerprint("matches", fingerprint, self.stage_flags("matches", seed=False))
        fp = self.stage("entry_counts", fp, self.write_entry_counts)
        fp = self.stage("thresholds", fp, self.write_thresholds)
        self.stage("curated", fp, self.write_curated)
        self.collect_counts()
        self.report.stages["total_s"] = round(time.perf_counter() - started, 2)
        self.fs.write_text(
            f"{self.out}/run.json", json.dumps(asdict(self.report), indent=2, sort_keys=True)
        )
        self.fs.write_text(f"{self.out}/_SUCCESS", "")
        log.info("done in %.1fs: %s", time.perf_counter() - started, self.out)
        return self.report

    def check_output_writable(self) -> None:
        try:
            self.fs.check_writable(self.out)
        except OSError as error:
            raise CurationError(str(error)) from None

    def stage_flags(self, name: str, seed: bool = True) -> list:
        config = self.config
        return {
            "matches": [config.languages, config.plan]
            + ([config.seed] if seed and config.plan == "one-shuffle" else []),
            "entry_counts": [],
            "thresholds": [config.t_en, config.tail_fraction],
            "curated": [config.seed, config.plan],
        }[name]

    def fingerprint(self, name: str, previous: str, flags: list) -> str:
        parts = [previous, name, flags, self.config.format, tables.code_version()]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def stage(self, name: str, previous: str, build) -> str:
        fingerprint = self.fingerprint(name, previous, self.stage_flags(name))
        self.fingerprints[name] = fingerprint
        marker = f"{self.out}/_stages/{name}.json"
        if (
            self.config.resume
            and self.fs.read_text(marker) == fingerprint
            and self.fs.exists(f"{self.table_uri(name)}/_SUCCESS")
        ):
            log.info("stage %s: unchanged inputs and flags, skipped (--resume)", name)
            self.report.stages[name] = "skipped"
            return fingerprint
        self.fs.delete(marker)
        started = time.perf_counter()
        log.info("stage %s: started", name)
        build()
        elapsed = time.perf_counter() - started
        self.report.stages[name] = round(elapsed, 2)
        self.fs.write_text(marker, fingerprint)
        log.info("stage %s: done in %.1fs", name, elapsed)
        return fingerprint

    def metadata_languages(self) -> list[str]:
        if not self.fs.exists(self.config.metadata):
            raise CurationError(f"metadata {self.config.metadata} does not exist")
        langs = self.fs.partition_values(self.config.metadata, "lang")
        if not langs:
            raise CurationError(f"metadata {self.config.metadata}: no lang=... partitions found")
        if self.config.languages:
            missing = sorted(set(self.config.languages) - set(langs))
            if missing:
                raise CurationError(
                    f"metadata {self.config.metadata} has no language {', '.join(missing)}"
                )
            return sorted(self.config.languages)
        return sorted(langs)

    def input_fingerprint(self) -> str:
        parts = [self.config.input, self.config.metadata]
        parts += [
            self.fs.content_summary(self.config.input),
            self.fs.content_summary(self.config.metadata),
        ]
        self.input_bytes = parts[2][0]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def load_records(self):
        """The input records with a uid, url and text (duplicates included, lang as given), and
        an Observation that counts the input rows while the matches stage reads them."""
        from pyspark.sql import Observation
        from pyspark.sql import functions as F

        if not self.fs.exists(self.config.input):
            raise CurationError(f"input {self.config.input} does not exist")
        df = tables.read_table(self.spark, self.config.input)
        missing = [c for c in ("url", "text") if c not in df.columns]
        if missing:
            raise CurationError(
                f"input {self.config.input} lacks column(s) {', '.join(missing)} "
                f"(has: {', '.join(df.columns)})"
            )
        if "page_url" not in df.columns:
            df = df.withColumn("page_url", F.lit(None).cast("string"))
        if "uid" not in df.columns:
            df = df.withColumn("uid", tables.image_uid_column(F.col("url"), F.col("page_url")))
        if "lang" not in df.columns:
            log.info(
                "input has no lang column: identifying languages with %s",
                self.config.lid_model or "lid.176",
            )
            df = tables.with_language(df, self.config.lid_model)
        df = df.select(
            F.col("uid").cast("string"),
            F.col("url").cast("string"),
            F.col("page_url").cast("string"),
            F.col("text").cast("string"),
            F.col("lang").cast("string"),
        )
        observed = Observation("input")
        is_null = F.col("text").isNull() | F.col("url").isNull() | F.col("uid").isNull()
        df = df.observe(
            observed,
            F.count(F.lit(1)).alias("records"),
            F.coalesce(F.sum(is_null.cast("long")), F.lit(0)).alias("null"),
        )
        df = df.where(
            F.col("text").isNotNull() & F.col("url").isNotNull() & F.col("uid").isNotNull()
        )
        return df, observed

    def report_input_counts(self, counts: dict) -> None:
        if not counts["records"]:
            raise CurationError(f"input {self.config.input} has no records")
        self.report.counts["input_records"] = int(counts["records"])
        self.report.drops["null_text_or_url"] = int(counts["null"])

    def write_matches(self, records, observed) -> None:
        if self.config.plan == "per-stage":
            from curation import curate_legacy

            curate_legacy.write_matches(self, records)
        else:
            version = self.fingerprints["matches"]
            matched = records.mapInArrow(
                match_records(self.config.metadata, version, self.metadata_langs), MATCHED_SCHEMA
            )
            # the one shuffle of full records: every copy of an image lands in one partition
            shuffled = matched.repartition(self.matching_partitions(), "uid")
            chosen = shuffled.mapInArrow(
                choose_records(self.config.seed, self.metadata_langs), MATCHES_SCHEMA
            )
            self.write(chosen, "matches")
        counts = {k: int(v or 0) for k, v in observed.get.items()}
        self.report_input_counts(counts)
        self.fs.write_text(self.input_counts_uri(), json.dumps(counts))

    def write(self, df, name: str) -> None:
        """A table partitioned by lang, as the rows come (no sort: each task's rows are grouped
        by lang already), unique strings without dictionary pages."""
        options = {f"parquet.enable.dictionary#{c}": "false" for c in UNIQUE_STRINGS}
        with _session_conf(self.spark, UNSORTED_PARTITIONED_WRITES):
            tables.write_table(df, self.table_uri(name), self.config.format, ["lang"], options)

    def matching_partitions(self) -> int:
        """--partitions, else one task per ~INPUT_BYTES_PER_TASK of input (at least one per
        core, at most spark.sql.shuffle.partitions unless there are more cores)."""
        if self.config.partitions:
            return self.config.partitions
        cores = self.spark.sparkContext.defaultParallelism
        wanted = -(-self.input_bytes // INPUT_BYTES_PER_TASK)
        limit = int(self.spark.conf.get("spark.sql.shuffle.partitions"))
        return max(cores, min(wanted, max(limit, cores)))

    def write_entry_counts(self) -> None:
        from pyspark.sql import functions as F

        matches = self.read("matches")
        run_langs = self.fs.partition_values(self.table_uri("matches"), "lang")
        per_entry = (
            matches.select("lang", F.explode("entry_ids").alias("entry_id"))
            .groupBy("lang", "entry_id")
            .agg(F.count(F.lit(1)).alias("count"))
        )
        metadata = tables.read_table(self.spark, self.config.metadata).where(
            F.col("lang").isin(run_langs)
        )
        counts = (
            metadata.select("lang", F.col("entry_id").cast("int"), "entry")
            .join(per_entry, ["lang", "entry_id"], "left")
            .select(
                "lang",
                "entry_id",
                "entry",
                F.coalesce("count", F.lit(0)).cast("long").alias("count"),
            )
        )
        tables.write_table(counts, self.table_uri("entry_counts"), self.config.format, ["lang"])

    def write_thresholds(self) -> None:
        from pyspark.sql import functions as F

        rows = (
            self.read("entry_counts")
            .groupBy("lang")
            .agg(
                F.collect_list(F.when(F.col("count") > 0, F.col("count"))).alias("counts"),
                F.count(F.lit(1)).alias("entries"),
            )
            .collect()
        )
        entries = {r["lang"]: r["entries"] for r in rows}
        nonzero = {r["lang"]: np.asarray(r["counts"], dtype=np.int64) for r in rows if r["counts"]}
        if not nonzero:
            raise CurationError(f"no record of {self.config.input} matched any metadata entry")
        thresholds = compute_thresholds(
            nonzero,
            self.config.t_en if self.config.tail_fraction is None else None,
            self.config.tail_fraction,
        )
        stats = self.match_stats()
        table = [
            (
                lang,
                float(t),
                float(p),
                int(entries.get(lang, 0)),
                int(stats.get(lang, (0, 0))[1] or 0),
            )
            for lang, (t, p) in sorted(thresholds.items())
        ]
        df = self.spark.createDataFrame(
            table, "lang string, t double, tail_fraction double, entries long, matched_records long"
        )
        tables.write_table(df.coalesce(1), self.table_uri("thresholds"), self.config.format, None)
        for lang, (t, p) in sorted(thresholds.items()):
            log.info(
                "  %s: t=%g tail_fraction=%.4f matched_records=%s",
                lang,
                t,
                p,
                stats.get(lang, (0, 0))[1],
            )

    def read_thresholds(self) -> dict[str, float]:
        rows = self.read("thresholds").collect()
        return {r["lang"]: r["t"] for r in rows}

    def write_curated(self) -> None:
        if self.config.plan == "per-stage":
            from curation import curate_legacy

            curate_legacy.write_curated(self)
            return
        from pyspark.sql import functions as F

        chosen = (
            self.read("matches")
            .where(F.col("chosen"))
            .select("uid", "url", "text", "lang", "entry_ids")
        )
        kept = chosen.mapInArrow(
            keep_batches(
                self.table_uri("entry_counts"),
                self.read_thresholds(),
                self.config.seed,
                self.fingerprints["entry_counts"],
            ),
            TABLE_SCHEMAS["curated"],
        )
        self.write(kept, "curated")

    def match_stats(self) -> dict[str, tuple[int, int]]:
        """lang -> (records, matched records) of the matches table, computed once per run."""
        from pyspark.sql import functions as F

        if self._match_stats is None:
            rows = (
                self.read("matches")
                .groupBy("lang")
                .agg(
                    F.count(F.lit(1)).alias("records"),
                    F.sum((F.size("entry_ids") > 0).cast("long")).alias("matched"),
                )
                .collect()
            )
            self._match_stats = {r["lang"]: (int(r["records"]), int(r["matched"])) for r in rows}
        return self._match_stats

    def collect_counts(self) -> None:
        per_lang = dict(self.match_stats())
        counts, drops = self.report.counts, self.report.drops
        drops["no_metadata_language"] = per_lang.pop(OTHER, (0, 0))[0]
        counts["distinct_records"] = (
            sum(r for r, _ in per_lang.values()) + drops["no_metadata_language"]
        )
        counts["records_per_lang"] = {k: v[0] for k, v in sorted(per_lang.items())}
        counts["matched_records"] = sum(m for _, m in per_lang.values())
        counts["curated_per_lang"] = dict(
            sorted(
                (r["lang"], int(r["count"]))
                for r in self.read("curated").groupBy("lang").count().collect()
            )
        )
        counts["curated_records"] = sum(counts["curated_per_lang"].values())
        log.info(
            "records in %s, distinct %s, no metadata language %s, matched %s, curated %s",
            counts["input_records"],
            counts["distinct_records"],
            drops["no_metadata_language"],
            counts["matched_records"],
            counts["curated_records"],
        )


# Spark sorts every task's rows by the partition columns before a partitioned write unless
# planned writes are off and concurrent writers (one open file per language) are allowed.
UNSORTED_PARTITIONED_WRITES = {
    "spark.sql.optimizer.plannedWrite.enabled": "false",
    "spark.sql.maxConcurrentOutputFileWriters": str(OUTPUT_WRITERS_PER_TASK),
}
# Arrow batches to the Python workers are capped by rows (10,000) only: with a byte cap too
# Spark sizes the batch being built after every row.
UNCAPPED_ARROW_BYTES = {"spark.sql.execution.arrow.maxBytesPerBatch": str(2**31 - 1)}


@contextlib.contextmanager
def _session_conf(spark, settings: dict[str, str]):
    """Runtime SQL settings for the duration of a block, then the previous values back."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def run(spark, config: CurateConfig) -> RunReport:
    with _session_conf(spark, UNCAPPED_ARROW_BYTES):
        return CurationJob(spark, config).run()
