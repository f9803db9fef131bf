"""Helpers of ``make people-demo`` (HOG-labelled pedestrians on ``vtest.avi``): cut the unseen part of a
video into a clip, summarise det-run's tracks, and turn det-run's annotated video into a short GIF.

    python -m det_toolkit.benchmarks.people_demo clip VIDEO OUT.avi --start 500
    python -m det_toolkit.benchmarks.people_demo tracks RUN_DIR/predictions.jsonl
    python -m det_toolkit.benchmarks.people_demo gif RUN_DIR/clip.mp4 RUN_DIR/predictions.jsonl OUT.gif

NumPy, OpenCV and Pillow only (no torch).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click
import cv2
import numpy as np
from PIL import Image


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


def track_stats(jsonl: Path, fps: float = 10.0) -> dict[str, float]:
    """Tracking figures from det-run's ``predictions.jsonl``: frames, detections per frame, distinct
    track ids, tracks lasting at least 1 s (``fps`` frames), median track length in frames."""
    rows = [json.loads(ln) for ln in jsonl.read_text(encoding="utf-8").splitlines() if ln.strip()]
    lengths = Counter(d["track_id"] for r in rows for d in r["detections"] if "track_id" in d)
    dets = [len(r["detections"]) for r in rows]
    return {"frames": len(rows), "detections_per_frame": round(float(np.mean(dets)), 2) if dets else 0.0,
            "tracked_boxes_per_frame": round(sum(lengths.values()) / max(len(rows), 1), 2),
            "track_ids": len(lengths), "tracks_1s": sum(v >= fps for v in lengths.values()),
            "median_track_frames": float(np.median(list(lengths.values()))) if lengths else 0.0}


def busiest_window(jsonl: Path, n: int) -> int:
    """First frame of the ``n``-frame window with the most tracked boxes in ``predictions.jsonl``."""
    rows = [json.loads(ln) for ln in jsonl.read_text(encoding="utf-8").splitlines() if ln.strip()]
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


@click.group()
def cli() -> None:
    """Helpers of `make people-demo`."""


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


if __name__ == "__main__":
    cli()
