"""The curation job's previous plan (`--plan per-stage`), kept to check the one-shuffle plan.

Records were range-partitioned on (lang, salt) for matching, `matches/` written with every
column, then re-read in full for balancing: candidates grouped by uid (a second shuffle of full
rows) and the kept ones repartitioned by lang (a third). Its curated/, entry_counts/ and
thresholds/ are the contract the default plan must reproduce exactly (tests/test_curate.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from curation import tables
from curation.balance import keep_uniforms, text_choice_keys
from curation.curate import MATCHED_SCHEMA
from curation.curate_tasks import (
    OTHER,
    RECORD_COLUMNS,
    batch_keep_probabilities,
    match_language,
)

CANDIDATES_SCHEMA = (
    "uid string, url string, text string, lang string, entry_ids array<int>, "
    "keep_prob double, choice long, draw double"
)


def match_batches(metadata_uri: str, version: str = ""):
    """mapInArrow function: adds entry_ids to records sorted (within the partition) by lang."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            langs = batch.column("lang").to_numpy(zero_copy_only=False)
            if len(langs) == 0:
                continue
            cuts = np.flatnonzero(langs[1:] != langs[:-1]) + 1
            for start, stop in zip([0, *cuts], [*cuts, len(langs)]):
                part = batch.slice(start, stop - start)
                matched = match_language(metadata_uri, langs[start], version, part["text"])
                yield pa.RecordBatch.from_arrays(
                    [*(part.column(c) for c in RECORD_COLUMNS), matched],
                    names=[*RECORD_COLUMNS, "entry_ids"],
                )

    return run


def candidate_batches(counts_uri: str, thresholds: dict[str, float], seed: int, version: str):
    """mapInArrow function: keep probability, choice key and keep draw of each matched record."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            entry_ids = batch.column("entry_ids")
            keep_probs = batch_keep_probabilities(batch, counts_uri, thresholds, version)
            uids = batch.column("uid").to_pylist()
            choices = [  # order kept, fits a long
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


def write_matches(job, records) -> None:
    """Dedup (a shuffle of full rows), range repartition on (lang, salt) (another), match."""
    from pyspark.sql import functions as F

    records = records.groupBy("uid", "text").agg(
        F.min("url").alias("url"), F.min("page_url").alias("page_url"), F.min("lang").alias("lang")
    )
    routed = F.when(F.col("lang").isin(job.metadata_langs), F.col("lang")).otherwise(F.lit(OTHER))
    records = records.withColumn("lang", routed)
    salt = F.abs(F.xxhash64("uid")) % job.config.salt_buckets
    spread = (
        records.withColumn("_salt", salt)
        .repartitionByRange(job.matching_partitions(), "lang", "_salt")
        .sortWithinPartitions("lang")
    )
    matched = spread.select("uid", "url", "page_url", "text", "lang").mapInArrow(
        match_batches(job.config.metadata, job.fingerprints["matches"]), MATCHED_SCHEMA
    )
    tables.write_table(matched, job.table_uri("matches"), job.config.format, ["lang"])


def write_curated(job) -> None:
    """Re-reads matches/ in full, groups candidates by uid, repartitions the kept ones by lang."""
    from pyspark.sql import functions as F

    thresholds = job.read_thresholds()
    matches = job.read("matches").where(F.size("entry_ids") > 0)
    candidates = matches.select("uid", "url", "text", "lang", "entry_ids").mapInArrow(
        candidate_batches(
            job.table_uri("entry_counts"),
            thresholds,
            job.config.seed,
            job.fingerprints["entry_counts"],
        ),
        CANDIDATES_SCHEMA,
    )
    chosen = candidates.groupBy("uid").agg(
        F.min(F.struct("choice", "text", "url", "lang", "entry_ids", "keep_prob", "draw")).alias(
            "c"
        )
    )
    kept = chosen.where(F.col("c.draw") < F.col("c.keep_prob")).select(
        "uid",
        *(F.col(f"c.{c}").alias(c) for c in ("url", "text", "lang", "entry_ids", "keep_prob")),
    )
    ordered = kept.repartition("lang").sortWithinPartitions("lang", "uid")
    tables.write_table(ordered, job.table_uri("curated"), job.config.format, ["lang"])


def match_stats(job) -> dict[str, tuple[int, int]]:
    """lang -> (records, matched records), aggregated from the matches table."""
    from pyspark.sql import functions as F

    rows = (
        job.read("matches")
        .groupBy("lang")
        .agg(
            F.count(F.lit(1)).alias("records"),
            F.sum((F.size("entry_ids") > 0).cast("long")).alias("matched"),
        )
        .collect()
    )
    return {r["lang"]: (int(r["records"]), int(r["matched"])) for r in rows}


def write_entry_counts(job) -> None:
    """Explodes entry_ids of the whole matches table, counts, joins the metadata entries."""
    from pyspark.sql import functions as F

    run_langs = job.fs.partition_values(job.table_uri("matches"), "lang")
    per_entry = job.read("matches").select("lang", F.explode("entry_ids").alias("entry_id"))
    per_entry = per_entry.groupBy("lang", "entry_id").agg(F.count(F.lit(1)).alias("count"))
    metadata = tables.read_table(job.spark, job.config.metadata).where(
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
    tables.write_table(counts, job.table_uri("entry_counts"), job.config.format, ["lang"])
