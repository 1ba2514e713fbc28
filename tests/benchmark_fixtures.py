"""A few records of each multilingual benchmark in the format it is distributed in, built from
real photographs (scikit-image's) and real multilingual captions (the shared WIT sample):
Crossmodal-3600's captions.jsonl + images/, Babel-ImageNet's class-name and prompt JSON + an
ImageNet validation folder (synset folders, or flat with LOC_val_solution.csv), and CVQA's
Parquet files as the Hugging Face hub serves them (or a save_to_disk folder of Arrow)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image


def photo(name: str, size: int = 80, crop: int = 0) -> bytes:
    """JPEG bytes of a scikit-image photograph, resized (and shifted by `crop` px)."""
    import skimage

    image = Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")
    w, h = image.size
    image = image.crop((crop, crop, w - crop, h)).resize((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# -- Crossmodal-3600 -------------------------------------------------------------------------------

XM3600_KEYS = ("000411001ff7dd4f", "00177d5e7b8e6a4b", "0029a7fa5b3c1d2e", "003b4c5d6e7f8091")


def write_xm3600(raw: Path, wit: dict[str, list[str]], english: list[str]) -> dict:
    """Four images: the first with en, el and ja captions, the second without ja, the third
    missing on disk, the fourth with an empty el caption list. Returns what a build of en, el,
    ja must find."""
    (raw / "images").mkdir(parents=True)
    pictures = ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png")
    for key, name in zip(XM3600_KEYS, pictures, strict=True):
        if key != XM3600_KEYS[2]:
            (raw / "images" / f"{key}.jpg").write_bytes(photo(name))

    def entry(captions):
        return {"caption": captions, "caption/tokenized": [c.lower() for c in captions]}

    a, b, c, d = XM3600_KEYS
    records = [
        {"image/key": a, "image/locale": "en", "en": entry(english[:1]),
         "el": entry(wit["el"][:2]), "ja": entry(wit["ja"][:1])},
        {"image/key": b, "image/locale": "el", "en": entry(english[1:2]),
         "el": entry(wit["el"][2:3])},
        {"image/key": c, "image/locale": "en", "en": entry(english[2:3])},
        {"image/key": d, "image/locale": "ja", "en": entry(english[3:5]), "el": entry([]),
         "ja": entry(wit["ja"][1:2])},
    ]  # fmt: skip
    with (raw / "captions.jsonl").open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {  # images with captions in each language, and what is skipped
        "per_language": {"en": 3, "el": 2, "ja": 2},
        "dropped": {"missing_image": 1, "missing_language": 2},
        "captions": {
            (r["image/key"], lang): r[lang]["caption"]
            for r in records
            for lang in ("en", "el", "ja")
            if r.get(lang) and r["image/key"] != c and r[lang]["caption"]
        },
    }


# -- Babel-ImageNet --------------------------------------------------------------------------------

# ImageNet-1k classes of the photographs: 281 tabby cat (n02123045), 967 espresso (n07920052),
# 812 space shuttle (n04266014), 817 sports car (n04285008, no language below names it)
VAL_IMAGES = {
    "n02123045": [("ILSVRC2012_val_00000101", "chelsea.png", 0),
                  ("ILSVRC2012_val_00000102", "chelsea.png", 12)],
    "n07920052": [("ILSVRC2012_val_00000201", "coffee.png", 0)],
    "n04266014": [("ILSVRC2012_val_00000301", "rocket.jpg", 0)],
    "n04285008": [("ILSVRC2012_val_00000401", "motorcycle_left.png", 0)],
}  # fmt: skip
LABELS = {"n02123045": 281, "n07920052": 967, "n04266014": 812, "n04285008": 817}
BABEL = {
    "DE": [[281, 967], ["Tigerkatze", "Espresso"]],
    "EL": [[812, 281, 0], ["διαστημικό λεωφορείο", "γάτα τίγρης", "γλήνι"]],
    "JA": [[1], ["金魚"]],  # no image of its one class
}
PROMPTS = {"DE": ["ein Foto von einem {} .", "ein Bild von {} ."], "EN": ["a photo of a {}."]}


def write_babel(raw: Path) -> None:
    raw.mkdir(parents=True)
    (raw / "babel_imagenet-298.json").write_text(json.dumps(BABEL, ensure_ascii=False))
    (raw / "nllb_dist13b_prompts.json").write_text(json.dumps(PROMPTS, ensure_ascii=False))


def write_imagenet_val(root: Path, flat: bool) -> None:
    """Synset folders (torchvision's ImageFolder), or flat with Kaggle's LOC_val_solution.csv."""
    root.mkdir(parents=True)
    rows = ["ImageId,PredictionString"]
    for wnid, images in VAL_IMAGES.items():
        folder = root if flat else root / wnid
        folder.mkdir(exist_ok=True)
        for stem, name, crop in images:
            (folder / f"{stem}.JPEG").write_bytes(photo(name, crop=crop))
            rows.append(f"{stem},{wnid} 10 20 30 40 ")
    if flat:
        (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")


# -- CVQA ------------------------------------------------------------------------------------------

CVQA_ROWS = [
    # (subset, question, options, translated question, translated options, label, picture)
    ("('Japanese', 'Japan')", "この動物は何ですか？", ["猫", "犬", "鳥", "魚"],
     "What is this animal?", ["cat", "dog", "bird", "fish"], 0, "chelsea.png"),
    ("('Japanese', 'Japan')", "これは何の飲み物ですか？", ["緑茶", "コーヒー", "牛乳", "水"],
     "What drink is this?", ["green tea", "coffee", "milk", "water"], 1, "coffee.png"),
    ("('Japanese', 'Japan')", "これは何ですか？", ["自転車", "船", "ロケット", "家"],
     "What is this?", ["bicycle", "boat", "rocket", "house"], 2, "rocket.jpg"),
    ("('Greek', 'Greece')", "Τι είναι αυτό το ζώο;", ["σκύλος", "γάτα", "άλογο", "ψάρι"],
     "What is this animal?", ["dog", "cat", "horse", "fish"], 1, "chelsea.png"),
    ("('Greek', 'Greece')", "Τι ρόφημα είναι αυτό;", ["τσάι", "χυμός", "νερό", "καφές"],
     "What drink is this?", ["tea", "juice", "water", "coffee"], 3, "coffee.png"),
    # held back by the hub copy: no label
    ("('Greek', 'Greece')", "Τι είναι αυτό;", ["α", "β", "γ", "δ"], "What is this?",
     ["a", "b", "c", "d"], -1, "astronaut.png"),
    # three options only: not a CVQA question
    ("('Japanese', 'Japan')", "何色ですか？", ["赤", "青", "緑"], "What colour is it?",
     ["red", "blue", "green"], 0, "coffee.png"),
]  # fmt: skip


def cvqa_table():
    import pyarrow as pa

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns = ("image", "ID", "Subset", "Question", "Translated Question", "Options",
               "Translated Options", "Label", "Category")  # fmt: skip
    rows = {name: [] for name in columns}
    for n, (subset, q, opts, tq, topts, label, picture) in enumerate(CVQA_ROWS):
        rows["image"].append({"bytes": photo(picture, crop=n), "path": f"{n}.jpg"})
        rows["ID"].append(f"{n:016d}_{subset[2:7]}")
        rows["Subset"].append(subset)
        rows["Question"].append(q)
        rows["Translated Question"].append(tq)
        rows["Options"].append(opts)
        rows["Translated Options"].append(topts)
        rows["Label"].append(label)
        rows["Category"].append("Objects / materials / clothing")
    types = {"image": image_type, "Options": pa.list_(pa.string()),
             "Translated Options": pa.list_(pa.string()), "Label": pa.int64()}  # fmt: skip
    return pa.table({k: pa.array(v, type=types.get(k, pa.string())) for k, v in rows.items()})


def write_cvqa(raw: Path, arrow: bool = False) -> None:
    """The hub layout (data/test-00000-of-00002.parquet, ...) or save_to_disk's Arrow stream."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = cvqa_table()
    if arrow:
        raw.mkdir(parents=True)
        with pa.OSFile(str(raw / "data-00000-of-00001.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table, max_chunksize=3)
        (raw / "state.json").write_text(json.dumps({"_data_files": [
            {"filename": "data-00000-of-00001.arrow"}]}))  # fmt: skip
        return
    (raw / "data").mkdir(parents=True)
    pq.write_table(table.slice(0, 4), raw / "data" / "test-00000-of-00002.parquet")
    pq.write_table(table.slice(4), raw / "data" / "test-00001-of-00002.parquet")
