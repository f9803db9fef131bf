"""benchmarks/people_demo.py: clip, track figures, GIF and domain-gap report of the people demos on the real video;
the Makefile's demo targets."""

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


def _frames(video: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    frames = []
    while (ok := cap.read())[0]:
        frames.append(ok[1])
    return frames


def test_report_measures_agreement_with_hog_on_the_street_video(tmp_path: Path) -> None:
    """Predictions made of HOG's own boxes (frame 0), boxes far from any walker (frame 2) and one of
    HOG's boxes (frame 4): the report counts exactly those matches, every 2nd frame."""
    if not Path(VTEST).is_file():
        pytest.skip(f"{VTEST} not found")
    from det_toolkit.runtime.teachers import HogTeacher

    clip = tmp_path / "head.avi"
    assert cut_clip(Path(VTEST), clip, start=0, end=6) == 6
    hog = [HogTeacher(upscale=1.5)(f).boxes for f in _frames(clip)]
    assert all(len(hog[i]) >= 2 for i in (0, 2, 4))  # the street has walkers HOG finds
    nowhere = [[0.0, 0.0, 8.0, 8.0], [760.0, 0.0, 768.0, 8.0]]  # top corners: sky and walls
    boxes = {0: hog[0].tolist(), 1: nowhere, 2: nowhere, 3: [], 4: hog[4][:1].tolist(), 5: hog[5].tolist()}
    rows = [{"frame": i, "source": "head.avi", "detections": [{"box": b, "score": 0.9, "class_id": 0,
                                                              "class_name": "person", "track_id": k + 1}
                                                             for k, b in enumerate(boxes[i])]} for i in range(6)]
    jsonl = tmp_path / "predictions.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = CliRunner().invoke(cli, ["report", str(clip), str(jsonl), "--every", "2"])
    assert out.exit_code == 0, out.output
    rep = json.loads((tmp_path / "people_report.json").read_text())
    h = rep["hog"]
    n_hog = len(hog[0]) + len(hog[2]) + len(hog[4])
    assert (h["frames"], h["hog_boxes"], h["model_boxes"], h["matched"]) == (3, n_hog, len(hog[0]) + 2 + 1,
                                                                           len(hog[0]) + 1)
    assert [r[0] for r in h["per_frame"]] == [0, 2, 4] and h["per_frame"][1][3] == 0
    assert h["hog_found_by_model"] == round((len(hog[0]) + 1) / n_hog, 4)
    assert (rep["fps"], rep["video_frames"], rep["frames"]) == (10.0, 6, 6)
    assert f"{n_hog} HOG walkers" in out.output and f"wrote {tmp_path / 'people_report.json'}" in out.output


def test_static_tracks_and_malformed_predictions(tmp_path: Path) -> None:
    from det_toolkit.benchmarks.people_demo import static_tracks

    rows = [{"frame": i, "detections": [{"box": [100 + (i % 2), 50, 120, 110], "track_id": 7},  # parked
                                        {"box": [10 * i, 0, 10 * i + 20, 60], "track_id": 8},  # walking
                                        {"box": [0, 0, 5, 5]}]} for i in range(12)]
    (t,) = static_tracks(rows, fps=2.0, min_s=5.0)
    assert (t["track_id"], t["frames"], t["first"], t["last"], t["box"]) == (7, 12, 0, 11, [100.5, 50.0, 120.0, 110.0])
    assert static_tracks(rows, fps=2.0, min_s=6.5) == []  # 12 frames = 6 s at 2 fps
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"frame": 0, "detections": []}\n{"frame": 1}\n')
    res = CliRunner().invoke(cli, ["tracks", str(bad)])
    assert res.exit_code != 0 and isinstance(res.exception, ValueError)
    video = tmp_path / "v.avi"
    video.write_bytes(b"")
    res = CliRunner().invoke(cli, ["report", str(video), str(bad)])
    assert res.exit_code == 1 and "Error: cannot open video" in res.output
    if Path(VTEST).is_file():
        res = CliRunner().invoke(cli, ["report", str(VTEST), str(bad)])
        assert res.exit_code == 1 and f"Error: {bad}:2: not a det-run prediction row" in res.output


def test_make_demo_is_the_people_demo() -> None:
    """`make -n demo`: Penn-Fudan converted under runs/, the default recipe (no --epochs/--imgsz),
    export, det-eval on val, det-run --track on the video, the README GIF, the domain-gap report."""
    import shutil
    import subprocess

    from tests.conftest import ROOT

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "demo", "NAME=t", "VENV=.venv"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    steps = [ln for ln in dry.splitlines() if ln.startswith((".venv/bin/det-", ".venv/bin/python -m det_toolkit"))]
    assert [s.split()[0].rsplit("/", 1)[1] if "det-" in s.split()[0] else s.split()[2] for s in steps] == [
        "det-convert", "det-train", "det-export", "det-eval", "det-run", "det_toolkit.benchmarks.people_demo",
        "det_toolkit.benchmarks.people_demo"]
    convert, train, _, evaluate, run, gif, report = steps
    assert "../shared/datasets/pennfudan --to coco" in convert and "--out runs/data/pennfudan-coco" in convert
    assert "--data runs/data/pennfudan-coco/data.yaml" in train
    assert "--epochs" not in train and "--imgsz" not in train  # the recipe chooses them
    assert "--split val" in evaluate and "vtest.avi" in run and "--track" in run
    assert gif.split()[3:] == ["gif", "runs/run/people-t-video/vtest.mp4", "runs/run/people-t-video/predictions.jsonl",
                               "benchmarks/reports/vtest_people.gif"]
    assert report.split()[3:6] == ["report", "../shared/videos/vtest.avi", "runs/run/people-t-video/predictions.jsonl"]
    dry = subprocess.run(["make", "-n", "demo-raccoon", "people-demo-hog", "NAME=t"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "--data configs/raccoon.yaml --epochs 12" in dry and "--teacher hog" in dry
    assert "benchmarks/reports/vtest_people.gif" not in dry  # only `make demo` writes the README's GIF
