"""What a curation run matched and kept, for analysts: queries, plots and a standalone HTML report.

Reads the tables `jobs/curate.py` writes under its --output (Parquet or Delta, local or any URI
pyarrow knows) with DuckDB, without Spark. The notebooks in notebooks/ and the command line share
this module:

    python -m curation.report OUTPUT_DIR --html report.html
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from pathlib import Path
from urllib.parse import unquote

import pandas as pd

from curation.core import tables
from curation.core.jobs import ReportError
from curation.core.uris import local_path

TABLES = ("entry_counts", "thresholds", "curated", "matches")
REQUIRED = ("entry_counts", "thresholds")


def _open_source(uri: str):
    """(kind, source) of one table: ("parquet", glob) for local Parquet, ("delta", files) for a
    local Delta table's current files, else ("arrow", a pyarrow dataset or a DeltaTable).

    Delta tables are read through their log, never by listing the folder: an overwritten Delta
    table keeps its old files until it is vacuumed.
    """
    path = local_path(uri)
    if path is not None and not Path(path).exists():
        return None
    if tables.is_delta(uri):
        from deltalake import DeltaTable

        table = DeltaTable(uri if path is None else str(Path(path).resolve()))
        files = _plain_delta_files(table) if path is not None else None
        return ("delta", files) if files else ("arrow", table)
    if path is not None:
        root = Path(path).resolve()
        if root.is_file():
            return "parquet", str(root)
        if not next(root.rglob("*.parquet"), None):
            return None
        return "parquet", str(root / "**" / "*.parquet")
    if not tables.exists(uri):
        return None
    return "arrow", tables.dataset(uri, partitioning="hive")


def _plain_delta_files(table) -> list[str] | None:
    """The current data files of a local Delta table when DuckDB can scan them as hive-partitioned
    Parquet (much faster than through an Arrow dataset): reader protocol 1 (no deletion vectors,
    no column mapping) and every file's `col=value` path segments equal to its logged partition
    values. None otherwise; the caller then reads through delta-rs."""
    import pyarrow as pa

    if table.protocol().min_reader_version > 1:
        return None
    columns = table.metadata().partition_columns
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    if not actions:
        return None
    root = Path(table.table_uri.removeprefix("file://"))
    files = []
    for action in actions:
        segments = dict(
            unquote(part).split("=", 1) for part in action["path"].split("/")[:-1] if "=" in part
        )
        if any(segments.get(c) != action[f"partition.{c}"] for c in columns):
            return None
        files.append(str(root / unquote(action["path"])))
    return files


class CurationOutput:
    """One curation run's output folder, queried with DuckDB.

    `materialize=True` loads entry_counts and thresholds into memory once, so that many lookups
    in a notebook session do not each decode the Parquet files again.
    """

    def __init__(self, output: str | Path, materialize: bool = False, threads: int | None = None):
        import duckdb

        self.output = str(output).rstrip("/")
        self.con = duckdb.connect()
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self.tables: dict[str, str] = {}
        self._arrow = {}  # keeps the registered datasets alive
        for name in TABLES:
            source = _open_source(f"{self.output}/{name}")
            if source is None:
                continue
            kind, src = source
            if kind in ("parquet", "delta"):
                paths = [src] if kind == "parquet" else src
                quoted = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
                self.con.execute(
                    f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{quoted}], "
                    "hive_partitioning = true, hive_types_autocast = false, union_by_name = true)"
                )
                self.tables[name] = kind
            else:
                dataset = src.to_pyarrow_dataset() if hasattr(src, "to_pyarrow_dataset") else src
                self._arrow[name] = dataset
                self.con.register(f"_{name}_arrow", dataset)
                self.con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_arrow")
                self.tables[name] = "delta" if hasattr(src, "to_pyarrow_dataset") else "arrow"
        missing = [name for name in REQUIRED if name not in self.tables]
        if missing:
            raise ReportError(
                f"{self.output}: no {' or '.join(missing)} table found; "
                "is this the --output of jobs/curate.py?"
            )
        if materialize:
            for name in REQUIRED:
                self.con.execute(f"CREATE TEMP TABLE {name}_mem AS SELECT * FROM {name}")
                self.con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {name}_mem")
        self.run = self._read_run_json()
        self.complete = self._exists("_SUCCESS")

    # -- plumbing ------------------------------------------------------------------------------

    def _read_text(self, name: str) -> str | None:
        try:
            return tables.read_text(f"{self.output}/{name}")
        except OSError:
            return None

    def _exists(self, name: str) -> bool:
        return tables.exists(f"{self.output}/{name}")

    def _read_run_json(self) -> dict:
        text = self._read_text("run.json")
        if text is None:
            return {}
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ReportError(f"{self.output}/run.json is not valid JSON: {error}") from error

    def image_drops(self) -> pd.DataFrame | None:
        return image_drops(self.output)

    def sql(self, query: str, params: list | None = None) -> pd.DataFrame:
        """Any SQL over the views entry_counts, thresholds, curated and matches."""
        return self.con.execute(query, params or []).df()

    # -- entries -------------------------------------------------------------------------------

    def lookup(
        self, entry: str, lang: str | None = None, prefix: bool = False, limit: int = 100
    ) -> pd.DataFrame:
        """Entries equal to (or starting with, `prefix=True`) `entry`, in one or every language,
        most matched first: lang, entry_id, entry, count, t, head (count >= t)."""
        condition = "starts_with(c.entry, ?)" if prefix else "c.entry = ?"
        params: list = [entry]
        if lang is not None:
            condition += " AND c.lang = ?"
            params.append(lang)
        return self.sql(
            f"""SELECT c.lang, c.entry_id, c.entry, c.count, t.t, c.count >= t.t AS head
            FROM entry_counts c LEFT JOIN thresholds t USING (lang)
            WHERE {condition} ORDER BY c.count DESC, c.lang, c.entry_id LIMIT {int(limit)}""",
            params,
        )

    def top_entries(self, lang: str, k: int = 20) -> pd.DataFrame:
        """The k most matched entries of a language."""
        return self.sql(
            "SELECT entry_id, entry, count FROM entry_counts WHERE lang = ? "
            f"ORDER BY count DESC, entry_id LIMIT {int(k)}",
            [lang],
        )

    def bottom_entries(self, lang: str, k: int = 20, include_zero: bool = False) -> pd.DataFrame:
        """The k least matched entries of a language (those never matched only if include_zero)."""
        floor = "" if include_zero else "AND count > 0"
        return self.sql(
            f"SELECT entry_id, entry, count FROM entry_counts WHERE lang = ? {floor} "
            f"ORDER BY count, entry_id LIMIT {int(k)}",
            [lang],
        )

    def count_distribution(self, lang: str) -> pd.DataFrame:
        """count -> number of entries with that count (zeros excluded), ascending."""
        return self.sql(
            "SELECT count, count(*) AS entries FROM entry_counts WHERE lang = ? AND count > 0 "
            "GROUP BY count ORDER BY count",
            [lang],
        )

    def kept_vs_matched(self, lang: str) -> pd.DataFrame:
        """Per matched entry of a language: records matched before balancing and kept after it."""
        if "curated" not in self.tables:
            raise ReportError(f"{self.output}: no curated table, so nothing was kept yet")
        return self.sql(
            """WITH kept AS (
                SELECT entry_id, count(*) AS kept FROM (
                    SELECT unnest(entry_ids) AS entry_id FROM curated WHERE lang = ?
                ) GROUP BY entry_id
            )
            SELECT c.entry_id, c.entry, c.count AS matched, coalesce(k.kept, 0) AS kept
            FROM entry_counts c LEFT JOIN kept k USING (entry_id)
            WHERE c.lang = ? AND c.count > 0 ORDER BY matched DESC, c.entry_id""",
            [lang, lang],
        )

    # -- languages -----------------------------------------------------------------------------

    def languages(self) -> pd.DataFrame:
        """One row per language: records, matched records and share, entries and the share of
        them ever matched, t, tail fraction, kept records and their share of the matched."""
        entries = self.sql(
            "SELECT lang, count(*) AS entries, count_if(count > 0) AS entries_matched "
            "FROM entry_counts GROUP BY lang"
        )
        thresholds = self.sql("SELECT lang, t, tail_fraction, matched_records FROM thresholds")
        frame = entries.merge(thresholds, on="lang", how="outer")
        counts = self.run.get("counts", {})
        records = counts.get("records_per_lang")
        kept = counts.get("curated_per_lang")
        if records is None and "matches" in self.tables:
            records = dict(
                self.con.execute("SELECT lang, count(*) FROM matches GROUP BY lang").fetchall()
            )
        if kept is None and "curated" in self.tables:
            kept = dict(
                self.con.execute("SELECT lang, count(*) FROM curated GROUP BY lang").fetchall()
            )
        nothing_kept_yet = kept is None  # no curated table: kept is unknown, not zero
        records, kept = records or {}, kept or {}
        langs = sorted(set(frame["lang"]) | set(records))
        frame = frame.set_index("lang").reindex(langs)
        frame["records"] = pd.Series(records, dtype="float64").reindex(langs)
        frame["matched_records"] = frame["matched_records"].fillna(0)
        frame["kept_records"] = pd.Series(kept, dtype="float64").reindex(langs)
        if not nothing_kept_yet:
            frame["kept_records"] = frame["kept_records"].fillna(0)
        frame["matched_share"] = frame["matched_records"] / frame["records"]
        frame["entries_matched_share"] = frame["entries_matched"] / frame["entries"]
        frame["kept_share"] = frame["kept_records"] / frame["matched_records"].where(
            frame["matched_records"] > 0
        )
        for column in ("records", "matched_records", "kept_records", "entries", "entries_matched"):
            frame[column] = frame[column].astype("Int64")
        columns = [
            "records",
            "matched_records",
            "matched_share",
            "entries",
            "entries_matched",
            "entries_matched_share",
            "t",
            "tail_fraction",
            "kept_records",
            "kept_share",
        ]
        return frame[columns].reset_index()

    def main_languages(self, n: int = 6) -> list[str]:
        """The n languages with the most matched records."""
        rows = self.con.execute(
            "SELECT lang FROM thresholds ORDER BY matched_records DESC, lang LIMIT ?", [n]
        ).fetchall()
        return [r[0] for r in rows]

    def thresholds(self) -> dict[str, float]:
        return dict(self.con.execute("SELECT lang, t FROM thresholds").fetchall())


# -- plots ------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def plot_count_distribution(out: CurationOutput, langs: list[str] | None = None):
    """Entries ranked by match count on log-log axes, one panel per language, with its t."""
    plt = _pyplot()
    langs = langs or out.main_languages()
    thresholds = out.thresholds()
    cols = min(3, max(1, len(langs)))
    rows = -(-len(langs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, lang in zip(axes.flat, langs):
        dist = out.count_distribution(lang)
        counts = dist["count"].repeat(dist["entries"]).to_numpy()[::-1]
        ranks = range(1, len(counts) + 1)
        ax.loglog(ranks, counts, lw=1.5, label="matched records")
        if lang in thresholds:
            ax.axhline(thresholds[lang], color="C3", ls="--", label=f"t = {thresholds[lang]:g}")
        ax.set_title(f"{lang}: {len(counts):,} matched entries")
        ax.set_xlabel("entry rank")
        ax.set_ylabel("records")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(langs) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_kept_vs_matched(out: CurationOutput, lang: str):
    """Before/after balancing for one language: records per entry ranked, and kept vs matched."""
    plt = _pyplot()
    frame = out.kept_vs_matched(lang)
    t = out.thresholds().get(lang)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    ranks = range(1, len(frame) + 1)
    left.loglog(ranks, frame["matched"], lw=1.5, label="matched (before)")
    kept_sorted = frame["kept"].sort_values(ascending=False).to_numpy()
    left.loglog(ranks, kept_sorted.clip(min=0.5), lw=1.5, label="kept (after)")
    right.scatter(frame["matched"], frame["kept"].clip(lower=0.5), s=6, alpha=0.5)
    top = max(float(frame["matched"].max()) if len(frame) else 1.0, 1.0)
    right.plot([1, top], [1, top], color="grey", lw=1, label="kept = matched")
    right.set_xscale("log")
    right.set_yscale("log")
    if t is not None:
        left.axhline(t, color="C3", ls="--", label=f"t = {t:g}")
        right.axhline(t, color="C3", ls="--", label=f"t = {t:g}")
    left.set(title=f"{lang}: records per entry", xlabel="entry rank", ylabel="records")
    right.set(title=f"{lang}: per entry", xlabel="matched records", ylabel="kept records")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_kept_share(out: CurationOutput, frame: pd.DataFrame | None = None):
    """Share of each language's matched records that balancing kept."""
    plt = _pyplot()
    frame = out.languages() if frame is None else frame
    frame = frame[frame["matched_records"] > 0]
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(frame) + 2), 3.5))
    ax.bar(frame["lang"], frame["kept_share"].astype(float), color="C2")
    ax.set_ylim(0, 1.05)
    ax.set(title="kept / matched records per language", ylabel="kept share")
    fig.tight_layout()
    return fig


def plot_languages(
    out: CurationOutput, frame: pd.DataFrame | None = None, sort_by: str = "records"
):
    """Records, matched and kept records per language (log scale), sorted by `sort_by`."""
    plt = _pyplot()
    import numpy as np

    frame = out.languages() if frame is None else frame
    frame = frame.sort_values(sort_by, ascending=False, na_position="last")
    x = np.arange(len(frame))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(frame) + 2), 4))
    for i, (column, label) in enumerate(
        [("records", "records"), ("matched_records", "matched"), ("kept_records", "kept")]
    ):
        values = frame[column].astype("float64").fillna(0).to_numpy()
        ax.bar(x + (i - 1) * width, values, width, label=label)
    for xi, t in zip(x, frame["t"]):
        if pd.notna(t):
            ax.annotate(
                f"t={t:g}",
                (xi, 1),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                fontsize=7,
                rotation=90,
            )
    ax.set_yscale("log")
    ax.set_xticks(x, frame["lang"])
    ax.set(title="records per language", ylabel="records")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# -- HTML -------------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#eee;cursor:pointer}
td:first-child,th:first-child{text-align:left}
.entries{display:flex;flex-wrap:wrap;gap:2em}
.warn{color:#a00;font-weight:bold}
"""
_SORT_JS = """
const sortable = 'table.sortable:not([data-sorting]) th';
document.querySelectorAll(sortable).forEach(th => th.addEventListener('click', () => {
  const i = th.cellIndex;
  const body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
  const asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
  const key = r => { const s = r.cells[i].textContent.replace(/,/g, ''); const n = parseFloat(s);
                     return isNaN(n) ? s : n; };
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1);
  });
  rows.forEach(r => body.appendChild(r));
}));
document.querySelectorAll('table.sortable').forEach(t => t.dataset.sorting = '1');
"""


def figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    _pyplot().close(fig)
    return buffer.getvalue()


def _img(fig, alt: str) -> str:
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(frame: pd.DataFrame, sortable: bool = False) -> str:
    classes = "sortable" if sortable else ""
    return frame.to_html(
        index=False, escape=True, classes=classes, na_rep="", float_format="{:.4g}".format
    )


def sortable_table_html(frame: pd.DataFrame) -> str:
    """A table whose columns sort on a click on their header (inline script, no download)."""
    return _table(frame, sortable=True) + f"<script>{_SORT_JS}</script>"


def image_drops(output: str) -> pd.DataFrame | None:
    """What happened to a run's curated images after curation, by stage and reason, from the
    manifests of `make shards` (OUT/shards/) and `make filter` (OUT/filtered/shards/); None
    when neither exists."""

    def manifest(name: str) -> dict:
        try:
            return json.loads(tables.read_text(f"{output}/{name}/manifest.json") or "{}")
        except (OSError, ValueError):
            return {}

    rows = []
    shards = manifest("shards")
    if shards:
        rows.append(("export", "exported", shards.get("total_samples", 0)))
        for reason, n in (shards.get("url_filter_drops") or {}).items():
            rows.append(("export", f"url: {reason}", n))
        failures = (shards.get("download") or {}).get("failure_categories") or {}
        for reason, n in failures.items():
            rows.append(("download", reason, n))
    filtered = manifest("filtered/shards")
    if filtered:
        for reason, n in (filtered.get("drops") or {}).items():
            rows.append(("image filter", reason, n))
        rows.append(("image filter", "faces blurred", filtered.get("blurred_images", 0)))
        rows.append(("image filter", "kept", filtered.get("kept", 0)))
    if not rows:
        return None
    return pd.DataFrame(rows, columns=["stage", "what", "images"])


def recount_table(out: CurationOutput) -> pd.DataFrame | None:
    """--recount-from runs: per language, t and the kept images before (the run the shards
    came from) and after (this run); None for other runs."""
    recount = out.run.get("recount") or {}
    if not recount:
        return None
    before = recount.get("before") or {}
    t_before, kept_before = before.get("t", {}), before.get("curated", {})
    t_after = out.thresholds()
    kept_after = out.run.get("counts", {}).get("curated_per_lang", {})
    langs = sorted(set(t_before) | set(t_after))
    return pd.DataFrame(
        {
            "lang": langs,
            "t before": [t_before.get(lang) for lang in langs],
            "t after": [t_after.get(lang) for lang in langs],
            "kept before": [kept_before.get(lang, 0) for lang in langs],
            "kept after": [kept_after.get(lang, 0) for lang in langs],
        }
    )


def html_report(out: CurationOutput, langs: list[str] | None = None, k: int = 15) -> str:
    """The whole report as one standalone HTML page (plots embedded as base64 PNG)."""
    langs = langs or out.main_languages()
    frame = out.languages()
    config = out.run.get("config", {})
    parts = [f"<h1>Curation report: {html.escape(out.output)}</h1>"]
    if not out.complete:
        parts.append('<p class="warn">No _SUCCESS marker: this run is incomplete or failed.</p>')
    if config:
        summary = {
            k_: config.get(k_)
            for k_ in ("input", "metadata", "t_en", "tail_fraction", "seed", "format")
        }
        parts.append(_table(pd.DataFrame([summary])))
    counts = {k_: v for k_, v in out.run.get("counts", {}).items() if not isinstance(v, dict)}
    counts.update({f"drop: {k_}": v for k_, v in out.run.get("drops", {}).items()})
    if counts:
        parts.append(_table(pd.DataFrame([counts])))
    images = out.image_drops()
    if images is not None:
        parts.append("<h2>Images: download and filtering</h2>")
        parts.append(_table(images))
    recount = recount_table(out)
    if recount is not None:
        parts.append(
            "<h2>Before and after download</h2><p>This run counted only the images in "
            f"{html.escape(str(out.run['recount'].get('shards')))} "
            f"({out.run['recount'].get('surviving_images')} downloaded and kept by the image "
            "filter): t and the kept set per language, against the run those shards came "
            "from.</p>"
        )
        parts.append(_table(recount))
    parts.append("<h2>Languages</h2><p>Click a column header to sort.</p>")
    parts.append(_table(frame, sortable=True))
    parts.append(_img(plot_languages(out, frame), "records per language"))
    parts.append("<h2>Kept share</h2>" + _img(plot_kept_share(out, frame), "kept share"))
    parts.append("<h2>Match counts per entry, with t</h2>")
    parts.append(_img(plot_count_distribution(out, langs), "count distribution"))
    if "curated" in out.tables:
        parts.append("<h2>Before and after balancing</h2>")
        for lang in langs:
            parts.append(_img(plot_kept_vs_matched(out, lang), f"kept vs matched {lang}"))
    parts.append(f"<h2>Top and bottom {k} entries</h2>")
    for lang in langs:
        parts.append(f"<h3>{html.escape(lang)}</h3><div class='entries'>")
        parts.append("<div><b>most matched</b>" + _table(out.top_entries(lang, k)) + "</div>")
        parts.append(
            "<div><b>least matched (≥ 1)</b>" + _table(out.bottom_entries(lang, k)) + "</div></div>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Curation report</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}<script>{_SORT_JS}</script>"
        "</body></html>"
    )


def write_html(out: CurationOutput, path: str | Path, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(html_report(out, **kwargs), encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m curation.report",
        description="Summarize a curation run (the --output of jobs/curate.py) as an HTML report.",
    )
    parser.add_argument("output", help="the curation run's output folder or URI")
    parser.add_argument("--html", required=True, help="where to write the standalone HTML file")
    parser.add_argument(
        "--languages",
        help="comma-separated languages for the per-language plots "
        "(default: the 6 with the most matched records)",
    )
    parser.add_argument("--top-k", type=int, default=15, help="entries in the top/bottom tables")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    try:
        out = CurationOutput(args.output)
        langs = args.languages.split(",") if args.languages else None
        if langs:
            unknown = sorted(set(langs) - set(out.thresholds()))
            if unknown:
                raise ReportError(f"{args.output}: no matched records in {', '.join(unknown)}")
        if not out.complete:
            print(
                f"warning: {args.output} has no _SUCCESS marker (incomplete run)", file=sys.stderr
            )
        path = write_html(out, args.html, langs=langs, k=args.top_k)
    except (ReportError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
