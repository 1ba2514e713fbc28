"""The Spark metadata build: sources -> selected candidates -> normalized, deduplicated entries.

Dumps are split across tasks by file (one task per dump file); counts are summed by key, so a
language split over many dump files gets the same counts as one file. Selection uses window
ranks with code-point tie-breaks, and ids are assigned per language with Python's `sorted()`
(docs/semantics.md, section 9), so the output does not depend on partitioning, task order or
hash seeds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from curation.core.jobs import MetadataError
from curation.core.spark import HadoopFS, get_spark, size_shuffle_partitions
from curation.core.uris import expand, open_decompressed
from curation.languages import load_languages
from curation.metadata import entries as metadata
from curation.metadata import wikipedia, wordnet
from curation.metadata.segment import segmenter_name

COUNT_SCHEMA = "lang string, kind string, k1 string, k2 string, count long"
CANDIDATE_SCHEMA = "lang string, source string, raw string"
ANNOTATED_SCHEMA = "lang string, source string, raw string, entry string, reason string"
METADATA_SCHEMA = "lang string, entry_id int, entry string, source string"


@dataclass(frozen=True)
class BuildConfig:
    """What `jobs/build_metadata.py` builds. `languages` default to every Wikipedia language of
    schemas/languages.csv; `no_space` (languages written without spaces) and `omw_codes` (OMW
    file names -> Wikipedia codes) default to the project's tables."""

    output: str
    languages: tuple[str, ...] | None = None
    no_space: frozenset[str] | None = None
    wordnet: str | None = None
    omw: tuple[str, ...] = ()
    omw_codes: dict[str, str] = field(default_factory=dict)
    dumps: tuple[str, ...] = ()
    pageviews: tuple[str, ...] = ()
    use_wordfreq: bool = True
    selection: metadata.Selection = metadata.METACLIP2
    selection_en: metadata.Selection | None = None
    max_languages: int | None = None
    shuffle_partitions: int | None = None

    def __post_init__(self):
        known = load_languages()
        codes = [lang.code for lang in known]
        if self.languages is not None and not self.languages:
            raise MetadataError("no language given (--languages or --languages-file is empty)")
        unknown = sorted(set(self.languages or ()) - set(codes))
        if unknown:
            raise MetadataError(f"unknown Wikipedia language codes: {', '.join(unknown)}")
        if self.max_languages is not None and self.max_languages < 0:
            raise MetadataError(
                f"--max-languages must be 0 (no limit) or more, got {self.max_languages}"
            )
        for name in ("omw", "dumps", "pageviews"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "languages", tuple(self.languages or codes))
        if self.no_space is None:
            no_space = frozenset(lang.code for lang in known if lang.no_space)
            object.__setattr__(self, "no_space", no_space)
        if self.omw and not self.omw_codes:
            object.__setattr__(self, "omw_codes", wordnet.load_omw_table())

    def selection_for(self, lang: str) -> metadata.Selection:
        return self.selection_en if lang == "en" and self.selection_en else self.selection


@dataclass
class BuildReport:
    """What a build did: the languages built, entries per language, warnings, languages
    skipped (no source)."""

    languages: list[str]
    entries: dict[str, int]
    warnings: list[str]
    skipped: list[str]
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"done in {self.seconds:.0f}s: {len(self.entries)} languages, "
            f"{sum(self.entries.values())} entries, {len(self.warnings)} warnings"
        )


def session(master: str | None = None):
    """The active Spark session under spark-submit, else a local one (`master`, all cores)."""
    return get_spark("build_metadata", master, {"spark.ui.showConsoleProgress": "false"})


def run(config: BuildConfig, spark=None, log: Callable[[str], None] = print) -> BuildReport:
    """Check the inputs and the output, size the shuffle, then `build`."""
    started = time.perf_counter()
    spark = spark or session()
    fs = HadoopFS(spark)
    if config.wordnet and not fs.exists(config.wordnet):
        raise MetadataError(f"--wordnet {config.wordnet}: no such directory")
    if config.shuffle_partitions:
        spark.conf.set("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
    else:
        size_shuffle_partitions(spark, sum(fs.glob_bytes(u) for u in config.dumps))
    try:
        fs.check_writable(config.output)
        report = build(spark, config, log)
    except OSError as error:  # an input or the output out of reach (driver side): exit 2
        raise MetadataError(str(error)) from None
    report.seconds = time.perf_counter() - started
    return report


def _plan(spark, config: BuildConfig, log: Callable[[str], None]):
    """Which source feeds which language: (wordnet langs, omw files, dump files, wordfreq langs)."""
    wanted = set(config.languages)
    warnings = []
    dumps = []
    for uri in expand(spark, config.dumps) if config.dumps else []:
        lang = wikipedia.dump_language(uri)
        if lang in wanted:
            dumps.append((uri, lang))
        else:
            log(f"{uri}: not a dump of a requested language ({lang}), skipped")
    omw_files = []
    for uri in expand(spark, config.omw) if config.omw else []:
        iso = wordnet.omw_file_language(uri)
        lang = config.omw_codes.get(iso or "")
        if lang in wanted:
            omw_files.append((uri, lang))
        elif lang is None:
            warnings.append(f"{uri}: no Wikipedia code for OMW language {iso!r}, skipped")
    dump_langs = {lang for _, lang in dumps}
    wordnet_langs = {"en"} & wanted if config.wordnet else set()
    wordnet_langs |= {lang for _, lang in omw_files}
    wordfreq_langs = set()
    if config.use_wordfreq:
        wordfreq_langs = (set(metadata.wordfreq_languages()) & wanted) - dump_langs
    with_source = wordnet_langs | dump_langs | wordfreq_langs
    ordered = sorted(with_source, key=lambda lang: (lang not in wordnet_langs | dump_langs, lang))
    chosen = set(ordered[: config.max_languages] if config.max_languages else ordered)
    skipped = sorted(wanted - chosen)
    if wanted - with_source:
        log(f"{len(wanted - with_source)} requested languages have no source and are not built")
    return (
        sorted(chosen),
        sorted(wordnet_langs & chosen),
        [f for f in omw_files if f[1] in chosen],
        [d for d in dumps if d[1] in chosen],
        sorted(wordfreq_langs & chosen),
        warnings,
        skipped,
    )


def _check_articles_read(dumps, pages: dict[str, int], warnings: list[str]) -> None:
    """A language whose dump files gave no article at all (an empty file, not a MediaWiki
    export, corrupt from its first bytes) stops the job before anything is written: building it
    from nothing would replace its metadata with an empty table and exit 0."""
    for lang in sorted({lang for _, lang in dumps}):
        if pages.get(lang, 0):
            continue
        files = [uri for uri, dump_lang in dumps if dump_lang == lang]
        said = [w.split(": ", 2)[-1] for w in warnings if w.startswith(f"{lang}: ")]
        why = f": {said[0].removesuffix('; kept those pages')}" if said else ""
        raise MetadataError(
            f"{lang}: no article read from its {len(files)} dump file(s) {', '.join(files)}{why}"
        )


def _dump_counts(spark, dumps, no_space):
    """One task per dump file; counts summed by (lang, kind, key)."""
    from pyspark.sql import functions as F

    jobs = [(uri, lang, segmenter_name(lang, lang in no_space)) for uri, lang in dumps]

    def count_files(frames):
        import pandas as pd

        for frame in frames:
            for uri, lang, segmentation in frame.itertuples(index=False):
                rows = []
                for row in wikipedia.count_dump(uri, segmentation):
                    rows.append(row)
                    if len(rows) >= 200_000:
                        yield _count_frame(pd, lang, rows)
                        rows = []
                yield _count_frame(pd, lang, rows)

    files = spark.sparkContext.parallelize(jobs, max(1, len(jobs))).toDF(
        "uri string, lang string, segmentation string"
    )
    return (
        files.mapInPandas(count_files, COUNT_SCHEMA)
        .groupBy("lang", "kind", "k1", "k2")
        .agg(F.sum("count").alias("count"))
    )


def _count_frame(pd, lang, rows):
    frame = pd.DataFrame(rows, columns=["kind", "k1", "k2", "count"])
    frame.insert(0, "lang", lang)
    return frame


def _top(df, order, fraction, maximum):
    """Rows of each language ranked by `order`, cut by the top-fraction/maximum rule."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ranked = df.withColumn("rank", F.row_number().over(Window.partitionBy("lang").orderBy(*order)))
    ranked = ranked.withColumn("n", F.count(F.lit(1)).over(Window.partitionBy("lang")))
    limit = F.ceil(F.col("n") * F.lit(fraction) - F.lit(1e-9))
    if maximum is not None:
        limit = F.least(limit, F.lit(maximum))
    return ranked.filter(F.col("rank") <= limit).drop("rank", "n")


def _dump_candidates(counts, pageviews, langs, selection, no_space):
    from pyspark.sql import functions as F

    counts = counts.filter(F.col("lang").isin(langs))
    unigram_counts = counts.filter(F.col("kind") == wikipedia.UNIGRAM).select(
        "lang", F.col("k1").alias("word"), "count"
    )
    unigrams = _top(
        unigram_counts.filter(F.col("count") >= selection.unigram_min_count),
        [F.desc("count"), F.asc("word")],
        selection.unigram_fraction,
        selection.unigram_max,
    ).select("lang", F.lit("unigram").alias("source"), F.col("word").alias("raw"))

    tokens = counts.filter(F.col("kind") == wikipedia.TOKENS).select(
        "lang", F.col("count").alias("tokens")
    )
    left = unigram_counts.select("lang", F.col("word").alias("k1"), F.col("count").alias("c1"))
    right = unigram_counts.select("lang", F.col("word").alias("k2"), F.col("count").alias("c2"))
    bigram_rows = (
        counts.filter(F.col("kind") == wikipedia.BIGRAM)
        .filter(F.col("count") >= selection.bigram_min_count)
        .join(left, ["lang", "k1"])
        .join(right, ["lang", "k2"])
        .join(tokens, "lang")
        .withColumn("pmi", F.col("count") * F.col("tokens") / (F.col("c1") * F.col("c2")))
        .filter(F.col("pmi") > selection.bigram_min_pmi)
    )
    joiner = F.when(F.col("lang").isin(sorted(no_space)), F.lit("")).otherwise(F.lit(" "))
    bigrams = _top(
        bigram_rows, [F.desc("count"), F.asc("k1"), F.asc("k2")], 1.0, selection.bigram_max
    ).select("lang", F.lit("bigram").alias("source"), F.concat("k1", joiner, "k2").alias("raw"))

    titles = counts.filter(F.col("kind") == wikipedia.TITLE).select(
        "lang", F.col("k1").alias("title")
    )
    inlinks = counts.filter(F.col("kind") == wikipedia.INLINK).select(
        "lang", F.col("k1").alias("title"), F.col("count").alias("inlinks")
    )
    popularity = titles.join(inlinks, ["lang", "title"], "left")
    if pageviews is not None:
        popularity = popularity.join(pageviews, ["lang", "title"], "left").join(
            pageviews.select("lang").distinct().withColumn("has_views", F.lit(True)), "lang", "left"
        )
    else:
        popularity = popularity.withColumn("views", F.lit(None).cast("long")).withColumn(
            "has_views", F.lit(None).cast("boolean")
        )
    popularity = popularity.withColumn(
        "popularity",
        F.when(F.col("has_views"), F.coalesce("views", F.lit(0))).otherwise(
            F.coalesce("inlinks", F.lit(0))
        ),
    ).withColumn(
        "source",
        F.when(F.col("has_views"), F.lit("title")).otherwise(F.lit("title:inlinks")),
    )
    titles = _top(
        popularity.filter(F.col("popularity") >= selection.title_min_popularity),
        [F.desc("popularity"), F.asc("title")],
        selection.title_fraction,
        selection.title_max,
    ).select("lang", "source", F.col("title").alias("raw"))
    return unigrams.unionByName(bigrams).unionByName(titles)


def _wordnet_candidates(lang: str, uri: str):
    return ("wordnet", wordnet.princeton_lemmas(uri))


def _omw_candidates(lang: str, uri: str):
    with open_decompressed(uri) as raw:
        lines = (line.decode("utf-8", "replace") for line in raw)
        return ("wordnet:omw", wordnet.omw_lemmas(lines))


def _wordfreq_candidates(lang: str, selection_json: str):
    selection = metadata.Selection(**json.loads(selection_json))
    return ("unigram:wordfreq", metadata.wordfreq_unigrams(lang, selection))


def _candidates(spark, jobs: list[tuple[str, str]], read):
    """One task per (lang, argument) job; `read(lang, argument)` -> (source, raw entries).

    Rows travel to the JVM as Arrow batches (mapInPandas), not pickled tuples.
    """

    def run(frames):
        import pandas as pd

        for frame in frames:
            for lang, argument in frame.itertuples(index=False):
                source, raws = read(lang, argument)
                yield pd.DataFrame({"lang": lang, "source": source, "raw": list(raws)})

    table = spark.sparkContext.parallelize(jobs, max(1, len(jobs))).toDF("lang string, arg string")
    return table.mapInPandas(run, CANDIDATE_SCHEMA)


def read_pageviews(spark, patterns: list[str]):
    """Wikimedia pageview files, Wikipedia rows only, summed per (lang, title).

    Hourly `pageviews-*` files: `en Title 12 0` / `en.m Title 3 0` (desktop / mobile).
    Monthly per-article files: `en.wikipedia Title page_id access daily_total hourly`.
    """
    from pyspark.sql import functions as F

    parts = F.split(F.col("value"), " ")
    hourly = F.regexp_extract(parts[0], r"^([a-z][a-z0-9-]*)(\.m)?$", 1)
    monthly = F.regexp_extract(parts[0], r"^([a-z][a-z0-9-]*)\.wikipedia$", 1)
    rows = spark.read.text(patterns).select(
        F.when(monthly != "", monthly).otherwise(hourly).alias("domain"),
        F.regexp_replace(parts[1], "_", " ").alias("title"),
        F.when(monthly != "", parts[4]).otherwise(parts[2]).cast("long").alias("views"),
    )
    return (
        rows.filter((F.col("domain") != "") & F.col("views").isNotNull())
        .withColumn("lang", F.regexp_replace("domain", "-", "_"))
        .groupBy("lang", "title")
        .agg(F.sum("views").alias("views"))
    )


def _annotate(batches):
    import pandas as pd

    for batch in batches:
        annotated = [metadata.annotate(raw) for raw in batch["raw"]]
        batch["entry"] = [entry for entry, _ in annotated]
        batch["reason"] = pd.Series([reason for _, reason in annotated], dtype=object)
        yield batch


def _ids(frame):
    """Section 9 ids for one language: Python code-point order, never Spark's collation."""
    import pandas as pd

    ids = metadata.assign_ids(frame["entry"])
    out = pd.DataFrame(
        {
            "lang": frame["lang"].values,
            "entry_id": [ids[e] for e in frame["entry"]],
            "entry": frame["entry"].values,
            "source": frame["source"].values,
        }
    )
    return out.sort_values("entry_id", kind="stable")


def build(spark, config: BuildConfig, log: Callable[[str], None] = print) -> BuildReport:
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    started = time.perf_counter()
    say = log

    def log(message: str) -> None:
        say(f"[{time.perf_counter() - started:6.1f}s] {message}")

    langs, wordnet_langs, omw_files, dumps, wordfreq_langs, warnings, skipped = _plan(
        spark, config, log
    )
    if not langs:
        raise ValueError("no requested language has a source (WordNet, OMW, dump or wordfreq)")
    log(
        f"building {len(langs)} languages: WordNet {wordnet_langs}, "
        f"{len(dumps)} dump files ({sorted({lang for _, lang in dumps})}), "
        f"wordfreq stand-in for {len(wordfreq_langs)}"
    )
    frames = []
    if "en" in wordnet_langs and config.wordnet:
        frames.append(_candidates(spark, [("en", config.wordnet)], _wordnet_candidates))
    if omw_files:
        jobs = [(lang, uri) for uri, lang in omw_files]
        frames.append(_candidates(spark, jobs, _omw_candidates))
    if wordfreq_langs:
        jobs = [(lang, json.dumps(asdict(config.selection_for(lang)))) for lang in wordfreq_langs]
        frames.append(_candidates(spark, jobs, _wordfreq_candidates))
    counts = None
    if dumps:
        log(f"reading {len(dumps)} Wikipedia dump files, one task per file")
        counts = _dump_counts(spark, dumps, config.no_space).persist(StorageLevel.MEMORY_AND_DISK)
        for row in counts.filter(F.col("kind") == wikipedia.WARNING).collect():
            warnings.append(f"{row['lang']}: {row['k1']}")
        pages = {}
        for row in counts.filter(F.col("kind") == wikipedia.PAGES).orderBy("lang").collect():
            log(f"  {row['lang']}: {row['count']} articles read")
            pages[row["lang"]] = row["count"]
        _check_articles_read(dumps, pages, warnings)
        pageviews = read_pageviews(spark, config.pageviews) if config.pageviews else None
        dump_langs = sorted({lang for _, lang in dumps})
        by_selection: dict[metadata.Selection, list[str]] = {}
        for lang in dump_langs:
            by_selection.setdefault(config.selection_for(lang), []).append(lang)
        for selection, group in by_selection.items():
            frames.append(_dump_candidates(counts, pageviews, group, selection, config.no_space))
    for message in warnings:
        log(f"warning: {message}")

    candidates = frames[0]
    for frame in frames[1:]:
        candidates = candidates.unionByName(frame)
    rank = F.lit(len(metadata.SOURCES))
    for i, source in enumerate(metadata.SOURCES):
        rank = F.when(F.split("source", ":")[0] == source, F.lit(i)).otherwise(rank)
    annotated = (
        candidates.distinct()
        .mapInPandas(_annotate, ANNOTATED_SCHEMA)
        .withColumn("source_rank", rank)
    )
    first = Window.partitionBy("lang", "entry").orderBy("source_rank", "raw", "source")
    annotated = (
        annotated.withColumn(
            "first", F.when(F.col("reason").isNull(), F.row_number().over(first) == 1)
        )
        .withColumn(
            "reason",
            F.when(F.col("reason").isNull() & ~F.col("first"), F.lit("duplicate")).otherwise(
                F.col("reason")
            ),
        )
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    base = config.output.rstrip("/")
    stats = annotated.groupBy("lang", "source").agg(
        F.count(F.lit(1)).alias("candidates"),
        F.count(F.when(F.col("reason").isNull(), True)).alias("kept"),
        *[
            F.count(F.when(F.col("reason") == reason, True)).alias(f"dropped_{reason}")
            for reason in metadata.DROP_REASONS
        ],
    )
    log("writing metadata_stats")
    stats.orderBy("lang", "source").coalesce(1).write.mode("overwrite").option(
        "partitionOverwriteMode", "dynamic"
    ).partitionBy("lang").parquet(f"{base}/metadata_stats")

    kept = annotated.filter(F.col("reason").isNull()).select("lang", "entry", "source")
    log("assigning ids and writing metadata")
    entries = kept.groupBy("lang").applyInPandas(_ids, METADATA_SCHEMA)
    entries.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy(
        "lang"
    ).parquet(f"{base}/metadata")
    totals = {
        row["lang"]: row["kept"]
        for row in stats.groupBy("lang").agg(F.sum("kept").alias("kept")).collect()
    }
    annotated.unpersist()
    if counts is not None:
        counts.unpersist()
    log(f"wrote {sum(totals.values())} entries for {len(totals)} languages to {base}/metadata")
    return BuildReport(languages=langs, entries=totals, warnings=warnings, skipped=skipped)
