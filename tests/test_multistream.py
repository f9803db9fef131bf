"""det-run with several sources (runtime/multistream.py): each stream's files equal a det-run on that
source alone (dynamic graph and a static batch-2 graph), a source that cannot be opened or fails
mid-way is reported while the others finish, SIGTERM finishes every stream's outputs."""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
VIDEO = SHARED / "videos/vtest.avi"
RACCOON = SHARED / "datasets/raccoon/images"
CLIP_FRAMES = 20

pytestmark = pytest.mark.skipif(not VIDEO.is_file() or not RACCOON.is_dir(), reason=f"{SHARED} data absent")


@pytest.fixture(scope="module")
def det() -> tuple[Path, Path]:
    """A random-head detector (256 px, <= 8 boxes): ``(det.pt, det.onnx)`` (dynamic single-image graph)."""
    pytest.importorskip("torch")
    from det_toolkit.benchmarks.artifacts import cached_detector

    return cached_detector(256, 8)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 20-frame clips of vtest (frames 0-19 and 300-319, MJPEG), a folder of 3 raccoon photos,
    a corrupt .avi (junk bytes) and a ByteTrack YAML whose thresholds the random head's scores
    (~0.5) pass, so that tracks exist."""
    root = tmp_path_factory.mktemp("streams")
    cap = cv2.VideoCapture(str(VIDEO))
    for name, start in (("walk_a", 0), ("walk_b", 300)):
        cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        vw = cv2.VideoWriter(str(root / f"{name}.avi"), cv2.VideoWriter.fourcc(*"MJPG"), 10, (768, 576))
        for _ in range(CLIP_FRAMES):
            ok, frame = cap.read()
            assert ok
            vw.write(frame)
        vw.release()
    cap.release()
    (root / "photos").mkdir()
    for i in (4, 5, 6):
        shutil.copy(RACCOON / f"raccoon-{i}.jpg", root / "photos")
    (root / "corrupt.avi").write_bytes(b"RIFF\x00\x00junk" * 500)
    (root / "track.yaml").write_text("tracker: bytetrack\ntrack_activation_threshold: 0.45\n"
                                     "high_conf_det_threshold: 0.45\nminimum_iou_threshold: 0.1\n")
    return root


def det_run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "det_toolkit.runtime.cli", *args], cwd=cwd, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600, check=False)


def video_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    return n


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def compare_with_single_runs(weights: Path, data: Path, sources: list[str], extra: list[str], run: str,
                             rc: int = 0) -> dict:
    """det-run on ``sources`` together (exit status ``rc``: 1 when one fails) and on each alone;
    asserts equal files; returns the run summary."""
    res = det_run([*sources, "--weights", str(weights), "--project", "out", "--name", run, *extra], data)
    assert res.returncode == rc, res.stderr.decode()[-3000:]
    summary = json.loads((data / "out" / run / "summary.json").read_text())
    for row in summary["streams"]:
        if row["status"] != "done":
            continue
        alone = f"{run}_{row['stream']}"
        res = det_run([row["source"], "--weights", str(weights), "--project", "out", "--name", alone, *extra], data)
        assert res.returncode == 0, res.stderr.decode()[-3000:]
        many, one = data / "out" / run / row["folder"], data / "out" / alone
        assert sorted(p.name for p in many.iterdir()) == sorted(p.name for p in one.iterdir())
        for f in [*many.glob("*.jsonl"), *many.glob("*_mot.txt")]:
            assert f.read_text() == (one / f.name).read_text(), f"{f} differs from the single-source run"
        s_many, s_one = (json.loads((d / "summary.json").read_text()) for d in (many, one))
        assert s_many["frames"] == s_one["frames"] == row["frames"] == len(lines(many / "predictions.jsonl"))
        assert s_many.keys() == s_one.keys()
    return summary


@pytest.mark.slow
def test_streams_equal_single_runs_and_a_corrupt_source_is_reported(det: tuple[Path, Path], data: Path) -> None:
    """Two clips, a photo folder (ends first) and a corrupt .avi, tracked with ByteTrack: the corrupt
    source is reported and the others finish with the boxes, tracks and files of single-source runs."""
    srcs = ["walk_a.avi", "corrupt.avi", "walk_b.avi", "photos"]
    summary = compare_with_single_runs(det[1], data, srcs, ["--tracker", "track.yaml"], "dyn", rc=1)
    rows = {r["stream"]: r for r in summary["streams"]}
    assert [r["stream"] for r in summary["streams"]] == ["walk_a", "corrupt", "walk_b", "photos"]
    assert {k: r["status"] for k, r in rows.items()} == {"walk_a": "done", "corrupt": "failed", "walk_b": "done",
                                                        "photos": "done"}
    assert "cannot open corrupt.avi as a video" in rows["corrupt"]["reason"] and rows["corrupt"]["folder"] is None
    assert not (data / "out/dyn/corrupt").exists()
    assert [rows[k]["frames"] for k in ("walk_a", "walk_b", "photos")] == [CLIP_FRAMES, CLIP_FRAMES, 3]
    assert summary["frames"] == 2 * CLIP_FRAMES + 3 and summary["batch"] == 1 and summary["fps"] > 0
    assert 1 < summary["mean_batch"] <= 3  # frames of several streams per detection call
    mot = (data / "out/dyn/walk_a/walk_a_mot.txt").read_text().splitlines()
    assert len(mot) > CLIP_FRAMES  # tracks exist: the MOT comparison compared something
    assert video_frames(data / "out/dyn/walk_b/walk_b.mp4") == CLIP_FRAMES
    assert len(list((data / "out/dyn/photos").glob("raccoon-*.jpg"))) == 3


@pytest.mark.slow
def test_static_batch_graph_runs_streams_together(det: tuple[Path, Path], data: Path, tmp_path: Path) -> None:
    """A static batch-2 graph (det-export --batch 2) takes both streams' frames in one forward pass;
    boxes equal each stream's single-source run on the same graph (there padded with a blank image)."""
    from det_toolkit.benchmarks.artifacts import export_batched

    graph = export_batched(det[0], 2, tmp_path / "det_b2.onnx")
    summary = compare_with_single_runs(graph, data, ["walk_a.avi", "walk_b.avi"], ["--no-save"], "b2")
    assert summary["batch"] == 2 and summary["frames"] == 2 * CLIP_FRAMES
    assert summary["mean_batch"] > 1.5  # most calls held a frame of each stream (a step takes what is ready)


def test_a_source_failing_mid_way_leaves_the_others_running(det: tuple[Path, Path], data: Path,
                                                            tmp_path: Path) -> None:
    """--sahi with --max-tiles: the second photo of one folder needs too many tiles, so that stream
    fails after one frame (outputs so far and its summary kept, error named); the other finishes."""
    small = cv2.imread(str(RACCOON / "raccoon-4.jpg"))  # 275x183: 6 tiles of 128 px
    big = cv2.imread(str(RACCOON / "raccoon-2.jpg"))  # 800x573: more than 8
    for folder, images in (("bad", [small, big, small]), ("good", [small, small])):
        (tmp_path / folder).mkdir()
        for i, img in enumerate(images):
            cv2.imwrite(str(tmp_path / folder / f"{i}.png"), img)
    res = det_run(["bad", "good", "--weights", str(det[1]), "--sahi", "--slice", "128", "--max-tiles", "8",
                   "--project", ".", "--name", "r"], tmp_path)
    assert res.returncode == 1, res.stderr.decode()[-3000:]
    err = res.stderr.decode()
    assert "1 of 2 sources failed" in err and "bad (bad) failed:" in err
    assert "--max-tiles" in err and "the other streams go on" in err
    rows = {r["stream"]: r for r in json.loads((tmp_path / "r/summary.json").read_text())["streams"]}
    assert (rows["bad"]["status"], rows["bad"]["frames"], rows["good"]["status"], rows["good"]["frames"]) == \
        ("failed", 1, "done", 2)
    bad = json.loads((tmp_path / "r/bad/summary.json").read_text())
    assert "--max-tiles" in bad["error"] and bad["frames"] == 1 == len(lines(tmp_path / "r/bad/predictions.jsonl"))
    assert (tmp_path / "r/bad/0.png").is_file() and not (tmp_path / "r/bad/1.png").exists()


def test_all_sources_unopenable_is_an_error_and_writes_nothing(det: tuple[Path, Path], data: Path) -> None:
    from det_toolkit.runtime.cli import main

    res = CliRunner().invoke(main, [str(data / "corrupt.avi"), str(data / "missing.avi"), "--weights", str(det[1]),
                                    "--project", str(data / "none")])
    assert res.exit_code == 1, res.output
    assert "no source could be opened" in res.output and "source not found" in res.output
    assert "Traceback" not in res.output and not (data / "none").exists()


def test_sigterm_finishes_every_stream(det: tuple[Path, Path], data: Path) -> None:
    """SIGTERM mid-run (two copies of vtest listed in a .streams file): exit 143, and each stream's
    video, JSON lines and summary hold the same frames; the run summary says interrupted."""
    (data / "two.streams").write_text(f"# two cameras\n{VIDEO}\n{VIDEO}\n")
    proc = subprocess.Popen([sys.executable, "-m", "det_toolkit.runtime.cli", "two.streams", "--weights",
                             str(det[1]), "--project", "out", "--name", "sig"], cwd=data, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    run = data / "out/sig"
    deadline = time.monotonic() + 180
    while not all((run / s / "predictions.jsonl").is_file() and (run / s / "predictions.jsonl").stat().st_size
                  for s in ("vtest", "vtest-2")) and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode()[-3000:])
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] and summary["signal"] == "SIGTERM"
    for row in summary["streams"]:
        assert row["status"] == "interrupted" and 0 < row["frames"] < 795
        folder = run / row["folder"]
        assert len(lines(folder / "predictions.jsonl")) == row["frames"] == video_frames(folder / "vtest.mp4")
        assert json.loads((folder / "summary.json").read_text())["signal"] == "SIGTERM"


def test_detect_frames_keeps_each_frames_error_apart(det: tuple[Path, Path]) -> None:
    """A frame the batched call cannot take fails alone; the others get their single-frame boxes."""
    from det_toolkit.benchmarks.common import read_frames
    from det_toolkit.runtime.backends import load_backend
    from det_toolkit.runtime.multistream import detect_frames
    from det_toolkit.runtime.predictor import Predictor

    predictor = Predictor(load_backend(det[1], "cpu"), 0.25)
    frame = read_frames(VIDEO, 1)[0]
    out, times = detect_frames(predictor, [np.zeros((0, 0, 3), np.uint8), frame])
    alone = predictor(frame)
    assert isinstance(out[0], Exception) and not isinstance(out[1], Exception)
    np.testing.assert_array_equal(out[1].boxes, alone.boxes)
    np.testing.assert_array_equal(out[1].scores, alone.scores)
    assert times["inference"] > 0


def test_reader_threads_prepare_frames(det: tuple[Path, Path]) -> None:
    """Frames prepared in a FrameReader's thread (the hook det-run gives a square predictor's readers)
    get exactly the boxes of frames letterboxed by the calling thread, and their prepare time counts as
    that frame's preprocess; a frame prepare rejects ends that reader's items with the error."""
    from det_toolkit.benchmarks.common import read_frames
    from det_toolkit.runtime.backends import load_backend
    from det_toolkit.runtime.multistream import _detect_step, _timed_prepare, detect_frames
    from det_toolkit.runtime.pipeline import FrameReader
    from det_toolkit.runtime.predictor import Predictor
    from det_toolkit.runtime.source_types import Source, SourceInfo

    class ListSource(Source):
        def __init__(self, frames: list[np.ndarray]) -> None:
            super().__init__(SourceInfo("list", False, len(frames)))
            self.frames = frames

        def __iter__(self) -> Iterator[tuple[int, str, np.ndarray]]:
            return ((i, f"{i}.png", f) for i, f in enumerate(self.frames))

    predictor = Predictor(load_backend(det[1], "cpu"), 0.25)
    frames = [*read_frames(VIDEO, 2), cv2.imread(str(RACCOON / "raccoon-4.jpg"))]
    q: queue.Queue = queue.Queue()
    reader = FrameReader(ListSource([*frames, np.zeros((0, 0, 3), np.uint8), frames[0]]), q, threading.Event(),
                         live=False, prepare=_timed_prepare(predictor))
    reader.start()
    reader.join(timeout=60)
    items = [q.get_nowait() for _ in range(q.qsize())]
    assert len(items) == 4 and isinstance(items[3], ValueError), items[3:]
    good = items[:3]
    assert all(it[3] >= 0 and it[4].ms > 0 and it[2] is f for it, f in zip(good, frames))
    out, times = detect_frames(predictor, frames, [it[4].frame for it in good])
    ref, _ = detect_frames(predictor, frames)
    assert times["inference"] > 0 and sum(len(d) for d in ref) > 0
    for a, b in zip(out, ref):
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.labels, b.labels)
    for it, (dets, stage_ms) in zip(good, _detect_step(predictor, good)):
        assert not isinstance(dets, Exception) and stage_ms["preprocess"] >= it[4].ms
        assert stage_ms["decode"] == it[3] and stage_ms.keys() == {"decode", "preprocess", "inference",
                                                                   "postprocess"}


def test_two_detection_calls_in_flight_on_cpu_onnx(det: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """An ONNX graph on the CPU provider with >= 2 physical cores runs LANES calls at once, each on
    cores // LANES intra-op threads; one core, or PyTorch weights, keep one call at a time (the
    equality tests above run with whichever this machine gets)."""
    from det_toolkit.runtime import multistream as ms
    from det_toolkit.runtime.run import RunSettings

    monkeypatch.setattr(ms, "physical_cores", lambda: 4)
    backend, lanes = ms._load_detector(RunSettings(weights=det[1], device="cpu"))
    assert lanes == ms.LANES == 2 and backend._sess.get_session_options().intra_op_num_threads == 2
    monkeypatch.setattr(ms, "physical_cores", lambda: 1)
    assert ms._load_detector(RunSettings(weights=det[1], device="cpu"))[1] == 1
    monkeypatch.setattr(ms, "physical_cores", lambda: 4)
    assert ms._load_detector(RunSettings(weights=det[0], device="cpu"))[1] == 1


def test_one_decoder_thread_per_stream_decodes_the_same_frames(det: tuple[Path, Path], data: Path,
                                                               tmp_path: Path) -> None:
    """Streams decode with one FFmpeg thread each (DECODE_THREADS): the same frames as the default
    decoder on vtest itself (MPEG-4 part 2); a run sets OpenCV's threads to DECODE_THREADS and gives
    the process its own setting back."""
    from det_toolkit.runtime import multistream as ms
    from det_toolkit.runtime.run import RunSettings
    from det_toolkit.runtime.video_sources import open_video

    one, default = open_video(VIDEO, decode_threads=ms.DECODE_THREADS), open_video(VIDEO)
    try:
        pairs = list(itertools.islice(zip(one, default), 60))
    finally:
        one.close()
        default.close()
    assert len(pairs) == 60 and all(a[0] == b[0] and np.array_equal(a[2], b[2]) for a, b in pairs)
    seen: list[int] = []
    real_collect = ms._collect
    monkey = pytest.MonkeyPatch()
    monkey.setattr(ms, "_collect", lambda *a: (seen.append(cv2.getNumThreads()), real_collect(*a))[1])
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(2)
        summary = ms.run_streams([str(data / "walk_a.avi"), str(data / "walk_b.avi")],
                                 RunSettings(weights=det[1], device="cpu", save=False), tmp_path, "s",
                                 echo=lambda *a, **k: None, progress=False)
        assert cv2.getNumThreads() == 2
    finally:
        monkey.undo()
        cv2.setNumThreads(before)
    assert summary["frames"] == 2 * CLIP_FRAMES and seen and set(seen) == {ms.DECODE_THREADS}


def test_benchmark_cpu_floor_times_decode_letterbox_and_model(det: tuple[Path, Path]) -> None:
    """multistream_bench's CPU floor: per-frame CPU ms of decoding, letterboxing and the graph on
    one thread each, from which it prints one process's ceiling."""
    from det_toolkit.benchmarks.multistream_bench import cpu_floor

    floor = cpu_floor(det[1], streams=2, frames=6)
    assert set(floor) == {"decode", "prepare", "model"}
    assert all(0 < v < 10_000 for v in floor.values()), floor
    assert floor["model"] > floor["decode"]  # a forward pass costs more than decoding a frame


def test_a_step_is_queued_only_when_no_source_is_live() -> None:
    """Files: the running calls plus QUEUED_STEPS; any live source: the running calls alone (a
    queued live frame would only grow old)."""
    from types import SimpleNamespace

    from det_toolkit.runtime import multistream as ms

    def stream(live: bool) -> SimpleNamespace:
        return SimpleNamespace(reader=SimpleNamespace(live=live))

    assert ms._depth([stream(False), stream(False)], 2) == 2 + ms.QUEUED_STEPS > 2  # type: ignore[arg-type]
    assert ms._depth([stream(False), stream(True)], 2) == 2  # type: ignore[arg-type]
