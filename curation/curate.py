"""The curation job (semantics doc, sections 3-9) as Spark stages.

records -> matches/ -> entry_counts/ -> thresholds/ -> curated/, each a table under the output
URI, then run.json and _SUCCESS. Matching and balancing run in Python workers (mapInArrow) with
the same library code the tests use as reference; everything that decides what is kept is a pure
function of (seed, uid, text) and the counts, so partitioning and input order do not matter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

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
STAGES = ("matches", "entry_counts", "thresholds", "curated")
MATCHES_SCHEMA = (
    "uid string, url string, page_url string, text string, lang string, entry_ids array<int>"
)
# what the job's own tables hold (schemas/tables.json; lang is the partition directory)
TABLE_SCHEMAS = {
    "matches": MATCHES_SCHEMA,
    "entry_counts": "lang string, entry_id int, entry string, count long",
    "thresholds": "lang string, t double, tail_fraction double, entries long, matched_records long",
    "curated": "uid string, url string, text string, lang string, entry_ids array<int>, "
    "keep_prob double",
}
CANDIDATES_SCHEMA = (
    "uid string, url string, text string, lang string, entry_ids array<int>, "
    "keep_prob double, choice long, draw double"
)
MATCHERS_PER_WORKER = 4
INPUT_BYTES_PER_TASK = 16 * 2**20  # ~100k alt-text records of Parquet input


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

    def __post_init__(self):
        if self.tail_fraction is not None and not 0.0 < self.tail_fraction <= 1.0:
            raise CurationError(f"--tail-fraction must be in (0, 1], got {self.tail_fraction}")
        if self.tail_fraction is None and (self.t_en is None or self.t_en <= 0):
            raise CurationError("give a positive --t-en or a --tail-fraction")
        if self.format not in ("parquet", "delta"):
            raise CurationError(f"--format must be parquet or delta, got {self.format!r}")


@dataclass
class RunReport:
    config: dict
    counts: dict = field(default_factory=dict)
    drops: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)


# --- executor side ---------------------------------------------------------------------------

_MATCHERS: OrderedDict = OrderedDict()
_PROBS: OrderedDict = OrderedDict()


def _cached(cache: OrderedDict, key, build):
    """A small per-worker LRU: data is sorted by lang, so a worker holds few languages at once."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = build()
    if len(cache) > MATCHERS_PER_WORKER:
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
        return EntryMatcher(table.column("entry").to_pylist()), None if identity else entry_ids

    return _cached(_MATCHERS, (metadata_uri, version, lang), build)


def match_batches(metadata_uri: str, version: str = ""):
    """mapInArrow function: adds entry_ids to records sorted (within the partition) by lang.

    `version` identifies the metadata's content: a reused worker never serves a cached automaton
    of a table that was rebuilt since."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            langs = batch.column("lang").to_numpy(zero_copy_only=False)
            if len(langs) == 0:
                continue
            cuts = np.flatnonzero(langs[1:] != langs[:-1]) + 1
            for start, stop in zip([0, *cuts], [*cuts, len(langs)]):
                part = batch.slice(start, stop - start)
                if langs[start] == OTHER:  # no metadata language: kept, so it is counted
                    matched = pa.array([[]] * len(part), pa.list_(pa.int32()))
                    yield _with_entry_ids(part, matched)
                    continue
                matcher, entry_ids = language_matcher(metadata_uri, langs[start], version)
                matched = matcher.match_arrow(part.column("text"))
                if entry_ids is not None:
                    values = entry_ids[matched.values.to_numpy()]
                    matched = pa.ListArray.from_arrays(matched.offsets, pa.array(values))
                yield _with_entry_ids(part, matched)

    return run


def _with_entry_ids(part: pa.RecordBatch, entry_ids: pa.Array) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [*(part.column(c) for c in ("uid", "url", "page_url", "text", "lang")), entry_ids],
        names=["uid", "url", "page_url", "text", "lang", "entry_ids"],
    )


def language_probabilities(counts_uri: str, lang: str, t: float, version: str = "") -> np.ndarray:
    """prob per entry id of one language, from its entry_counts partition (zeros included)."""

    def build():
        table = tables.read_partition(counts_uri, lang, ["entry_id", "count"])
        ids = table.column("entry_id").to_numpy()
        counts = np.zeros(int(ids.max()) + 1 if ids.size else 0, dtype=np.int64)
        counts[ids] = table.column("count").to_numpy()
        return entry_probabilities(counts, t)

    return _cached(_PROBS, (counts_uri, version, lang, t), build)


def candidate_batches(counts_uri: str, thresholds: dict[str, float], seed: int, version: str):
    """mapInArrow function: keep probability, choice key and keep draw of each matched record."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            entry_ids = batch.column("entry_ids")
            offsets = entry_ids.offsets.to_numpy()
            values = entry_ids.values.to_numpy()
            langs = batch.column("lang").to_numpy(zero_copy_only=False)
            keep_probs = np.empty(batch.num_rows, dtype=np.float64)
            for lang in dict.fromkeys(langs):
                rows = np.flatnonzero(langs == lang)
                probs = language_probabilities(counts_uri, lang, thresholds[lang], version)
                keep_probs[rows] = keep_probabilities(probs, offsets, values, rows)
            uids = batch.column("uid").to_pylist()
            # order kept, fits a long
            choices = [
                key - 2**63
                for key in text_choice_keys(seed, uids, batch.column("text").to_pylist())
            ]
            yield pa.RecordBatch.from_arrays(
                [
                    *(batch.column(c) for c in ("uid", "url", "text", "lang")),
                    pa.ListArray.from_arrays(entry_ids.offsets, entry_ids.values),
                    pa.array(keep_probs, pa.float64()),
                    pa.array(choices, pa.int64()),
                    pa.array(keep_uniforms(seed, uids), pa.float64()),
                ],
                names=["uid", "url", "text", "lang", "entry_ids", "keep_prob", "choice", "draw"],
            )

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
        metadata_langs = self.metadata_languages()
        records, observed = self.load_records(metadata_langs)
        fingerprint = self.input_fingerprint()
        from curation.spark import size_shuffle_partitions

        size_shuffle_partitions(self.spark, self.input_bytes)  # unless the user set them
        fp = self.stage("matches", fingerprint, lambda: self.write_matches(records, observed))
        if "input_records" not in self.report.counts:  # matches skipped: counted by the last run
            self.report_input_counts(json.loads(self.fs.read_text(self.input_counts_uri())))
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

    def stage(self, name: str, previous: str, build) -> str:
        flags = {
            "matches": [self.config.languages],
            "entry_counts": [],
            "thresholds": [self.config.t_en, self.config.tail_fraction],
            "curated": [self.config.seed],
        }[name]
        fingerprint = hashlib.sha256(
            json.dumps([previous, name, flags, self.config.format, tables.code_version()]).encode()
        ).hexdigest()
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

    def load_records(self, metadata_langs: list[str]):
        """The distinct (uid, text) records, and an Observation that counts the input rows while
        the matches stage reads them (no separate pass over the input)."""
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
        # one record per distinct (uid, text); the other columns are chosen deterministically
        df = df.groupBy("uid", "text").agg(
            F.min("url").alias("url"),
            F.min("page_url").alias("page_url"),
            F.min("lang").alias("lang"),
        )
        known = set(metadata_langs)
        routed = F.when(F.col("lang").isin(list(known)), F.col("lang")).otherwise(F.lit(OTHER))
        df = df.withColumn("lang", routed)
        return df, observed

    def report_input_counts(self, counts: dict) -> None:
        if not counts["records"]:
            raise CurationError(f"input {self.config.input} has no records")
        self.report.counts["input_records"] = int(counts["records"])
        self.report.drops["null_text_or_url"] = int(counts["null"])

    def write_matches(self, records, observed) -> None:
        from pyspark.sql import functions as F

        # Range partitioning on (lang, salt) keeps each small language in one task (few automata
        # per worker) and cuts a hot language into as many tasks as its share of the records.
        salt = F.abs(F.xxhash64("uid")) % self.config.salt_buckets
        spread = (
            records.withColumn("_salt", salt)
            .repartitionByRange(self.matching_partitions(), "lang", "_salt")
            .sortWithinPartitions("lang")
        )
        matched = spread.select("uid", "url", "page_url", "text", "lang").mapInArrow(
            match_batches(self.config.metadata, self.fingerprints["matches"]), MATCHES_SCHEMA
        )
        tables.write_table(matched, self.table_uri("matches"), self.config.format, ["lang"])
        counts = {k: int(v or 0) for k, v in observed.get.items()}
        self.report_input_counts(counts)
        self.fs.write_text(self.input_counts_uri(), json.dumps(counts))

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
        from pyspark.sql import functions as F

        thresholds = self.read_thresholds()
        matches = self.read("matches").where(F.size("entry_ids") > 0)
        candidates = matches.select("uid", "url", "text", "lang", "entry_ids").mapInArrow(
            candidate_batches(
                self.table_uri("entry_counts"),
                thresholds,
                self.config.seed,
                self.fingerprints["entry_counts"],
            ),
            CANDIDATES_SCHEMA,
        )
        chosen = candidates.groupBy("uid").agg(
            F.min(
                F.struct("choice", "text", "url", "lang", "entry_ids", "keep_prob", "draw")
            ).alias("c")
        )
        kept = chosen.where(F.col("c.draw") < F.col("c.keep_prob")).select(
            "uid",
            F.col("c.url").alias("url"),
            F.col("c.text").alias("text"),
            F.col("c.lang").alias("lang"),
            F.col("c.entry_ids").alias("entry_ids"),
            F.col("c.keep_prob").alias("keep_prob"),
        )
        ordered = kept.repartition("lang").sortWithinPartitions("lang", "uid")
        tables.write_table(ordered, self.table_uri("curated"), self.config.format, ["lang"])

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


def run(spark, config: CurateConfig) -> RunReport:
    return CurationJob(spark, config).run()
