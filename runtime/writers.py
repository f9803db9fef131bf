"""Result writers: annotated video/images, JSON lines and MOT-challenge track files.

Each writer is a context manager; ``close()`` flushes and releases the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import cv2
import numpy as np

from det_toolkit.runtime.draw import Trails, draw_detections, draw_fps
from det_toolkit.runtime.predictor import Detections
from det_toolkit.runtime.source_types import SourceInfo
from det_toolkit.runtime.tracking import Track

W = TypeVar("W", bound="Writer")


class Writer:
    """Base of the writers: context-manager plumbing around :meth:`close`."""

    def close(self) -> None:
        """Flush and release the output."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class VideoWriter(Writer):
    """MPEG-4 Part 2 (``mp4v``) video through ``cv2.VideoWriter``.

    Args:
        path: output file (``.mp4``).
        fps: frame rate in frames/s (use the input's).
        size: ``(width, height)`` in pixels; every frame written must have it.

    Raises:
        OSError: OpenCV cannot open the file for writing.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        self._vw = cv2.VideoWriter(str(self.path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
        if not self._vw.isOpened():
            raise OSError(f"cannot open {self.path} for video writing "
                          f"(mp4v, {size[0]}x{size[1]} @ {fps} fps)")

    def write(self, frame_bgr: np.ndarray) -> None:
        """Append one uint8 ``[H, W, 3]`` BGR frame."""
        self._vw.write(frame_bgr)

    def close(self) -> None:
        self._vw.release()


class ImageWriter(Writer):
    """Annotated images saved under ``folder`` with their source file names.

    Raises (``write``):
        OSError: OpenCV cannot encode or write the image.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def write(self, name: str, frame_bgr: np.ndarray) -> None:
        """Save uint8 ``[H, W, 3]`` BGR ``frame_bgr`` as ``folder/name``."""
        path = self.folder / name
        if not cv2.imwrite(str(path), frame_bgr):
            raise OSError(f"cannot write image {path}")


class JsonlWriter(Writer):
    """One JSON object per frame::

        {"frame": i, "source": name, "detections": [{"box": [x1, y1, x2, y2], "score": s,
         "class_id": c, "class_name": n, "track_id": t}]}

    ``box`` is ``xyxy`` in frame pixels; ``track_id`` only appears on detections that belong to a
    confirmed track in that frame.
    """

    def __init__(self, path: str | Path, class_names: Sequence[str]) -> None:
        self.path = Path(path)
        self.class_names = list(class_names)
        # Line-buffered: each frame's line reaches the OS as it is written, so a killed run
        # (even SIGKILL) leaves every finished frame's line on disk.
        self._f = self.path.open("w", encoding="utf-8", buffering=1)

    def write(self, index: int, name: str, dets: Detections,
              track_ids: Sequence[int | None] | None = None,
              track_classes: Sequence[int | None] | None = None) -> None:
        """Write frame ``index`` (0-based) of source ``name``; ``track_ids`` as in
        :func:`det_toolkit.runtime.draw.draw_detections`, ``track_classes`` the tracks' voted class ids
        (written as ``track_class_id``)."""
        out = []
        for i, (box, score, label) in enumerate(zip(dets.boxes.tolist(), dets.scores.tolist(),
                                                    dets.labels.tolist())):
            d = {"box": [round(v, 2) for v in box], "score": round(score, 4), "class_id": label,
                 "class_name": self.class_names[label]}
            if track_ids is not None and track_ids[i] is not None:
                d["track_id"] = track_ids[i]
                if track_classes is not None:
                    d["track_class_id"] = track_classes[i]
            out.append(d)
        self._f.write(json.dumps({"frame": index, "source": name, "detections": out}) + "\n")

    def close(self) -> None:
        self._f.close()


class MotWriter(Writer):
    """MOT-challenge results: ``frame,id,bb_left,bb_top,bb_width,bb_height,conf,-1,-1,-1`` per
    track, ``frame`` 1-based, boxes in frame pixels."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._f = self.path.open("w", encoding="utf-8", buffering=1)  # line-buffered, as JsonlWriter

    def write(self, index: int, tracks: Sequence[Track]) -> None:
        """Write the tracks of frame ``index`` (0-based; written as ``index + 1``)."""
        for t in tracks:
            x1, y1, x2, y2 = t.box.tolist()
            self._f.write(f"{index + 1},{t.track_id},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},"
                          f"{t.score:.4f},-1,-1,-1\n")

    def close(self) -> None:
        self._f.close()


class YoloTxtWriter(Writer):
    """YOLO-format label files, one per image/frame, under ``folder``: a line
    ``class cx cy w h`` per detection, centre and size normalised by the frame size to ``[0, 1]``.

    Images get ``<image stem>.txt``; video frames ``<video stem>_<frame>.txt`` (0-based frame).
    """

    def __init__(self, folder: str | Path, is_video: bool, stem: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.is_video, self.stem = is_video, stem

    def write(self, index: int, name: str, frame_hw: tuple[int, int], dets: Detections) -> None:
        """Write the detections of frame ``index`` / image ``name`` (``frame_hw`` = ``(H, W)`` px)."""
        h, w = frame_hw
        b = dets.boxes.astype(np.float64)
        cx, cy = (b[:, 0] + b[:, 2]) / (2 * w), (b[:, 1] + b[:, 3]) / (2 * h)
        bw, bh = (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h
        lines = "".join(f"{c} {x:.6f} {y:.6f} {ww:.6f} {hh:.6f}\n" for c, x, y, ww, hh in
                        zip(dets.labels.tolist(), cx.tolist(), cy.tolist(), bw.tolist(), bh.tolist()))
        stem = f"{self.stem}_{index}" if self.is_video else Path(name).stem
        (self.folder / f"{stem}.txt").write_text(lines, encoding="utf-8")


class CocoJsonWriter(Writer):
    """COCO detection results (``[{"image_id", "file_name", "category_id", "bbox": [x, y, w, h],
    "score"}]``, ``bbox`` in frame pixels, ``image_id`` the 0-based frame/image index,
    ``category_id`` 0-based), written as one JSON array on :meth:`close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._rows: list[dict] = []

    def write(self, index: int, name: str, dets: Detections) -> None:
        """Record the detections of frame/image ``index`` from source ``name``."""
        for (x1, y1, x2, y2), s, c in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist()):
            self._rows.append({"image_id": index, "file_name": name, "category_id": c,
                               "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                               "score": round(s, 4)})

    def close(self) -> None:
        self.path.write_text(json.dumps(self._rows) + "\n", encoding="utf-8")


class RunOutputs(Writer):
    """Everything one ``det-run`` writes into ``run_dir``.

    ``predictions.jsonl`` always; ``<stem>_mot.txt`` when tracking; with ``save``, the annotated
    video ``<stem>.mp4`` (input fps and size) for a video source, else annotated images named as
    their sources. Tracked boxes are drawn with their track's id, its majority-vote class and a
    trail of its recent positions.

    Args:
        run_dir: existing output folder.
        info: the source's :class:`SourceInfo`.
        class_names: the model's class names.
        track: write the MOT file.
        save: write annotated frames.
        save_txt: write YOLO-format label files under ``labels/`` (:class:`YoloTxtWriter`).
        save_json: write COCO detection results ``predictions.json`` (:class:`CocoJsonWriter`).

    Raises:
        OSError: an output file cannot be opened.
    """

    def __init__(self, run_dir: Path, info: SourceInfo, class_names: Sequence[str], track: bool,
                 save: bool, save_txt: bool = False, save_json: bool = False) -> None:
        self.class_names = list(class_names)
        with ExitStack() as stack:
            self.jsonl = stack.enter_context(JsonlWriter(run_dir / "predictions.jsonl", class_names))
            self.mot = (stack.enter_context(MotWriter(run_dir / f"{info.stem}_mot.txt"))
                        if track else None)
            self.video = self.images = None
            self.trails = Trails() if track else None
            self.txt = YoloTxtWriter(run_dir / "labels", info.is_video, info.stem) if save_txt else None
            self.coco = stack.enter_context(CocoJsonWriter(run_dir / "predictions.json")) if save_json else None
            if save and info.is_video:
                self.video = stack.enter_context(VideoWriter(
                    run_dir / f"{info.stem}.mp4", info.fps or 30.0, (info.width, info.height)))
            elif save:
                self.images = ImageWriter(run_dir)
            self._stack = stack.pop_all()

    def write(self, index: int, name: str, frame_bgr: np.ndarray, dets: Detections,
              tracks: Sequence[Track] | None, fps: float) -> None:
        """Record frame ``index`` (0-based) of source ``name``.

        Args:
            frame_bgr: uint8 ``[H, W, 3]`` frame; annotated in place when saving.
            dets: its detections.
            tracks: its confirmed tracks (``None`` when not tracking).
            fps: frames/s shown in the overlay.
        """
        track_ids: list[int | None] | None = None
        track_classes: list[int | None] | None = None
        if tracks is not None:
            track_ids, track_classes = [None] * len(dets), [None] * len(dets)
            for t in tracks:
                track_ids[t.det_index], track_classes[t.det_index] = t.track_id, t.class_id
            self.mot.write(index, tracks)
            self.trails.update(tracks)
        self.jsonl.write(index, name, dets, track_ids, track_classes)
        if self.txt is not None:
            self.txt.write(index, name, frame_bgr.shape[:2], dets)
        if self.coco is not None:
            self.coco.write(index, name, dets)
        if self.video is not None or self.images is not None:
            if tracks:  # a tracked box shows its track's voted class
                labels = dets.labels.copy()
                labels[[t.det_index for t in tracks]] = [t.class_id for t in tracks]
                dets = Detections(dets.boxes, dets.scores, labels)
            if self.trails is not None:
                self.trails.draw(frame_bgr)
            draw_detections(frame_bgr, dets, self.class_names, track_ids)
            draw_fps(frame_bgr, fps)
            if self.video is not None:
                self.video.write(frame_bgr)
            else:
                self.images.write(name, frame_bgr)

    def close(self) -> None:
        self._stack.close()
