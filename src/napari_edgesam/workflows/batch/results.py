"""The results of a batch run: what happened to each input, and the run log.

One concept: :class:`FileResult` (one input's outcome: done, skipped, failed with a reason,
or cancelled), :class:`BatchSummary` (all of a run's results, in input order) and the run
log in the output folder (:data:`LOG_NAME`, one JSON line per input per run).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["LOG_NAME", "BatchSummary", "FileResult", "append_log", "now", "worker_name"]

#: Run log in the output folder: one JSON line per input per run.
LOG_NAME = "napari-edgesam-batch.log.jsonl"


@dataclass
class FileResult:
    """What happened to one input.

    Attributes
    ----------
    input : str
    status : {"done", "skipped", "failed", "cancelled"}
    output, sidecar : str or None
        Paths of the label TIFF and its sidecar (set for done and skipped).
    n_objects : int or None
    seconds : float
        Wall time spent on the file (0 for skipped).
    error : str or None
        One-line reason for failed inputs.
    worker : str
        ``host:pid`` of the process that did the work.
    slices : int
        Number of 2D slices segmented.
    """

    input: str
    status: str
    output: str | None = None
    sidecar: str | None = None
    n_objects: int | None = None
    seconds: float = 0.0
    error: str | None = None
    worker: str = ""
    slices: int = 0

    def to_dict(self) -> dict:
        """The result as plain JSON-ready values (for the run log)."""
        return asdict(self)


@dataclass
class BatchSummary:
    """All results of a batch run, in input order.

    Attributes
    ----------
    results : list of FileResult
    out_dir : Path
    seconds : float
    cancelled : bool
        The run was cancelled (some inputs are ``"cancelled"``).
    """

    results: list[FileResult]
    out_dir: Path
    seconds: float = 0.0
    cancelled: bool = False

    def _with(self, status: str) -> list[FileResult]:
        return [r for r in self.results if r.status == status]

    @property
    def succeeded(self) -> list[FileResult]:
        """Files processed in this run (status ``"done"``)."""
        return self._with("done")

    @property
    def skipped(self) -> list[FileResult]:
        """Files whose verified output already existed (status ``"skipped"``)."""
        return self._with("skipped")

    @property
    def failed(self) -> list[FileResult]:
        """Files that failed (status ``"failed"``; each with its message)."""
        return self._with("failed")

    @property
    def not_done(self) -> list[FileResult]:
        """Inputs left undone by a cancellation."""
        return self._with("cancelled")

    @property
    def ok(self) -> bool:
        """True when every input has a valid output (done now or skipped as done before)."""
        return all(r.status in ("done", "skipped") for r in self.results)

    def format(self) -> str:
        """A human-readable summary: one line per failure, then the counts."""
        lines = [f"FAILED {r.input}: {r.error}" for r in self.failed]
        slices = sum(r.slices for r in self.succeeded)
        busy = sum(r.seconds for r in self.succeeded)
        rate = f", {slices / busy:.2f} slices/s per worker" if busy > 0 and slices else ""
        lines.append(
            f"{len(self.succeeded)} succeeded, {len(self.skipped)} skipped (already done), "
            f"{len(self.failed)} failed"
            + (f", {len(self.not_done)} cancelled" if self.not_done else "")
            + f" in {self.seconds:.1f} s{rate}; outputs in {self.out_dir}"
        )
        return "\n".join(lines)


def now() -> str:
    """The current UTC time, ISO 8601 with milliseconds (sidecars, the run log)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def worker_name() -> str:
    """``host:pid`` of this process (:attr:`FileResult.worker`)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def append_log(out_dir: Path, run_id: str, res: FileResult) -> None:
    """Append one line for ``res`` to the run log of ``out_dir`` (never raises).

    Parameters
    ----------
    out_dir : Path
        The output folder.
    run_id : str
        Identifies the run (all lines of one run share it).
    res : FileResult
    """
    line = json.dumps({"time": now(), "run": run_id, **res.to_dict()}, default=str)
    try:
        with open(out_dir / LOG_NAME, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except OSError:
        pass
