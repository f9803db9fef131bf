"""benchmarks/people_demo.py: the clip, track figures and GIF of `make people-demo` on the real video."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from det_toolkit.benchmarks.people_demo import busiest_window, cli, cut_clip, make_gif, track_stats
from tests.conftest import VTEST


def _jsonl(path: Path) -> Path:
    """6 frames: track 1 in frames 0-5, track 2 in frames 3-5, one untracked box in frame 1."""
    rows = []
    for i in range(6):
        dets = [{"box": [0, 0, 10, 10], "track_id": 1}]
        if i >= 3:
            dets.append({"box": [20, 20, 30, 30], "track_id": 2})
        if i == 1:
            dets.append({"box": [5, 5, 9, 9]})
        rows.append({"frame": i, "detections": dets})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_track_stats_and_busiest_window(tmp_path: Path) -> None:
    jsonl = _jsonl(tmp_path / "predictions.jsonl")
    stats = track_stats(jsonl, fps=4.0)
    assert stats == {"frames": 6, "detections_per_frame": 1.67, "tracked_boxes_per_frame": 1.5,
                     "track_ids": 2, "tracks_1s": 1, "median_track_frames": 4.5}
    assert busiest_window(jsonl, 3) == 3 and busiest_window(jsonl, 10) == 0
    out = CliRunner().invoke(cli, ["tracks", str(jsonl), "--fps", "4"])
    assert out.exit_code == 0 and json.loads(out.output)["track_ids"] == 2


def test_clip_and_gif_from_the_street_video(tmp_path: Path) -> None:
    if not Path(VTEST).is_file():
        pytest.skip(f"{VTEST} not found")
    clip = tmp_path / "tail.avi"
    assert cut_clip(Path(VTEST), clip, start=788) == 7  # frames 788-794 of 795
    cap = cv2.VideoCapture(str(clip))
    frames = []
    while (ok := cap.read())[0]:
        frames.append(ok[1])
    assert len(frames) == 7 and frames[0].shape == (576, 768, 3)
    src = cv2.VideoCapture(str(VTEST))
    src.set(cv2.CAP_PROP_POS_FRAMES, 788)
    first = src.read()[1]
    assert np.abs(frames[0].astype(int) - first.astype(int)).mean() < 3  # MJPEG q95 copy of frame 788
    with pytest.raises(OSError, match="no frame"):
        cut_clip(Path(VTEST), tmp_path / "none.avi", start=900)

    gif = tmp_path / "tail.gif"
    n, size = make_gif(clip, gif, first=2, frames=4, width=200, step=1)
    with Image.open(gif) as im:
        assert (n, im.n_frames, im.size) == (4, 4, (200, 150)) and size == gif.stat().st_size
    with pytest.raises(FileNotFoundError, match="no frame"):
        make_gif(clip, tmp_path / "x.gif", first=50, frames=2)
