"""The curation job (docs/semantics.md, sections 3-9) as Spark stages, on the driver.

records -> matches/ -> entry_counts/ -> thresholds/ -> curated/, each a table under the output
URI, then run.json and _SUCCESS. Python tasks (curation/curate/tasks.py) read, match, choose
and write every record with pyarrow; Spark schedules them and moves narrow rows
(docs/architecture.md); tasks.py holds what they run:
1. matches (one Spark job): map tasks read input splits, match each record against its
   language's entries where it is read and send the records on as one Arrow blob per reduce
   partition of their uid hash (curate/exchange.py: its bytes through Spark's shuffle, or with
   a local master a file whose path crosses it), a few pairs per (map task, partition). The
   steps are RDDs of Python tasks: no SQL query is planned for them. Each reduce task holds
   every copy of its images and, in one Python pass, drops duplicate (uid, text) records,
   routes languages, marks the one text per image that section 8 chooses, writes its
   matches/ files (chosen rows first) and its partial entry counts.
2. entry_counts sums the partial counts; thresholds are computed from them on the driver.
3. curated: a map-only pass over the chosen rows of matches/ (the keep draw needs the global
   counts).
Everything that decides what is kept is a pure function of (seed, uid, text) and the counts, so
partitioning and input order do not matter: the tests pin the tables against the one-process
reference of the rules, `balance.sample_records`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from curation.balance import T_EN_METACLIP2, compute_thresholds
from curation.core import tables
from curation.core.arrays import run_starts
from curation.core.jobs import CurationError
from curation.core.spark import (
    KEEP_FREED_MEMORY,
    LOCAL_JAVA_OPTIONS,
    HadoopFS,
    MissingConnector,
    get_spark,
    python_worker_env,
    size_shuffle_partitions,
)
from curation.curate import exchange, input_splits, recount
from curation.curate import tasks as curate_tasks
from curation.curate.tasks import OTHER, RECORD_COLUMNS

log = logging.getLogger("curate")

INPUT_READERS = ("auto", "pyarrow", "spark")
STAGES = ("matches", "entry_counts", "thresholds", "curated")
# what the job's own tables hold, for Spark readers (schemas/tables.json; lang is the partition
# directory): matches/ is the records that crossed the shuffle, plus the chosen flag
TABLE_SCHEMAS = {
    "matches": from_arrow_schema(exchange.RECORD_SCHEMA.append(pa.field("chosen", pa.bool_()))),
    "entry_counts": "lang string, entry_id int, entry string, count long",
    "thresholds": "lang string, t double, tail_fraction double, entries long, matched_records long",
    "curated": "uid string, url string, text string, lang string, entry_ids array<int>, "
    "keep_prob double",
}
INPUT_BYTES_PER_TASK = 16 * 2**20  # ~100k alt-text records of Parquet input
SPLIT_BYTES_PER_PARTITION = 8 * 2**10  # ~50 records per partition and map task, at least


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
    lid_model: str | None = None
    partitions: int | None = None
    input_reader: str = "auto"
    recount_from: str | None = None  # shards of the images that downloaded (recount.py)
    exchange: str = "auto"  # how blobs reach the reduce tasks (exchange.py): same tables

    def __post_init__(self):
        if self.tail_fraction is not None and not 0.0 < self.tail_fraction <= 1.0:
            raise CurationError(f"--tail-fraction must be in (0, 1], got {self.tail_fraction}")
        if self.tail_fraction is None and (self.t_en is None or self.t_en <= 0):
            raise CurationError("give a positive --t-en or a --tail-fraction")
        if self.format not in ("parquet", "delta"):
            raise CurationError(f"--format must be parquet or delta, got {self.format!r}")
        if self.partitions is not None and self.partitions < 1:
            raise CurationError(f"--partitions must be at least 1, got {self.partitions}")
        if self.exchange not in exchange.EXCHANGES:
            raise CurationError(
                f"--exchange must be one of {', '.join(exchange.EXCHANGES)}, got {self.exchange!r}"
            )
        if self.input_reader not in INPUT_READERS:
            raise CurationError(
                f"--input-reader must be one of {', '.join(INPUT_READERS)}, "
                f"got {self.input_reader!r}"
            )


@dataclass
class CurateReport:
    """What a run did (written as run.json): its flags, counts, drop reasons, stage timings."""

    config: dict
    counts: dict = field(default_factory=dict)
    drops: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)
    recount: dict = field(default_factory=dict)  # --recount-from: the shards, t and kept before
    exchange: str = ""  # how the records crossed to the reduce tasks: files or shuffle

    def summary(self, output: str) -> str:
        curated, matched = self.counts["curated_records"], self.counts["matched_records"]
        return f"curated {curated:,} of {matched:,} matched records -> {output}"


class CurationJob:
    def __init__(self, spark, config: CurateConfig):
        self.spark = spark
        self.config = config
        self.report = CurateReport(config={k: v for k, v in asdict(config).items()})
        self.out = config.output.rstrip("/")
        self.fingerprints: dict[str, str] = {}
        self.input_bytes = 0
        self._match_stats: dict[str, tuple[int, int]] | None = None
        self.derive: tuple[str, ...] = ()  # columns (uid, lang) the map tasks derive
        self.code_version = tables.code_version()  # hashes the sources: once per run

    def _exists(self, uri: str) -> bool:
        """Whether the input exists: asked of pyarrow, else (a filesystem only Spark reaches,
        read with `--input-reader spark`) of Hadoop's filesystem layer."""
        try:
            return tables.exists(uri)
        except (pa.ArrowException, OSError, ValueError):
            return HadoopFS(self.spark).exists(uri)

    def _content_summary(self, uri: str) -> list[int]:
        try:
            return tables.content_summary(uri)
        except (pa.ArrowException, ValueError, OSError):
            return HadoopFS(self.spark).content_summary(uri)

    def table_uri(self, name: str) -> str:
        return f"{self.out}/{name}"

    def summary_uri(self, name: str) -> str:
        """What a stage found out (counts, the files it wrote): `--resume` reads it back."""
        return f"{self.out}/_stages/{name}_summary.json"

    def read_summary(self, name: str) -> dict:
        return json.loads(tables.read_text(self.summary_uri(name)))

    # stages ----------------------------------------------------------------------------------

    def run(self) -> CurateReport:
        started = time.perf_counter()
        self.check_output_writable()
        try:
            self.blob_files = exchange.uses_files(
                self.config.exchange, self.spark.sparkContext.master
            )
        except ValueError as error:
            raise CurationError(str(error)) from None
        tables.delete(f"{self.out}/_SUCCESS")
        tables.delete(f"{self.out}/run.json")
        self.metadata_langs = self.metadata_languages()
        if not self._exists(self.config.input):
            raise CurationError(f"input {self.config.input} does not exist")
        survivors = self.write_survivors() if self.config.recount_from else None
        fingerprint = self.input_fingerprint(survivors)
        size_shuffle_partitions(self.spark, self.input_bytes)  # unless the user set them
        source = self.open_input()
        self.stage("matches", fingerprint, lambda: self.write_matches(source))
        if "input_records" not in self.report.counts:  # matches skipped: counted by the last run
            self.report_input_counts(self.read_summary("matches")["input"])
        # the counts do not depend on the seed (the chosen flags of matches/ do): a new seed
        # reruns matches and curated only
        fp = self.fingerprint("matches", fingerprint, self.stage_flags("matches", seed=False))
        fp = self.stage("entry_counts", fp, self.write_entry_counts)
        fp = self.stage("thresholds", fp, self.write_thresholds)
        self.stage("curated", fp, self.write_curated)
        self.collect_counts()
        self.report.stages["total_s"] = round(time.perf_counter() - started, 2)
        tables.write_text(
            f"{self.out}/run.json", json.dumps(asdict(self.report), indent=2, sort_keys=True)
        )
        tables.write_success(self.out)
        log.info("done in %.1fs: %s", time.perf_counter() - started, self.out)
        return self.report

    def check_output_writable(self) -> None:
        try:  # the driver and the tasks write with pyarrow
            tables.check_writable(self.out)
        except (OSError, pa.ArrowException) as error:
            raise CurationError(f"cannot write to output {self.out}: {error}") from None

    def stage_flags(self, name: str, seed: bool = True) -> list:
        config = self.config
        return {
            "matches": [config.languages] + ([config.seed] if seed else []),
            "entry_counts": [],
            "thresholds": [config.t_en, config.tail_fraction],
            "curated": [config.seed],
        }[name]

    def fingerprint(self, name: str, previous: str, flags: list) -> str:
        parts = [previous, name, flags, self.config.format, self.code_version]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def stage(self, name: str, previous: str, build) -> str:
        fingerprint = self.fingerprint(name, previous, self.stage_flags(name))
        self.fingerprints[name] = fingerprint
        marker = f"{self.out}/_stages/{name}.json"
        if (
            self.config.resume
            and tables.read_text(marker) == fingerprint
            and tables.has_success(self.table_uri(name))
        ):
            log.info("stage %s: unchanged inputs and flags, skipped (--resume)", name)
            self.report.stages[name] = "skipped"
            return fingerprint
        tables.delete(marker)
        started = time.perf_counter()
        log.info("stage %s: started", name)
        build()
        elapsed = time.perf_counter() - started
        self.report.stages[name] = round(elapsed, 2)
        tables.write_text(marker, fingerprint)
        log.info("stage %s: done in %.1fs", name, elapsed)
        return fingerprint

    def metadata_languages(self) -> list[str]:
        if not tables.exists(self.config.metadata):
            raise CurationError(f"metadata {self.config.metadata} does not exist")
        langs = tables.partition_values(self.config.metadata, "lang")
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

    def survivors_uri(self) -> str:
        return f"{self.out}/_stages/surviving_uids.parquet"

    def write_survivors(self) -> str:
        """--recount-from: the uids of the images in the shards, for the map tasks to keep
        only their records; returns a digest of them (the matches stage depends on it)."""
        shards = self.config.recount_from
        uids = recount.surviving_uids(shards)
        recount.write_survivors(self.survivors_uri(), uids)
        self.report.recount = {"shards": shards, "surviving_images": len(uids)}
        self.report.recount["before"] = recount.before(shards)
        log.info("--recount-from %s: %d images downloaded and kept", shards, len(uids))
        digest = hashlib.sha256()
        for uid in uids.to_pylist():
            digest.update(uid.encode() + b"\0")
        return digest.hexdigest()

    def input_fingerprint(self, survivors: str | None = None) -> str:
        parts = [self.config.input, self.config.metadata, survivors]
        parts += [
            self._content_summary(self.config.input),
            tables.content_summary(self.config.metadata),
        ]
        self.input_bytes = parts[3][0]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def open_input(self):
        """The input as splits that Python tasks read with pyarrow; as a Spark DataFrame with
        `--input-reader spark`, or where pyarrow cannot read it."""
        config = self.config
        if config.input_reader != "spark":
            files = input_splits.list_input(config.input, self.split_bytes())
            if files is not None:
                if not files.splits:
                    raise CurationError(f"input {config.input} has no records")
                self.check_input_columns(files.columns)
                log.info("input: %d splits, read with pyarrow", len(files.splits))
                return files
            if config.input_reader == "pyarrow":
                raise CurationError(f"input {config.input} cannot be read with pyarrow")
        return self.load_records()

    def split_bytes(self) -> int:
        """Input bytes per map task: INPUT_BYTES_PER_TASK, and more with many partitions, so
        that a task's share of a partition (one blob) is not a handful of records."""
        return max(INPUT_BYTES_PER_TASK, self.matching_partitions() * SPLIT_BYTES_PER_PARTITION)

    def check_input_columns(self, columns: list[str]) -> None:
        missing = [c for c in ("url", "text") if c not in columns]
        if missing:
            raise CurationError(
                f"input {self.config.input} lacks column(s) {', '.join(missing)} "
                f"(has: {', '.join(columns)})"
            )

    def load_records(self):
        """The input records read by Spark, as a DataFrame of RECORD_COLUMNS (strings; a
        column the input lacks is null here, and uid and lang are derived in the map tasks)."""
        try:
            df = tables.read_table(self.spark, self.config.input)
        except MissingConnector as error:
            raise CurationError(f"--input-reader spark: {error}") from None
        self.check_input_columns(df.columns)
        for column in df.schema.fields:  # never a number turned into a caption
            kind = column.dataType.typeName()
            if column.name in RECORD_COLUMNS and kind not in ("string", "binary", "void"):
                raise CurationError(
                    f"input {self.config.input}: column {column.name} is {kind}, not text"
                )
        self.derive = tuple(c for c in ("uid", "lang") if c not in df.columns)
        columns = [
            (F.col(c) if c in df.columns else F.lit(None)).cast("string").alias(c)
            for c in RECORD_COLUMNS
        ]
        return df.select(*columns)

    def report_input_counts(self, counts: dict) -> None:
        if not counts["records"]:
            raise CurationError(f"input {self.config.input} has no records")
        self.report.counts["input_records"] = int(counts["records"])
        self.report.drops["null_text_or_url"] = int(counts["null"])

    def write_matches(self, source) -> None:
        config = self.config
        derive = (
            tuple(c for c in ("uid", "lang") if c not in source.columns)
            if isinstance(source, input_splits.InputFiles)
            else self.derive
        )
        if "lang" in derive:
            log.info("input has no lang column: identifying languages with %s",
                     config.lid_model or "lid.176")  # fmt: skip
        read_splits = isinstance(source, input_splits.InputFiles)
        survivors = self.survivors_uri() if config.recount_from else None
        folder = None
        if self.blob_files:
            folder = exchange.exchange_folder(self.spark, self.input_bytes, config.exchange)
            if folder is None:
                log.warning(
                    "--exchange auto: too little free space under Spark's local directory for "
                    "the blob files (~%.1f GB): the records go through Spark's shuffle",
                    exchange.FILES_PER_INPUT_BYTE * self.input_bytes / 1e9,
                )
        self.report.exchange = "files" if folder is not None else "shuffle"
        try:
            self.shuffle_records(source, derive, read_splits, survivors, folder)
        finally:
            if folder is not None:  # (a failed job's other tasks may still be writing)
                self.spark.sparkContext.cancelAllJobs()
                shutil.rmtree(folder, ignore_errors=True)

    def shuffle_records(self, source, derive, read_splits, survivors, folder) -> None:
        """matches/ and the partial counts: map tasks read, match and send blobs (bytes, or
        files in `folder`); each reduce task writes its partition's files."""
        config, langs = self.config, self.metadata_langs
        partitions, version = self.matching_partitions(), self.fingerprints["matches"]
        pack = curate_tasks.read_and_pack(
            config.metadata,
            version,
            langs,
            partitions,
            derive,
            config.lid_model,
            read_splits,
            survivors,
            folder,
        )
        context = self.spark.sparkContext
        if read_splits:  # a map task per split, each sent its own split only
            count = len(source.splits)
            pairs = context.parallelize(source.splits, count).mapPartitions(pack)
        else:
            pairs = source.mapInArrow(pack, exchange.BLOB_SCHEMA).rdd.map(curate_tasks.blob_pair)
        matches_uri, counts_uri = self.table_uri("matches"), self.partial_counts_uri()
        tables.start_table(matches_uri)
        tables.start_table(counts_uri)
        choose = curate_tasks.choose_and_write(matches_uri, counts_uri, config.seed, langs)
        # the one shuffle of full records (or their files' paths): each reduce task gets its
        # partition's blobs
        shuffled = pairs.partitionBy(partitions, curate_tasks.same_partition)
        files = shuffled.mapPartitions(choose).collect()
        tables.finish_table(matches_uri, config.format, ["lang"], self.spark)
        self.save_matches_summary(files)

    def partial_counts_uri(self) -> str:
        return f"{self.out}/_stages/partial_counts"

    def files_uri(self) -> str:
        return f"{self.out}/_stages/matches_files.parquet"

    def save_matches_summary(self, files: list) -> None:
        """The input counts and per-language records of the reduce tasks' rows, and the list
        of matches/ files that the curated stage reads (Parquet: P x languages rows)."""
        counts = {"records": sum(r["input_records"] for r in files)}
        counts["null"] = sum(r["nulls"] for r in files)
        self.report_input_counts(counts)
        per_lang: dict[str, list[int]] = {}
        for r in files:
            if r["lang"] is not None:
                stats = per_lang.setdefault(r["lang"], [0, 0])
                stats[0] += r["rows"]
                stats[1] += r["matched"]
        listed = sorted((r["part"], r["lang"], r["file"], r["chosen"]) for r in files if r["lang"])
        table = pa.table(
            {
                "part": pa.array([f[0] for f in listed], pa.int32()),
                "lang": pa.array([f[1] for f in listed], pa.string()),
                "file": pa.array([f[2] for f in listed], pa.string()),
                "chosen": pa.array([f[3] for f in listed], pa.int64()),
            }
        )
        tables.write_parquet(self.files_uri(), [table])
        count_files = sorted(r["file"] for r in files if r["lang"] is None and r["file"])
        summary = {
            "input": counts,
            "records_per_lang": per_lang,
            "count_files": count_files,
        }
        tables.write_text(self.summary_uri("matches"), json.dumps(summary, sort_keys=True))

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
        run_langs = tables.partition_values(self.table_uri("matches"), "lang")
        langs = [lang for lang in run_langs if lang in set(self.metadata_langs)]
        uri = self.table_uri("entry_counts")
        tables.start_table(uri)
        if langs:
            # a task per language sums the partial counts that reach it as blobs
            context, index = self.spark.sparkContext, {lang: i for i, lang in enumerate(langs)}
            pairs = context.parallelize([(index[lang], (lang, None)) for lang in langs], 1)
            files = self.read_summary("matches")["count_files"]
            if files:
                paths = [f"{self.partial_counts_uri()}/{f}" for f in files]
                partial = context.parallelize(paths, len(paths))
                pairs = partial.mapPartitions(curate_tasks.count_blobs(index)).union(pairs)
            summed = curate_tasks.sum_counts_and_write(self.config.metadata, uri)
            by_lang = pairs.partitionBy(len(langs), curate_tasks.same_partition)
            by_lang.mapPartitions(summed).collect()
        tables.finish_table(uri, self.config.format, ["lang"], self.spark)

    def write_thresholds(self) -> None:
        counts = tables.read_arrow(self.table_uri("entry_counts"), ["lang", "count"])
        counts = counts.sort_by("lang")
        langs = counts.column("lang").combine_chunks()
        values = counts.column("count").to_numpy()
        bounds = np.append(np.flatnonzero(run_starts(langs)), counts.num_rows)
        entries, nonzero = {}, {}
        for start, stop in zip(bounds[:-1], bounds[1:]):
            lang, piece = langs[start].as_py(), values[start:stop]
            entries[lang] = int(stop - start)
            if piece.any():
                nonzero[lang] = piece[piece > 0].astype(np.int64)
        if not nonzero:
            raise CurationError(f"no record of {self.config.input} matched any metadata entry")
        try:
            thresholds = compute_thresholds(
                nonzero,
                self.config.t_en if self.config.tail_fraction is None else None,
                self.config.tail_fraction,
            )
        except ValueError as error:
            raise CurationError(str(error)) from None
        stats = self.match_stats()
        rows = sorted(thresholds.items())
        table = pa.table(
            {
                "lang": pa.array([lang for lang, _ in rows], pa.string()),
                "t": pa.array([float(t) for _, (t, _) in rows], pa.float64()),
                "tail_fraction": pa.array([float(p) for _, (_, p) in rows], pa.float64()),
                "entries": pa.array([entries.get(lang, 0) for lang, _ in rows], pa.int64()),
                "matched_records": pa.array(
                    [int(stats.get(lang, (0, 0))[1] or 0) for lang, _ in rows], pa.int64()
                ),
            }
        )
        uri = self.table_uri("thresholds")
        tables.start_table(uri)
        tables.write_parquet(f"{uri}/part-00000.parquet", [table])
        tables.finish_table(uri, self.config.format, None, self.spark)
        for lang, (t, p) in rows:
            log.info(
                "  %s: t=%g tail_fraction=%.4f matched_records=%s",
                lang,
                t,
                p,
                stats.get(lang, (0, 0))[1],
            )

    def read_thresholds(self) -> dict[str, float]:
        table = tables.read_arrow(self.table_uri("thresholds"), ["lang", "t"])
        return dict(zip(table.column("lang").to_pylist(), table.column("t").to_pylist()))

    def write_curated(self) -> None:
        fs, path = tables.filesystem(self.files_uri())
        with fs.open_input_file(path) as handle:
            files = pq.read_table(handle)
        # a task per reduce partition: its files that have chosen rows
        files = files.filter(pc.greater(files.column("chosen"), 0))
        groups: dict[int, list] = {}
        columns = (files.column(c).to_pylist() for c in ("part", "lang", "file", "chosen"))
        for part, lang, name, chosen in zip(*columns):
            groups.setdefault(part, []).append((lang, name, chosen))
        curated_uri = self.table_uri("curated")
        tables.start_table(curated_uri)
        keep = curate_tasks.keep_and_write(
            self.table_uri("matches"),
            curated_uri,
            self.table_uri("entry_counts"),
            self.read_thresholds(),
            self.config.seed,
            self.fingerprints["entry_counts"],
        )
        rows = []
        if groups:
            tasks = [groups[part] for part in sorted(groups)]
            context = self.spark.sparkContext
            rows = context.parallelize(tasks, len(tasks)).mapPartitions(keep).collect()
        tables.finish_table(curated_uri, self.config.format, ["lang"], self.spark)
        per_lang: dict[str, int] = {}
        for r in rows:
            per_lang[r["lang"]] = per_lang.get(r["lang"], 0) + r["rows"]
        tables.write_text(self.summary_uri("curated"), json.dumps(per_lang, sort_keys=True))

    def match_stats(self) -> dict[str, tuple[int, int]]:
        """lang -> (records, matched records) of the matches table, computed once per run."""
        if self._match_stats is None:
            per_lang = self.read_summary("matches")["records_per_lang"]
            self._match_stats = {k: (v[0], v[1]) for k, v in per_lang.items()}
        return self._match_stats

    def curated_per_lang(self) -> dict[str, int]:
        return {k: v for k, v in self.read_summary("curated").items() if v}

    def collect_counts(self) -> None:
        per_lang = dict(self.match_stats())
        counts, drops = self.report.counts, self.report.drops
        drops["no_metadata_language"] = per_lang.pop(OTHER, (0, 0))[0]
        counts["distinct_records"] = (
            sum(r for r, _ in per_lang.values()) + drops["no_metadata_language"]
        )
        counts["records_per_lang"] = {k: v[0] for k, v in sorted(per_lang.items())}
        counts["matched_records"] = sum(m for _, m in per_lang.values())
        counts["curated_per_lang"] = dict(sorted(self.curated_per_lang().items()))
        counts["curated_records"] = sum(counts["curated_per_lang"].values())
        log.info(
            "records in %s, distinct %s, no metadata language %s, matched %s, curated %s",
            counts["input_records"],
            counts["distinct_records"],
            drops["no_metadata_language"],
            counts["matched_records"],
            counts["curated_records"],
        )


# For the job's duration, for the one query it may plan (`--input-reader spark`; its own steps
# are RDDs of Python tasks):
# - Arrow batches to the Python workers are capped by rows (10,000) only: with a byte cap too
#   Spark sizes the batch being built after every row.
# - no generated Java (whole-stage or per expression): the query moves a few blob rows per
#   task, so compiling code for it (Janino, in the JVM's planning threads) costs more than
#   interpreting it.
JOB_SQL_CONF = {
    "spark.sql.execution.arrow.maxBytesPerBatch": str(2**31 - 1),
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
}


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


def run(config: CurateConfig, spark=None) -> CurateReport:
    """The curation job on `spark` (default: a session of `session()`)."""
    spark = spark or session()
    with _session_conf(spark, JOB_SQL_CONF), python_worker_env(spark, KEEP_FREED_MEMORY):
        return CurationJob(spark, config).run()


def session(master: str | None = None):
    """The Spark session the curation job runs best on: the active one under spark-submit, else
    a local one whose JVM is compiled with C1 only (it only schedules Python tasks and moves a
    few rows per task: this halves its start-up CPU) and shuffles uncompressed (blobs worth
    compressing are lz4 already, and with a local master only their paths cross) without
    checksums of its shuffle files (they find disks or networks that corrupt
    them: none in one process), with file scans cut into enough tasks that the cores finish
    together."""
    spark = get_spark(
        "curate",
        master=master,
        local_conf={"spark.shuffle.compress": "false", "spark.shuffle.checksum.enabled": "false"},
        local_java_options=LOCAL_JAVA_OPTIONS + " -XX:TieredStopAtLevel=1",
    )
    context = spark.sparkContext
    if context.master.startswith("local"):
        key = "spark.sql.files.minPartitionNum"
        if not context.getConf().contains(key):
            spark.conf.set(key, str(4 * context.defaultParallelism))
    return spark
