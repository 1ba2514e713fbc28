"""What every job shares: one exception base, and one error path from failure to exit code.

A job (`jobs/*.py`) parses its flags into its stage's frozen config, then hands the stage's
`run` to `run_job`, which turns any failure into one line on stderr, `NAME: error: ...`.
"""

from __future__ import annotations

import re
import sys


class PipelineError(ValueError):
    """A problem with a job's inputs or flags, said in one line (exit `exit_code`, 2). Each stage
    has its own subclass below; being a ValueError, it is caught wherever bad input was."""

    exit_code = 2


class MetadataError(PipelineError):
    """Stage 1, the metadata build (curation/metadata/)."""


class ExtractError(PipelineError):
    """Stage 2, alt-text extraction (curation/alt_text/)."""


class NothingReadable(ExtractError):
    """Extraction ran, and none of its input files could be read: the job failed (exit 1)."""

    exit_code = 1


class CurationError(PipelineError):
    """Stage 3, curation (curation/curate/)."""


class OnlineCurationError(CurationError):
    """Curation at training time (curation/curate/online.py), as the trainer reports it."""


class ExportError(PipelineError):
    """Stage 4, shard export (curation/shards/)."""


class FilterError(PipelineError):
    """Stage 4b, image filtering (curation/image_filter/)."""


class ReportError(PipelineError):
    """The analyst report (curation/report/): the output folder cannot be reported on."""


class PackError(PipelineError):
    """`make pack-env` (curation/tools/pack_env.py): the executors' environment is unusable."""

    exit_code = 1


_MISSING_MODULE = re.compile(r"No module named '([^']+)'")


def error_line(error: BaseException) -> str:
    """One line that says what went wrong, also when a Spark task failed on an executor (the
    Python worker's traceback ends with "SomeError: message"; Spark's own wrapping adds
    'Caused by:' lines). A module missing on the executors says so: the driver has it."""
    text = str(error)
    missing = _MISSING_MODULE.search(text)
    if missing and not isinstance(error, ModuleNotFoundError):
        return (
            f"on the executors: No module named '{missing.group(1)}' (their Python lacks it; "
            "ship the packed environment, `make pack-env`, see docs/operations.md)"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.removeprefix("Caused by: ").split(":", 1)[0]
        if head.endswith(("Error", "Exception")) and ": " in line and not line.startswith("at "):
            return line.removeprefix("Caused by: ")
    return lines[0] if lines else type(error).__name__


def run_job(name: str, body) -> int:
    """Run a job's `body()` (returns its exit code) and turn any failure into one line on
    stderr, `NAME: error: ...`: the stage's error's exit code (2 for bad input), 2 for other bad
    input (ValueError, FileNotFoundError), 1 for anything else (a failed Spark task, I/O)."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except PipelineError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return error.exit_code
    except FileNotFoundError as error:  # FileNotFoundError(uri) names just the path
        text = str(error)
        if not error.strerror and (len(error.args) != 1 or " " not in text):
            text = f"not found: {text}"
        print(f"{name}: error: {text}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"{name}: error: {error_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - a failed Spark task or I/O: say why in one line
        print(f"{name}: error: {error_line(error)}", file=sys.stderr)
        return 1
