"""curation.report and the notebooks, on a real (small) curation run of CC3M and WIT captions."""

import json
import re
import subprocess
import sys
from collections import Counter

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.curate.job import CurateConfig, run
from curation.report.job import CurationOutput, ReportError, html_report
from tests.conftest import PROJECT_ROOT
from tests.curation_fixtures import caption_rows, wit_entries, write_metadata

LANGS = ("da", "en", "ja")
T_EN = 30


@pytest.fixture(scope="session")
def curation_output(spark, tmp_path_factory, wordnet_lemmas, wit_captions):
    """jobs/curate.py's library run on 3,000 CC3M + WIT en/da/ja captions (Parquet output)."""
    root = tmp_path_factory.mktemp("report")
    rows = caption_rows(3000, LANGS)
    columns = ("url", "page_url", "text", "lang")
    pq.write_table(
        pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)}),
        root / "alt_text.parquet",
    )
    entries = {"en": sorted({e for e in wordnet_lemmas if len(e) > 1})}
    entries |= {lang: wit_entries(wit_captions[lang], lang) for lang in ("da", "ja")}
    write_metadata(root / "metadata", entries)
    out = root / "out"
    run(
        CurateConfig(
            metadata=str(root / "metadata"),
            input=str(root / "alt_text.parquet"),
            output=str(out),
            t_en=T_EN,
            seed=3,
        ),
        spark,
    )
    return out


@pytest.fixture(scope="session")
def delta_output(curation_output, tmp_path_factory):
    """The same run converted in place to Delta tables, as the job does without delta-spark."""
    import shutil

    from deltalake import Field, Schema, convert_to_deltalake

    out = tmp_path_factory.mktemp("report_delta") / "out"
    shutil.copytree(curation_output, out)
    for name in ("matches", "entry_counts", "curated"):
        convert_to_deltalake(
            str(out / name),
            partition_by=Schema([Field("lang", "string")]),
            partition_strategy="hive",
        )
    convert_to_deltalake(str(out / "thresholds"))
    return out


def read(path):
    frame = pq.read_table(path).to_pandas()
    if "lang" in frame:
        frame["lang"] = frame["lang"].astype(str)
    return frame


def test_lookup_equals_the_table_read_with_pandas(curation_output):
    counts = read(curation_output / "entry_counts")
    thresholds = read(curation_output / "thresholds").set_index("lang")["t"]
    out = CurationOutput(curation_output)
    assert out.tables["entry_counts"] == "parquet" and out.complete

    exact = out.lookup("dog")
    expected = counts[counts["entry"] == "dog"]
    assert list(exact["lang"]) == ["en"]
    assert exact["count"].tolist() == expected["count"].tolist() and exact["count"][0] > 10
    assert bool(exact["head"][0]) == (exact["count"][0] >= thresholds["en"])

    prefix = out.lookup("dog", prefix=True, limit=10_000)
    expected = counts[counts["entry"].str.startswith("dog")]
    assert len(prefix) == len(expected) > 5
    assert sorted(prefix["entry"]) == sorted(expected["entry"])
    assert prefix["count"].is_monotonic_decreasing

    ja = counts[counts["lang"] == "ja"].sort_values(["count", "entry_id"], ascending=[False, True])
    first = ja["entry"].iloc[0][0]
    got = out.lookup(first, lang="ja", prefix=True, limit=10_000)
    assert set(got["lang"]) == {"ja"}
    assert sorted(got["entry"]) == sorted(ja[ja["entry"].str.startswith(first)]["entry"])
    assert out.lookup("no such entry at all").empty


def test_top_and_bottom_entries(curation_output):
    counts = read(curation_output / "entry_counts")
    out = CurationOutput(curation_output)
    for lang in LANGS:
        mine = counts[counts["lang"] == lang].sort_values(["count", "entry_id"])
        top = out.top_entries(lang, 10)
        assert top["count"].tolist() == mine["count"].iloc[::-1].head(10).tolist()
        assert top["count"].iloc[0] == mine["count"].max() > 0
        bottom = out.bottom_entries(lang, 10)
        nonzero = mine[mine["count"] > 0]
        assert bottom["entry_id"].tolist() == nonzero["entry_id"].head(10).tolist()
        with_zero = out.bottom_entries(lang, 5, include_zero=True)
        assert with_zero["count"].tolist() == mine["count"].head(5).tolist()
        assert with_zero["entry_id"].tolist() == mine["entry_id"].head(5).tolist()


def test_languages_table_matches_the_run(curation_output):
    run_json = json.loads((curation_output / "run.json").read_text())
    matches = read(curation_output / "matches")
    curated = read(curation_output / "curated")
    counts = read(curation_output / "entry_counts")
    table = CurationOutput(curation_output).languages().set_index("lang")
    assert list(table.index) == sorted(LANGS)
    for lang in LANGS:
        mine = matches[matches["lang"] == lang]
        matched = int((mine["entry_ids"].map(len) > 0).sum())
        assert (
            table.loc[lang, "records"] == len(mine) == run_json["counts"]["records_per_lang"][lang]
        )
        assert table.loc[lang, "matched_records"] == matched
        assert table.loc[lang, "matched_share"] == pytest.approx(matched / len(mine))
        kept = int((curated["lang"] == lang).sum())
        assert table.loc[lang, "kept_records"] == kept
        assert table.loc[lang, "kept_share"] == pytest.approx(kept / matched)
        entries = counts[counts["lang"] == lang]
        assert table.loc[lang, "entries"] == len(entries)
        assert table.loc[lang, "entries_matched"] == int((entries["count"] > 0).sum())
    assert table.loc["en", "t"] == T_EN
    assert 0 < table.loc["en", "kept_share"] < 1  # a small t_en drops English head records


def test_kept_vs_matched_shows_heads_capped_and_tails_kept(curation_output):
    curated = read(curation_output / "curated")
    out = CurationOutput(curation_output)
    frame = out.kept_vs_matched("en").set_index("entry_id")
    kept = Counter(int(i) for ids in curated[curated["lang"] == "en"]["entry_ids"] for i in ids)
    assert {k: v for k, v in frame["kept"].items() if v} == dict(kept)
    assert (frame["kept"] <= frame["matched"]).all()
    head = frame[frame["matched"] >= 10 * T_EN]
    assert len(head) >= 3 and (head["kept"] < head["matched"]).all()
    dist = out.count_distribution("en")
    assert dist["entries"].sum() == len(frame)
    assert dist["count"].is_monotonic_increasing


def test_delta_output_reads_the_same(curation_output, delta_output):
    parquet, delta = CurationOutput(curation_output), CurationOutput(delta_output)
    assert delta.tables == dict.fromkeys(
        ("entry_counts", "thresholds", "curated", "matches"), "delta"
    )
    pd.testing.assert_frame_equal(parquet.languages(), delta.languages())
    pd.testing.assert_frame_equal(
        parquet.lookup("cat", prefix=True), delta.lookup("cat", prefix=True)
    )
    pd.testing.assert_frame_equal(parquet.kept_vs_matched("ja"), delta.kept_vs_matched("ja"))
    memory = CurationOutput(delta_output, materialize=True)
    pd.testing.assert_frame_equal(parquet.top_entries("da"), memory.top_entries("da"))


def test_delta_is_read_through_its_log(delta_output, tmp_path, monkeypatch):
    import shutil

    import curation.report.job

    out = tmp_path / "out"
    shutil.copytree(delta_output, out)
    plain = CurationOutput(out)
    before, prefix_a = plain.languages(), plain.lookup("a", prefix=True, limit=50)
    # a file the log does not list (an overwritten version not vacuumed yet) must not be read
    stale = next((out / "entry_counts" / "lang=en").glob("*.parquet"))
    shutil.copy(stale, stale.with_name("stale-old-version.parquet"))
    pd.testing.assert_frame_equal(CurationOutput(out).languages(), before)
    # tables DuckDB cannot scan as plain files (deletion vectors, renamed paths) go via delta-rs
    monkeypatch.setattr(curation.report.job, "_plain_delta_files", lambda table: None)
    via_arrow = CurationOutput(out)
    assert via_arrow.tables["entry_counts"] == "delta"
    pd.testing.assert_frame_equal(via_arrow.languages(), before)
    pd.testing.assert_frame_equal(via_arrow.lookup("a", prefix=True, limit=50), prefix_a)


def test_a_run_stopped_before_curation_reports_what_exists(curation_output, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(curation_output, out)
    for name in ("curated", "run.json", "_SUCCESS"):
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    partial = CurationOutput(out)
    table = partial.languages().set_index("lang")
    full = CurationOutput(curation_output).languages().set_index("lang")
    assert table["records"].tolist() == full["records"].tolist()  # counted from matches/
    assert table["kept_records"].isna().all()  # unknown, not zero
    page = html_report(partial, langs=["en"])
    assert "incomplete" in page and "Before and after balancing" not in page


def test_missing_tables_give_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="no entry_counts or thresholds table"):
        CurationOutput(tmp_path)


def test_cli_writes_a_standalone_html_report(curation_output, tmp_path):
    target = tmp_path / "sub" / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "curation.report", str(curation_output), "--html", str(target)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(target)
    page = target.read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 3 + len(LANGS)  # languages, kept share, distributions, one per language
    import base64

    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert 'src="http' not in page and "<script src" not in page  # nothing fetched when opened
    top_en = CurationOutput(curation_output).top_entries("en", 1)["entry"][0]
    assert f"<td>{top_en}</td>" in page
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "curation.report",
            str(tmp_path / "nowhere"),
            "--html",
            "x.html",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "nowhere" in bad.stderr


def test_html_report_escapes_entries_and_flags_an_unfinished_run(curation_output, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(curation_output, out)
    counts = pq.read_table(out / "entry_counts")
    top = CurationOutput(out).top_entries("en", 1)["entry"][0]
    entries = [("<b>x</b>" if e == top else e) for e in counts.column("entry").to_pylist()]
    counts = counts.set_column(counts.schema.get_field_index("entry"), "entry", pa.array(entries))
    shutil.rmtree(out / "entry_counts")
    pq.write_to_dataset(counts, str(out / "entry_counts"), partition_cols=["lang"])
    (out / "_SUCCESS").unlink()
    page = html_report(CurationOutput(out), langs=["en"])
    assert "<td>&lt;b&gt;x&lt;/b&gt;</td>" in page and "<b>x</b>" not in page
    assert "incomplete" in page


NOTEBOOKS = ("entry_counts.ipynb", "balancing.ipynb", "languages.ipynb")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_headless_and_draws_its_plots(name, curation_output, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    path = PROJECT_ROOT / "notebooks" / name
    notebook = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), (
        "notebooks are stored without outputs"
    )
    monkeypatch.setenv("CURATION_OUTPUT", str(curation_output))
    # kernel "python3" is ipykernel's spec with argv "python": jupyter_client starts sys.executable
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=240,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2, f"{name} drew {len(pngs)} plots"
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    assert tables, f"{name} showed no table"
    assert str(curation_output) in json.dumps([o.get("text", "") for o in outputs])
