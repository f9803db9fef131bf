"""Helpers of the people demos (``make demo``: Penn-Fudan's human-labelled pedestrians tracked on
``vtest.avi``; ``make people-demo-hog``: HOG-labelled frames): cut a clip, summarise det-run's tracks,
turn det-run's annotated video into a short GIF, and measure the domain gap on the street video.

    python -m det_toolkit.benchmarks.people_demo clip VIDEO OUT.avi --start 500
    python -m det_toolkit.benchmarks.people_demo tracks RUN_DIR/predictions.jsonl
    python -m det_toolkit.benchmarks.people_demo gif RUN_DIR/clip.mp4 RUN_DIR/predictions.jsonl OUT.gif
    python -m det_toolkit.benchmarks.people_demo report VIDEO RUN_DIR/predictions.jsonl --every 5

NumPy, OpenCV and Pillow only (no torch).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np
from PIL import Image

from det_toolkit.benchmarks.common import match_count
from det_toolkit.runtime.files import atomic_write
from det_toolkit.runtime.teachers import HogTeacher


def cut_clip(video: Path, out: Path, start: int, end: int | None = None, quality: int = 95) -> int:
    """Copy frames ``[start, end)`` of ``video`` into ``out`` (Motion-JPEG ``.avi`` at ``quality``,
    same fps and size). Returns the number of frames written.

    Raises:
        FileNotFoundError: ``video`` cannot be opened.
        OSError: ``out`` cannot be written, or no frame was in the range.
    """
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {video}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    size = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    out.parent.mkdir(parents=True, exist_ok=True)
    vw = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    if not vw.isOpened():
        raise OSError(f"cannot open {out} for writing (MJPG)")
    vw.set(cv2.VIDEOWRITER_PROP_QUALITY, quality)
    i = n = 0
    while end is None or i < end:
        ok, frame = cap.read()
        if not ok:
            break
        if i >= start:
            vw.write(frame)
            n += 1
        i += 1
    cap.release()
    vw.release()
    if not n:
        raise OSError(f"no frame of {video} in [{start}, {end})")
    return n


def read_predictions(jsonl: Path) -> list[dict[str, Any]]:
    """The rows of det-run's ``predictions.jsonl`` (``{"frame": i, "detections": [{"box": [x1, y1, x2,
    y2], "score", "class_id", "class_name", "track_id"?}]}``, boxes ``xyxy`` frame pixels).

    Raises:
        ValueError: a line that is not such a JSON object (``file:line: problem``).
    """
    rows = []
    for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and isinstance(row.get("frame"), int) and isinstance(row.get("detections"), list)
        except json.JSONDecodeError as e:
            raise ValueError(f"{jsonl}:{n}: not JSON ({e.msg})") from e
        if not ok:
            raise ValueError(f"{jsonl}:{n}: not a det-run prediction row (needs 'frame' and 'detections')")
        rows.append(row)
    return rows


def track_stats(jsonl: Path, fps: float = 10.0) -> dict[str, float]:
    """Tracking figures from det-run's ``predictions.jsonl``: frames, detections per frame, distinct
    track ids, tracks lasting at least 1 s (``fps`` frames), median track length in frames.

    Raises:
        ValueError: a malformed line (:func:`read_predictions`).
    """
    rows = read_predictions(jsonl)
    lengths = Counter(d["track_id"] for r in rows for d in r["detections"] if "track_id" in d)
    dets = [len(r["detections"]) for r in rows]
    return {"frames": len(rows), "detections_per_frame": round(float(np.mean(dets)), 2) if dets else 0.0,
            "tracked_boxes_per_frame": round(sum(lengths.values()) / max(len(rows), 1), 2),
            "track_ids": len(lengths), "tracks_1s": sum(v >= fps for v in lengths.values()),
            "median_track_frames": float(np.median(list(lengths.values()))) if lengths else 0.0}


def busiest_window(jsonl: Path, n: int) -> int:
    """First frame of the ``n``-frame window with the most tracked boxes in ``predictions.jsonl``."""
    rows = read_predictions(jsonl)
    per = np.array([sum("track_id" in d for d in r["detections"]) for r in rows], float)
    if len(per) <= n:
        return 0
    return int(np.argmax(np.convolve(per, np.ones(n), "valid")))


def make_gif(video: Path, out: Path, first: int, frames: int, width: int = 400, step: int = 1) -> tuple[int, int]:
    """Write frames ``first, first + step, ...`` (``frames`` of them) of ``video`` as a looping GIF
    ``width`` pixels wide, playing at the video's speed. Returns ``(frames written, bytes)``.

    Raises:
        FileNotFoundError: ``video`` cannot be opened or has no frame at ``first``.
    """
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {video}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    images, i = [], 0
    while len(images) < frames:
        ok, f = cap.read()
        if not ok:
            break
        if i >= first and (i - first) % step == 0:
            h, w = f.shape[:2]
            f = cv2.resize(f, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)
            images.append(Image.fromarray(f[:, :, ::-1]))
        i += 1
    cap.release()
    if not images:
        raise FileNotFoundError(f"{video} has no frame at {first}")
    palette = images[len(images) // 2].quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    frames_p = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    out.parent.mkdir(parents=True, exist_ok=True)
    frames_p[0].save(out, save_all=True, append_images=frames_p[1:], duration=round(1000 * step / fps),
                     loop=0, optimize=True)
    return len(frames_p), out.stat().st_size


#: HOG's view of the street video for the recall proxy: OpenCV's people detector on the frame enlarged
#: 1.5x (its 64x128 window misses people under ~100 px tall; many of vtest's walkers are smaller), as
#: ``make people-demo-hog`` labels frames.
HOG_UPSCALE = 1.5


def video_info(video: Path) -> tuple[float, int]:
    """``(fps, frame count)`` of ``video`` as OpenCV reports them (fps 10 when unknown).

    Raises:
        FileNotFoundError: ``video`` cannot be opened.
    """
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {video}")
    fps, n = cap.get(cv2.CAP_PROP_FPS) or 10.0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return float(fps), n


def hog_agreement(video: Path, rows: list[dict[str, Any]], every: int = 1, upscale: float = HOG_UPSCALE,
                  iou: float = 0.5, teacher: Any = None) -> dict[str, Any]:
    """A recall proxy without ground truth: OpenCV's HOG people detector against the model's boxes.

    On every ``every``-th frame of ``video`` (0-based index divisible by ``every``) that has a row in
    ``rows`` (det-run's ``predictions.jsonl``, :func:`read_predictions`), the HOG boxes
    (:class:`det_toolkit.runtime.teachers.HogTeacher` at ``upscale``; or ``teacher``, any callable
    frame -> ``Detections``) and all the model's boxes of that row are matched one to one (greedy by
    IoU, :func:`det_toolkit.benchmarks.common.match_count`) at IoU >= ``iou``.

    Returns:
        ``frames`` compared, ``hog_boxes``, ``model_boxes``, ``matched``, ``hog_found_by_model``
        (matched / HOG boxes: the share of HOG's walkers the model also finds), ``model_found_by_hog``
        (matched / model boxes), and ``per_frame`` ``[frame, hog, model, matched]`` rows. HOG's own
        misses and false alarms count too: a proxy, not a recall.

    Raises:
        FileNotFoundError: ``video`` cannot be opened.
    """
    teacher = teacher or HogTeacher(upscale=upscale)
    by_frame = {int(r["frame"]): np.asarray([d["box"] for d in r["detections"]], np.float32).reshape(-1, 4)
                for r in rows}
    wanted = {f for f in by_frame if f % every == 0}
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {video}")
    per_frame, i, last = [], 0, max(wanted, default=-1)
    while i <= last:
        if i in wanted:
            ok, frame = cap.read()
            if not ok:
                break
            hog = teacher(frame).boxes
            model = by_frame[i]
            matched, _ = match_count(hog, model, np.zeros(len(hog), np.int64), np.zeros(len(model), np.int64), iou)
            per_frame.append([i, len(hog), len(model), matched])
        elif not cap.grab():
            break
        i += 1
    cap.release()
    h, m, k = (int(sum(r[j] for r in per_frame)) for j in (1, 2, 3))
    return {"frames": len(per_frame), "every": every, "upscale": upscale, "iou": iou,
            "teacher": getattr(teacher, "name", type(teacher).__name__), "hog_boxes": h, "model_boxes": m,
            "matched": k, "hog_found_by_model": round(k / h, 4) if h else None,
            "model_found_by_hog": round(k / m, 4) if m else None, "per_frame": per_frame}


def static_tracks(rows: list[dict[str, Any]], fps: float, min_s: float = 5.0, max_shift: float = 0.25
                  ) -> list[dict[str, Any]]:
    """Tracks lasting at least ``min_s`` seconds whose box centre never leaves a circle of
    ``max_shift`` times the track's median box height around its median centre: something that does
    not move (a person standing, or a recurring false positive on a static object: look at the box).

    Returns:
        One dict per such track, longest first: ``track_id``, ``frames`` (count), ``first``/``last``
        frame, ``box`` (median ``xyxy`` frame pixels) and ``max_shift_px``.
    """
    boxes: dict[int, list[tuple[int, list[float]]]] = {}
    for r in rows:
        for d in r["detections"]:
            if "track_id" in d:
                boxes.setdefault(int(d["track_id"]), []).append((int(r["frame"]), d["box"]))
    out = []
    for tid, seen in boxes.items():
        if len(seen) < min_s * fps:
            continue
        b = np.asarray([x for _, x in seen], np.float64)
        centres = (b[:, :2] + b[:, 2:]) / 2
        shift = float(np.linalg.norm(centres - np.median(centres, 0), axis=1).max())
        if shift <= max_shift * float(np.median(b[:, 3] - b[:, 1])):
            out.append({"track_id": tid, "frames": len(seen), "first": seen[0][0], "last": seen[-1][0],
                        "box": [round(float(v), 1) for v in np.median(b, 0)], "max_shift_px": round(shift, 1)})
    return sorted(out, key=lambda t: -t["frames"])


def people_report(video: Path, jsonl: Path, every: int = 5, upscale: float = HOG_UPSCALE, iou: float = 0.5,
                  teacher: Any = None) -> dict[str, Any]:
    """The domain-gap figures of det-run ``--track`` on ``video``: :func:`track_stats` (with the
    video's fps; track lengths also in seconds), :func:`hog_agreement` on every ``every``-th frame and
    :func:`static_tracks`.

    Raises:
        FileNotFoundError: ``video`` cannot be opened.
        ValueError: a malformed ``jsonl`` line.
    """
    fps, n_video = video_info(video)
    rows = read_predictions(jsonl)
    stats = track_stats(jsonl, fps)
    return {"video": str(video), "predictions": str(jsonl), "fps": fps, "video_frames": n_video, **stats,
            "median_track_s": round(stats["median_track_frames"] / fps, 2),
            "hog": hog_agreement(video, rows, every, upscale, iou, teacher), "static_tracks": static_tracks(rows, fps)}


def report_lines(r: dict[str, Any]) -> list[str]:
    """:func:`people_report`'s figures as the lines ``report`` prints."""
    h = r["hog"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1%}"

    lines = [f"{r['video']}: {r['video_frames']} frames at {r['fps']:g} fps; {r['frames']} in {r['predictions']}",
             f"boxes per frame {r['detections_per_frame']:.2f} ({r['tracked_boxes_per_frame']:.2f} tracked); "
             f"{r['track_ids']} track ids, {r['tracks_1s']} lasting >= 1 s; median track {r['median_track_frames']:g} "
             f"frames ({r['median_track_s']:g} s)",
             f"HOG at {h['upscale']:g}x on {h['frames']} frames (every {h['every']}): {h['hog_boxes']} HOG walkers, "
             f"{pct(h['hog_found_by_model'])} also found by the model; {h['model_boxes']} model boxes, "
             f"{pct(h['model_found_by_hog'])} also found by HOG (IoU >= {h['iou']:g}, one to one)"]
    for t in r["static_tracks"]:
        lines.append(f"static track {t['track_id']}: frames {t['first']}-{t['last']} ({t['frames']}), box "
                     f"{t['box']}, centre moved <= {t['max_shift_px']:g} px")
    return lines


@click.group()
def cli() -> None:
    """Helpers of the people demos (`make demo`, `make people-demo-hog`)."""


@cli.command()
@click.argument("video", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--start", default=0, type=click.IntRange(0), help="First frame copied (0-based).")
@click.option("--end", default=None, type=click.IntRange(1), help="Stop before this frame.")
def clip(video: Path, out: Path, start: int, end: int | None) -> None:
    """Copy frames [start, end) of VIDEO into OUT (MJPG .avi)."""
    n = cut_clip(video, out, start, end)
    click.echo(f"{n} frames ({start}-{start + n - 1}) of {video} -> {out}")


@cli.command()
@click.argument("jsonl", type=click.Path(exists=True, path_type=Path))
@click.option("--fps", default=10.0, help="Video frame rate (for tracks lasting 1 s).")
def tracks(jsonl: Path, fps: float) -> None:
    """Print tracking figures of det-run's predictions.jsonl."""
    click.echo(json.dumps(track_stats(jsonl, fps)))


@cli.command()
@click.argument("video", type=click.Path(exists=True, path_type=Path))
@click.argument("jsonl", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--frames", default=40, type=click.IntRange(1), help="Frames in the GIF.")
@click.option("--step", default=1, type=click.IntRange(1), help="Take every N-th frame.")
@click.option("--width", default=400, type=click.IntRange(16), help="GIF width in pixels.")
def gif(video: Path, jsonl: Path, out: Path, frames: int, step: int, width: int) -> None:
    """GIF of det-run's annotated VIDEO over the window with the most tracked boxes (JSONL)."""
    first = busiest_window(jsonl, frames * step)
    n, size = make_gif(video, out, first, frames, width, step)
    click.echo(f"{n} frames from frame {first} -> {out} ({size / 2**20:.2f} MiB)")


@cli.command()
@click.argument("video", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("jsonl", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--every", default=5, type=click.IntRange(1), show_default=True,
              help="Compare with HOG on every N-th frame (HOG at 1.5x: ~0.3 s per 768x576 frame on this CPU).")
@click.option("--hog-upscale", default=HOG_UPSCALE, type=click.FloatRange(1, 4), show_default=True,
              help="HOG: factor the frame is enlarged by first.")
@click.option("--iou", default=0.5, type=click.FloatRange(0, 1, min_open=True), show_default=True,
              help="Minimum IoU of a model box and a HOG box that match.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              show_default="people_report.json beside JSONL", help="JSON file written.")
def report(video: Path, jsonl: Path, every: int, hog_upscale: float, iou: float, out: Path | None) -> None:
    """Domain-gap figures of `det-run VIDEO --track` (its JSONL): boxes per frame, track ids, tracks
    lasting >= 1 s, median track length, agreement with OpenCV's HOG people detector, static tracks."""
    try:
        r = people_report(video, jsonl, every, hog_upscale, iou)
    except (OSError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    for line in report_lines(r):
        click.echo(line)
    out = out or jsonl.parent / "people_report.json"
    atomic_write(out, (json.dumps(r, indent=2) + "\n").encode())
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    cli()
