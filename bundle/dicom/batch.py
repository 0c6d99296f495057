"""Batch inference over a tree of DICOM studies: one checked DICOM SEG per image series, resumable.

:class:`DicomBatch` runs the bundle's own inference pieces (``configs/inference.json``'s network, prompts,
preprocessing, sliding-window inferer and postprocessing, with :class:`~bundle.dicom.LoadSeriesd` as the loader
and :class:`~bundle.dicom.seg.SaveDicomSegd` as the writer; see ``configs/dicom_batch.json``) over every series that
:func:`~bundle.dicom.discover_series` selects. Every series gets a row in ``OUT/manifest.jsonl`` (:class:`Manifest`):
done, failed or skipped, with the reason, timings, outputs and model version. A re-run skips the series already
done with the same model version, so a killed batch resumes where it stopped. One series failing never stops the
batch; the input folder is only read.

Reading the next series (header parsing, pixel decoding, preprocessing) runs in worker threads while the current
one is segmented, so disk and decoding time overlaps with inference.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bundle.dicom import SeriesInfo, discover_series
from bundle.inference import failure_reason, prompted_inference
from bundle.utils.io import file_sha256, remove_leftovers
from bundle.utils.threads import set_inference_threads

__all__ = ["Manifest", "DicomBatch", "BatchFailures", "model_version", "run_batch"]

logger = logging.getLogger(__name__)


def model_version(version: str, ckpt_path: str | os.PathLike) -> str:
    """``"<bundle version>+<first 12 hex digits of the checkpoint's SHA-256>"``: retrained weights are a new version.

    Args:
        version: the bundle's version (``metadata.json``).
        ckpt_path: the model file.

    Returns:
        The model version.
    """
    return f"{version}+{file_sha256(ckpt_path)[:12]}"


class Manifest:
    """``manifest.jsonl``: one JSON object per line, appended and flushed to disk as each series ends.

    A line cut short by a kill is ignored when reading (with a warning); the latest row of a series wins.

    Args:
        path: the manifest file (read when it exists).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():
            for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    self.rows.append(json.loads(line))
                except json.JSONDecodeError:
                    logger.warning("%s line %d is incomplete (an interrupted write); ignored", self.path, number)

    def latest(self, key: str) -> dict[str, Any] | None:
        """The latest row of a series.

        Args:
            key: the series' :attr:`~bundle.dicom.SeriesInfo.key`.

        Returns:
            The row, or ``None``.
        """
        for row in reversed(self.rows):
            if row.get("series") == key:
                return row
        return None

    def is_done(self, key: str, version: str) -> bool:
        """Done with this model version, and every output it listed still exists.

        Args:
            key: the series' :attr:`~bundle.dicom.SeriesInfo.key`.
            version: the model version.

        Returns:
            Whether the series can be skipped.
        """
        row = self.latest(key)
        return (
            row is not None
            and row.get("status") == "done"
            and row.get("model_version") == version
            and all(Path(p).is_file() for p in row.get("outputs", []))
        )

    def append(self, row: dict[str, Any]) -> None:
        """Appends a row (with the time) and flushes it to disk.

        Args:
            row: the row.
        """
        row = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **row}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(row)
        # a line from an earlier killed run may lack its newline: start on a fresh line
        needs_newline = self.path.is_file() and self.path.stat().st_size > 0 and not self._ends_with_newline()
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(("\n" if needs_newline else "") + text + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


class DicomBatch:
    """Segments every selected series under an input folder and writes a checked DICOM SEG for each.

    Args:
        network: the bundle's inference network (``forward(image) -> [B, 1 + K, *S]``).
        inferer: the bundle's inferer (sliding windows).
        preprocessing: the bundle's preprocessing, starting with :class:`~bundle.dicom.LoadSeriesd`.
        postprocessing: the bundle's postprocessing, ending with :class:`~bundle.dicom.seg.SaveDicomSegd`
            (which adds ``"outputs"``).
        output_dir: the output folder (manifest, SEGs).
        version: model version for the manifest and the resume check (see :func:`model_version`).
        prompt_embeddings: ``[K, E]`` embeddings of prompts other than the network's own class prompts, or ``None``.
        device: where the network runs.
        workers: threads reading series ahead of inference (0: read in the main thread, no overlap).
        progress: show a progress bar over series (on standard error).
        threads: the most intra-op threads inference uses on the CPU (default every CPU of the process); fewer
            while other processes keep the cores busy (:func:`bundle.utils.threads.set_inference_threads`, called
            before each series).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: Callable[..., torch.Tensor],
        preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
        postprocessing: Callable[[dict[str, Any]], dict[str, Any]],
        output_dir: str | os.PathLike,
        version: str,
        prompt_embeddings: torch.Tensor | None = None,
        device: str | torch.device = "cpu",
        workers: int = 1,
        progress: bool = True,
        threads: int | None = None,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.network = network
        self.inferer = inferer
        self.preprocessing = preprocessing
        self.postprocessing = postprocessing
        self.output_dir = Path(output_dir)
        self.version = version
        self.prompt_embeddings = prompt_embeddings
        self.device = torch.device(device)
        self.workers = workers
        self.progress = progress
        self.threads = threads

    def _load(self, info: SeriesInfo) -> tuple[dict[str, Any], float]:
        start = time.perf_counter()
        data = self.preprocessing({"image": info, "series": info})
        return data, time.perf_counter() - start

    def _segment(self, data: dict[str, Any]) -> tuple[dict[str, Any], float, float]:
        start = time.perf_counter()
        image = data["image"].unsqueeze(0).to(self.device)
        if self.device.type == "cpu":
            set_inference_threads(self.threads)
        pred = prompted_inference(self.inferer, self.network, image, self.prompt_embeddings)
        data["pred"] = pred[0].cpu()
        middle = time.perf_counter()
        data = self.postprocessing(data)
        return data, middle - start, time.perf_counter() - middle

    def _remove_leftovers(self, series: list[SeriesInfo], input_dir: Path) -> None:
        """Temporary files of a killed run (never a finished output: those are renamed into place when complete).

        Only files the batch itself writes are touched: :func:`~bundle.utils.io.remove_leftovers` (names of
        :func:`~bundle.utils.io.atomic_path`'s form whose writer no longer runs) in the output folders of the
        series being processed (``output_dir/<study>/<series>/``), never in a folder that holds the input or lies
        inside it (the input may sit inside the output folder).
        """
        out = self.output_dir.resolve()
        for info in series:
            folder = out / info.key
            overlaps = folder == input_dir or input_dir in folder.parents or folder in input_dir.parents
            if folder.is_dir() and not overlaps:  # remove_leftovers walks sub-folders: never into the input
                remove_leftovers(folder)

    def run(
        self, input_dir: str | os.PathLike, modality: str | None = "MR", series_description: str | None = None
    ) -> dict[str, Any]:
        """Processes every selected series under ``input_dir``.

        Args:
            input_dir: the folder of DICOM studies (only read).
            modality: keep series of this Modality (``None``: any image modality).
            series_description: a regular expression SeriesDescription must match (``None``: any).

        Returns:
            ``{"done", "failed", "skipped", "already_done", "seconds", "series_per_minute", "failures"}``;
            ``failures`` lists ``(series, reason)``.

        Raises:
            ValueError: the output folder is, or is inside, the input folder.
        """
        input_dir = Path(input_dir).resolve()
        out = self.output_dir.resolve()
        if out == input_dir or input_dir in out.parents:
            raise ValueError(f"output folder {out} is inside the input folder {input_dir}; the input is never written")
        series, skipped = discover_series(input_dir, modality=modality, description=series_description)
        self._remove_leftovers(series, input_dir)
        manifest = Manifest(self.output_dir / "manifest.jsonl")
        clashes = _shared_folders(series)
        logged_skips = {(r.get("series"), r.get("reason")) for r in manifest.rows if r.get("status") == "skipped"}
        for item in skipped:
            logger.info("skipped %s: %s", item.what, item.reason)
            if (item.what, item.reason) not in logged_skips:
                manifest.append({"series": item.what, "status": "skipped", "reason": item.reason})
        todo = [s for s in series if not manifest.is_done(s.key, self.version)]
        already = len(series) - len(todo)
        if already:
            logger.info("%d series already done with model %s (manifest); not repeated", already, self.version)
        logger.info("%d series to segment with model %s, %d reader thread(s)", len(todo), self.version, self.workers)

        summary: dict[str, Any] = {
            "done": 0,
            "failed": 0,
            "skipped": len(skipped),
            "already_done": already,
            "failures": [],
        }
        start = time.perf_counter()
        bar = _progress_bar(len(todo), self.progress)
        pool = ThreadPoolExecutor(max_workers=self.workers) if self.workers > 0 else None
        pending: deque[tuple[SeriesInfo, Future | None]] = deque()
        queue = iter(todo)

        def submit_next() -> None:
            info = next(queue, None)
            if info is not None:
                pending.append((info, pool.submit(self._load, info) if pool is not None else None))

        try:
            for _ in range(max(self.workers, 1)):
                submit_next()
            while pending:
                info, future = pending.popleft()
                submit_next()  # the next read runs while this series is segmented
                row: dict[str, Any] = {
                    "series": info.key,
                    "study_uid": info.study_uid,
                    "series_uid": info.series_uid,
                    "description": info.description,
                    "files": len(info.files),
                    "model_version": self.version,
                }
                try:
                    if info.key in clashes:
                        raise ValueError(
                            f"its output folder {info.key} would be shared with series {clashes[info.key]}; "
                            "neither is written"
                        )
                    data, read_s = self._load(info) if future is None else future.result()
                    data, infer_s, write_s = self._segment(data)
                    row.update(
                        status="done",
                        outputs=list(data.get("outputs", [])),
                        seconds={"read": round(read_s, 3), "infer": round(infer_s, 3), "write": round(write_s, 3)},
                    )
                    summary["done"] += 1
                except Exception as e:  # noqa: BLE001 - one series failing never stops the batch
                    reason = failure_reason(e)
                    logger.error("series %s (%s) failed: %s", info.series_uid, info.files[0].parent, reason)
                    row.update(status="failed", reason=reason)
                    summary["failed"] += 1
                    summary["failures"].append((info.key, reason))
                manifest.append(row)
                bar.update(1)
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        seconds = time.perf_counter() - start
        summary["seconds"] = round(seconds, 2)
        summary["series_per_minute"] = round(60.0 * summary["done"] / seconds, 2) if summary["done"] else 0.0
        logger.info(
            "%d done, %d failed, %d skipped, %d already done; %.1f s, %.2f series/minute; manifest %s",
            summary["done"],
            summary["failed"],
            summary["skipped"],
            already,
            seconds,
            summary["series_per_minute"],
            manifest.path,
        )
        return summary


def _shared_folders(series: list[SeriesInfo]) -> dict[str, str]:
    """``{key: the other series' UIDs}`` for series whose output folders would coincide (never for valid UIDs)."""
    by_key: dict[str, list[SeriesInfo]] = {}
    for info in series:
        by_key.setdefault(info.key, []).append(info)
    return {
        key: ", ".join(f"{i.study_uid}/{i.series_uid}" for i in group)
        for key, group in by_key.items()
        if len(group) > 1
    }


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="series", file=sys.stderr, desc="DICOM series", disable=not enabled)


class BatchFailures(RuntimeError):
    """Raised after a batch in which some series failed (the others were processed)."""


def run_batch(
    runner: DicomBatch, input_dir: str, modality: str | None = "MR", series_description: str | None = None
) -> dict[str, Any]:
    """The bundle's ``run`` entry: runs the batch, then raises :class:`BatchFailures` if any series failed, so
    ``python -m monai.bundle run`` exits with a non-zero status.

    Args:
        runner: the batch.
        input_dir: the folder of DICOM studies.
        modality: keep series of this Modality (empty or ``None``: any image modality).
        series_description: a regular expression SeriesDescription must match (empty or ``None``: any).

    Returns:
        The summary of :meth:`DicomBatch.run`.

    Raises:
        BatchFailures: some series failed (listed).
    """
    summary = runner.run(input_dir, modality or None, series_description or None)
    if summary["failed"]:
        listed = "\n".join(f"  {key}: {reason}" for key, reason in summary["failures"])
        raise BatchFailures(
            f"{summary['failed']} series failed (see {runner.output_dir / 'manifest.jsonl'}):\n{listed}"
        )
    return summary
