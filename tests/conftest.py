from __future__ import annotations

import gzip
import json
import socket
from pathlib import Path

import pytest

from tests import s3_server

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
# before any Spark session starts: its JVM and Python workers keep the environment they start with
S3_ENDPOINT = s3_server.configure_environment()
WIT_LANGUAGES = ("ar", "bg", "da", "el", "en", "et", "id", "ja", "ko", "tr", "vi")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (for gloo rendezvous, Spark daemons)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_trainer(out: Path, *args: str, ranks: int = 1):
    """trainer/train.py with `args` and --output-dir out (under torchrun with gloo when ranks >
    1, one intra-op thread per rank); asserts it succeeded and returns the CompletedProcess."""
    import os
    import subprocess
    import sys

    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--standalone"]
    cmd = [*launcher, str(PROJECT_ROOT / "trainer" / "train.py"), *args, "--output-dir", str(out)]
    env = dict(os.environ)
    if ranks > 1:
        env["OMP_NUM_THREADS"] = "1"  # two ranks on two cores
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def shared_path(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared sample {path} is absent")
    return path


@pytest.fixture(scope="session")
def s3():
    """An S3-compatible server on 127.0.0.1 (moto), one bucket, for the whole run."""
    server, stop = s3_server.start(S3_ENDPOINT)
    yield server
    stop()


@pytest.fixture(scope="session")
def cc3m_captions() -> list[str]:
    with shared_path("cc3m_val_10k.tsv").open(encoding="utf-8") as f:
        return [line.split("\t", 1)[0] for line in f if line.strip()]


@pytest.fixture(scope="session")
def wit_captions() -> dict[str, list[str]]:
    captions = {}
    for lang in WIT_LANGUAGES:
        with shared_path("wit", f"test_{lang}.jsonl").open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        captions[lang] = [row["caption_reference_description"] for row in rows]
    return captions


@pytest.fixture(scope="session")
def wordnet_lemmas() -> list[str]:
    lemmas = set()
    for pos in ("noun", "verb", "adj", "adv"):
        with gzip.open(shared_path("wordnet", f"index.{pos}.gz"), "rt", encoding="utf-8") as f:
            for line in f:
                if line.startswith(" "):
                    continue  # license header
                lemmas.add(line.split(" ", 1)[0].replace("_", " "))
    return sorted(lemmas)


@pytest.fixture(scope="session")
def spark():
    """One local[2] Spark session for the whole test run."""
    from curation.core.spark import get_spark, local_test_conf

    session = get_spark("tests", master="local[2]", conf=local_test_conf())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
