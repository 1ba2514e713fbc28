from __future__ import annotations

import csv
from pathlib import Path

import pytest

from curation.alt_text.lid import model_labels
from curation.languages import (
    OTHER,
    Language,
    label_table,
    lid_label_to_lang,
    load_languages,
    load_unmapped,
    no_space_languages,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def languages() -> list[Language]:
    return load_languages()


def test_one_row_per_wikipedia_code(languages):
    codes = (ROOT / "schemas" / "wikipedia_languages.txt").read_text().split()
    assert len(languages) == 330
    assert [lang.code for lang in languages] == codes
    assert len({lang.code for lang in languages}) == 330
    assert all(lang.name and lang.script for lang in languages)


def test_csv_columns_and_bare_labels():
    with open(ROOT / "schemas" / "languages.csv", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert header == ["wiki_code", "name", "script", "no_space", "lid176_labels", "glotlid_labels"]
    for lang in load_languages():
        for label in lang.lid176_labels + lang.glotlid_labels:
            assert not label.startswith("__label__")
        for label in lang.glotlid_labels:
            iso, script = label.split("_")
            assert len(iso) == 3 and len(script) == 4 and script.istitle(), label


def test_every_lid176_label_of_the_shipped_model_routes_exactly_once():
    labels = model_labels()
    assert len(labels) == 176
    table = label_table("lid176")  # raises if a label routes to two codes
    unmapped = load_unmapped()["lid176"]
    for label in labels:
        assert (label in table) != (label in unmapped), label
    assert set(table) <= set(labels), "table names labels the model does not have"
    assert unmapped == {"lrc"}


def test_reference_release_fixes():
    assert lid_label_to_lang("als") == "als"  # lid.176 als = Alemannic Wikipedia
    assert lid_label_to_lang("gsw_Latn", "glotlid") == "als"
    assert lid_label_to_lang("als_Latn", "glotlid") == "sq"  # ISO 639-3 als = Tosk Albanian
    assert lid_label_to_lang("zh") == "zh"
    assert lid_label_to_lang("__label__zh") == "zh"
    assert lid_label_to_lang("yue") == "zh_yue"
    assert lid_label_to_lang("wuu") == "wuu"
    assert lid_label_to_lang("cbk") == "cbk_zam"
    for label in ("sh", "bh", "nah", "war", "no", "nn", "ckb", "azb", "arz"):
        assert lid_label_to_lang(label) == label
    assert lid_label_to_lang("cmn_Hani", "glotlid") == "zh"
    assert lid_label_to_lang("lzh_Hani", "glotlid") == "zh_classical"


def test_unknown_labels_route_to_other():
    assert lid_label_to_lang("lrc") == OTHER
    assert lid_label_to_lang("xx") == OTHER
    assert lid_label_to_lang("") == OTHER
    assert lid_label_to_lang("qqq_Latn", "glotlid") == OTHER
    assert lid_label_to_lang("srp_Latn", "glotlid") == "sr"
    assert lid_label_to_lang("ekk_Cyrl", "glotlid") == "et"  # unknown script, unique ISO code
    with pytest.raises(ValueError):
        lid_label_to_lang("en", model="cld3")


def test_declared_language_tags_and_wikipedia_subdomains():
    from curation.languages import language_from_tag, wikipedia_language

    assert language_from_tag("an") == "an"
    assert language_from_tag("en-US") == "en"
    assert language_from_tag("gsw") == "als"  # Alemannic, as MediaWiki declares it
    assert language_from_tag("als") == "sq"  # BCP 47: Tosk Albanian
    assert language_from_tag("nb-NO") == "no"
    assert language_from_tag("zh-Hant-TW") == "zh"
    assert language_from_tag("yue-HK") == "zh_yue"
    assert language_from_tag("be-tarask") == "be_tarask"
    assert language_from_tag("cmn") == "zh"
    assert language_from_tag("x-klingon") is None
    assert language_from_tag("") is None
    assert wikipedia_language("https://als.wikipedia.org/wiki/X") == "als"
    assert wikipedia_language("https://zh-yue.m.wikipedia.org/wiki/X") == "zh_yue"
    assert wikipedia_language("https://bat-smg.wikipedia.org/") == "bat_smg"
    assert wikipedia_language("https://commons.wikimedia.org/wiki/X") is None
    assert wikipedia_language("https://www.wikipedia.org/") is None
    assert wikipedia_language("https://evil.example/an.wikipedia.org") is None


def test_no_space_languages():
    ns = no_space_languages()
    assert {"ja", "zh", "zh_classical", "zh_yue", "wuu", "th", "lo", "my", "km", "bo", "dz"} <= ns
    assert not ns & {"ko", "vi", "en", "zh_min_nan", "hak", "cdo"}  # written with spaces


def test_use_languages_replaces_the_default_table_in_process():
    from curation.languages import language_from_tag, use_languages

    default = load_languages()
    try:
        use_languages([Language("xx", "Test", "Latn", True, ("en",), ("eng_Latn",))])
        assert lid_label_to_lang("en") == "xx"
        assert lid_label_to_lang("fr") == OTHER
        assert language_from_tag("eng") == "xx"
        assert no_space_languages() == {"xx"}
    finally:
        use_languages(default)
    assert lid_label_to_lang("en") == "en"


def test_load_from_explicit_path(tmp_path):
    path = tmp_path / "langs.csv"
    path.write_text(
        "wiki_code,name,script,no_space,lid176_labels,glotlid_labels\n"
        "xx,Test,Latn,true,a;b,xxx_Latn\n",
        encoding="utf-8",
    )
    (lang,) = load_languages(path)
    assert lang == Language("xx", "Test", "Latn", True, ("a", "b"), ("xxx_Latn",))
    assert label_table("lid176", [lang]) == {"a": "xx", "b": "xx"}


def test_the_wheel_carries_the_schemas_so_a_packed_environment_needs_no_checkout(tmp_path):
    """Executors of a cluster run import `curation` from an installed wheel: the language, LID
    and OMW tables must come with it (they are read on the executors, e.g. by LID)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("setuptools")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q"]
        + ["-w", str(tmp_path / "wheel"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target"]
        + [str(tmp_path / "site"), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    probe = (
        "import curation, curation.languages as L, curation.metadata.wordnet as W;"
        "print(curation.__file__); print(L.schemas_dir());"
        "print(len(L.load_languages()), len(W.load_omw_table()), L.label_table('lid176')['en'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "CURATION_SCHEMAS_DIR"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    package, schemas, counts = result.stdout.splitlines()
    assert package.startswith(str(tmp_path / "site"))
    assert schemas == str(tmp_path / "site" / "curation" / "_schemas")
    languages, omw, english = counts.split()
    assert int(languages) == len(load_languages()) and int(omw) > 20 and english == "en"
