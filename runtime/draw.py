"""Annotating frames in place: boxes, class names, scores, track ids and an FPS overlay.

:func:`draw_boxes` is the one box drawer: det-run's output video/images, det-train's
``val_predictions.jpg`` and its ``--show-aug`` samples all use it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from det_toolkit.runtime.predictor import Detections

if TYPE_CHECKING:  # a type only: drawing needs no tracker (det-train draws too)
    from det_toolkit.runtime.tracking import Track

#: 20 well-separated colours (BGR); a track id or class id always maps to the same one.
PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    (int(h[4:6], 16), int(h[2:4], 16), int(h[0:2], 16)) for h in (
        "FF3838", "FF9D97", "FF701F", "FFB21D", "CFD231", "48F90A", "92CC17", "3DDB86", "1A9334",
        "00D4BB", "2C99A8", "00C2FF", "344593", "6473FF", "0018EC", "8438FF", "520085", "CB38FF",
        "FF95C8", "FF37C7"))
FONT = cv2.FONT_HERSHEY_SIMPLEX


def colour(key: int) -> tuple[int, int, int]:
    """Stable BGR colour for a track id or class id."""
    return PALETTE[key % len(PALETTE)]


def line_width(frame: np.ndarray) -> int:
    """Box line width in pixels for a frame of this size (about 0.15% of ``H + W``, at least 1)."""
    return max(1, round((frame.shape[0] + frame.shape[1]) * 0.0015))


def draw_boxes(frame: np.ndarray, boxes: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
               scores: np.ndarray | None = None, track_ids: Sequence[int | None] | None = None,
               color: tuple[int, int, int] | None = None, captions: bool = True) -> None:
    """Draw boxes with ``[#id ]name[ score]`` labels on ``frame`` (uint8 ``[H, W, 3]`` BGR, in place).

    Args:
        frame: the image the boxes refer to.
        boxes: float ``[K, 4]`` ``xyxy`` pixels of ``frame`` (truncated to integers).
        labels: int ``[K]`` 0-based indices into ``class_names``.
        class_names: class names.
        scores: float ``[K]`` confidences shown with 2 decimals; ``None`` shows names only (e.g.
            ground truth).
        track_ids: per box, its track id or ``None``; tracked boxes are coloured by id.
        color: one BGR colour for every box; default: by track id, else by class (:func:`colour`).
        captions: draw the ``[#id ]name[ score]`` captions; ``False`` draws rectangles only.
    """
    lw = line_width(frame)
    scale = lw / 3
    boxes = np.asarray(boxes).reshape(-1, 4)
    for i, (box, label) in enumerate(zip(boxes.tolist(), np.asarray(labels).tolist())):
        tid = track_ids[i] if track_ids is not None else None
        c = color if color is not None else colour(label if tid is None else tid)
        x1, y1, x2, y2 = (int(v) for v in box)
        cv2.rectangle(frame, (x1, y1), (x2, y2), c, lw, cv2.LINE_AA)
        if not captions:
            continue
        score = "" if scores is None else f" {float(scores[i]):.2f}"
        caption = f"{'' if tid is None else f'#{tid} '}{class_names[label]}{score}"
        (tw, th), _ = cv2.getTextSize(caption, FONT, scale, max(1, lw - 1))
        ty = y1 - 2 if y1 - th - 4 >= 0 else y1 + th + 2  # above the box, or inside at the top
        cv2.rectangle(frame, (x1, ty - th - 2), (x1 + tw, ty + 2), c, -1)
        cv2.putText(frame, caption, (x1, ty), FONT, scale, (255, 255, 255), max(1, lw - 1), cv2.LINE_AA)


def draw_detections(frame: np.ndarray, dets: Detections, class_names: Sequence[str],
                    track_ids: Sequence[int | None] | None = None) -> None:
    """:func:`draw_boxes` of one frame's :class:`Detections` (boxes in ``frame``'s pixels, labels
    indexing ``class_names``); tracked boxes (``track_ids``) coloured by id, the others by class."""
    draw_boxes(frame, dets.boxes, dets.labels, class_names, dets.scores, track_ids)


def draw_fps(frame: np.ndarray, fps: float) -> None:
    """Write ``"<fps> FPS"`` (frames/s) in the top-left corner of ``frame`` (in place)."""
    lw = line_width(frame)
    org = (8, 8 + 12 * lw)
    text = f"{fps:.1f} FPS"
    cv2.putText(frame, text, org, FONT, lw / 2, (0, 0, 0), lw + 2, cv2.LINE_AA)
    cv2.putText(frame, text, org, FONT, lw / 2, (255, 255, 255), lw, cv2.LINE_AA)


class Trails:
    """Recent bottom-centre points of each track, drawn as a fading polyline behind its box.

    Args:
        length: points kept per track (frames).
        forget_after: frames without a match after which a track's trail is dropped.
    """

    def __init__(self, length: int = 30, forget_after: int = 30) -> None:
        self.length, self.forget_after = length, forget_after
        self._points: dict[int, deque[tuple[int, int]]] = {}
        self._last_seen: dict[int, int] = {}
        self._frame = 0

    def update(self, tracks: Sequence[Track]) -> None:
        """Append this frame's track positions (``xyxy`` frame px boxes); call once per frame."""
        self._frame += 1
        for t in tracks:
            x1, _, x2, y2 = t.box.tolist()
            self._points.setdefault(t.track_id, deque(maxlen=self.length)).append((int((x1 + x2) / 2), int(y2)))
            self._last_seen[t.track_id] = self._frame
        stale = [k for k, f in self._last_seen.items() if self._frame - f > self.forget_after]
        for k in stale:
            del self._points[k], self._last_seen[k]

    def draw(self, frame: np.ndarray) -> None:
        """Draw every live trail on ``frame`` (uint8 ``[H, W, 3]`` BGR, in place), in its track's colour."""
        lw = line_width(frame)
        for tid, pts in self._points.items():
            if len(pts) > 1:
                cv2.polylines(frame, [np.array(pts, np.int32)], False, colour(tid), lw, cv2.LINE_AA)
