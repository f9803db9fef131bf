"""The trackers of ``det-run --tracker``: Deep SORT, ByteTrack, OC-SORT and BoT-SORT behind one
interface. Ids follow their objects on a synthetic sequence of moving boxes; settings come from the
shipped YAMLs (equal to the ``trackers`` package's defaults) or a user's YAML, with clear errors;
det-run runs each tracker torch-free on vtest.avi and writes MOT files consistent with its JSON lines."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import VTEST, no_torch_script

from det_toolkit.runtime.config_utils import ConfigError, FieldError
from det_toolkit.runtime.embedder import EMBEDDER_FILENAME, EMBEDDER_INT8_FILENAME
from det_toolkit.runtime.predictor import Detections
from det_toolkit.runtime.trackers import (
    TRACKERS,
    BoTSortConfig,
    ByteTrackConfig,
    MotionTracker,
    OCSortConfig,
    build_tracker,
    load_tracker_config,
    tracker_yaml,
)
from det_toolkit.runtime.tracking import DeepSortTracker, Track, Tracker, TrackerConfig

REPO = Path(__file__).resolve().parents[1]
NO_TORCH = no_torch_script("det_toolkit.runtime.cli")


class ConstEmbedder:
    """Identical appearance for every box: Deep SORT then associates by motion and IoU alone."""

    input_size, name = (128, 64), "const"  # the shipped crop size

    def __call__(self, frame_bgr: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        return np.ones((len(boxes_xyxy), 8), np.float32)


def make_tracker(name: str) -> Tracker:
    """Tracker ``name`` with its shipped settings (Deep SORT with a constant embedder)."""
    cfg = load_tracker_config(name)
    return build_tracker(cfg, ConstEmbedder() if isinstance(cfg, TrackerConfig) else None)


def moving_objects(n_frames: int = 40) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three walkers on a 640x480 frame, one frame per entry: ``(xyxy [K, 4], object ids [K])``.

    Object 0 walks right, object 1 walks left on another row (their x ranges cross at frame ~20),
    object 2 walks down; object 2 is missed in frames 25-27 (an occlusion within every tracker's
    lost-track buffer).
    """
    out = []
    for f in range(n_frames):
        boxes = [[40 + 8 * f, 60, 100 + 8 * f, 200], [560 - 8 * f, 250, 620 - 8 * f, 390],
                 [300, 10 + 3 * f, 350, 120 + 3 * f]]
        ids = [0, 1, 2]
        if 25 <= f <= 27:
            boxes, ids = boxes[:2], ids[:2]
        out.append((np.array(boxes, np.float32), np.array(ids)))
    return out


@pytest.mark.parametrize("name", list(TRACKERS))
def test_ids_follow_objects(name: str) -> None:
    """Each object keeps one track id, different objects get different ids, and every track points
    at its own detection although the detections come in a new order every frame."""
    tracker = make_tracker(name)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (480, 640, 3), np.uint8)  # textured and static: BoT-SORT's CMC finds no motion
    ids_of: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
    for f, (boxes, obj) in enumerate(moving_objects()):
        order = rng.permutation(len(boxes))
        boxes, obj = boxes[order], obj[order]
        scores = np.linspace(0.9, 0.8, len(boxes)).astype(np.float32)
        labels = np.where(obj == 1, 1, 0)  # object 1 is class 1
        tracks = tracker.update(frame, Detections(boxes, scores, labels))
        assert all(isinstance(t, Track) for t in tracks)
        assert len({t.det_index for t in tracks}) == len(tracks)
        for t in tracks:
            np.testing.assert_array_equal(t.box, boxes[t.det_index])
            assert t.box.dtype == np.float32 and t.score == pytest.approx(float(scores[t.det_index]))
            assert t.class_id == labels[t.det_index] and t.track_id >= 1
            ids_of[int(obj[t.det_index])].add(t.track_id)
        # confirmed by frame 5; after the occlusion (frames 25-27) reported again once re-matched
        # minimum_consecutive_frames times in a row (OC-SORT: 3, as in its paper's code)
        if f >= 5 and not 25 <= f <= 30:
            assert {int(obj[t.det_index]) for t in tracks} == {0, 1, 2}, f"frame {f}: {tracks}"
    assert [len(v) for v in ids_of.values()] == [1, 1, 1], ids_of
    assert len(set.union(*ids_of.values())) == 3
    assert tracker.name == name and tracker.summary()["tracker"] == name
    if isinstance(tracker, DeepSortTracker):  # the shipped settings embed every detection
        assert tracker.embed_crops == 3 * 40 - 3 and tracker.reused == 0
        reusing = DeepSortTracker(ConstEmbedder(), dataclasses.replace(tracker.config, reuse_embedding_iou=0.7))
        for boxes, obj in moving_objects():  # with reuse, motion decides most of these unambiguous frames
            reusing.update(frame, Detections(boxes, np.full(len(boxes), 0.9, np.float32), np.zeros(len(obj), int)))
        assert reusing.embed_crops + reusing.reused == 3 * 40 - 3 and reusing.reused > reusing.embed_crops


def test_deepsort_reuses_embeddings_only_when_unambiguous() -> None:
    """``reuse_embedding_iou``: a detection reuses its track's embedding only when it overlaps that
    track's predicted box by the gate and nothing else by more than 1 - gate."""
    cfg = TrackerConfig(n_init=1, reuse_embedding_iou=0.7)
    tracker = DeepSortTracker(ConstEmbedder(), cfg)
    frame = np.zeros((300, 600, 3), np.uint8)
    a, b = np.array([100, 50, 160, 200], np.float32), np.array([400, 50, 460, 200], np.float32)

    def step(*boxes: np.ndarray) -> tuple[int, int]:
        crops, reused = tracker.embed_crops, tracker.reused
        tracker.update(frame, Detections(np.stack(boxes), np.full(len(boxes), 0.9, np.float32),
                                         np.zeros(len(boxes), np.int64)))
        return tracker.embed_crops - crops, tracker.reused - reused

    assert step(a, b) == (2, 0)  # new tracks: embedded
    assert step(a, b) == (2, 0)  # tracks not yet confirmed (confirmed by this update)
    assert step(a + 2, b) == (0, 2)  # both assigned by motion alone
    assert step(a + 4, b, a + [30, 0, 30, 0]) == (2, 1)  # a's neighbour overlaps it (IoU 0.33): both embedded
    assert step(a + 6, b) == (1, 1)  # the neighbour's new (tentative) track still competes for a
    assert step(a + 8, b + [0, 0, 60, 0]) == (1, 1)  # it is gone; b's box doubled: IoU 0.5 < 0.7, embedded
    assert DeepSortTracker(ConstEmbedder(), TrackerConfig(reuse_embedding_iou=None)).reused == 0


def test_motion_track_class_is_the_majority_vote() -> None:
    tracker = MotionTracker(ByteTrackConfig(minimum_consecutive_frames=1))
    frame = np.zeros((200, 300, 3), np.uint8)
    got = []
    for i, label in enumerate([1, 0, 0, 1, 1, 0]):
        box = np.array([[20 + 2 * i, 30, 80 + 2 * i, 150]], np.float32)
        tracks = tracker.update(frame, Detections(box, np.array([0.9], np.float32), np.array([label])))
        got += [t.class_id for t in tracks]
    # votes from the frame the track got its id (frame 1 with minimum_consecutive_frames 1: ByteTrack
    # gives ids on the second match); ties keep the class seen first
    assert got == [0, 0, 0, 0, 0]


def test_low_scores_are_not_tracked_by_default() -> None:
    """The shipped motion settings start tracks only from confident detections (score >= 0.7 for
    ByteTrack / BoT-SORT, 0.6 for OC-SORT), as the ``trackers`` package does."""
    frame = np.zeros((200, 300, 3), np.uint8)
    for name in ("bytetrack", "ocsort", "botsort"):
        tracker = make_tracker(name)
        for i in range(8):
            box = np.array([[20 + 2 * i, 30, 80 + 2 * i, 150]], np.float32)
            assert tracker.update(frame, Detections(box, np.array([0.5], np.float32), np.array([0]))) == []


@pytest.mark.parametrize("cls", [ByteTrackConfig, OCSortConfig, BoTSortConfig])
def test_shipped_settings_are_the_library_defaults(cls: type) -> None:
    """configs/tracker/<name>.yaml == the dataclass defaults == ``trackers``' own defaults."""
    cfg = load_tracker_config(cls.name)
    assert cfg == cls()
    lib = inspect.signature(type(cfg.make()).__init__).parameters
    for f in dataclasses.fields(cls):
        assert lib[f.name].default == getattr(cfg, f.name), f.name
    assert TRACKERS[cls.name] is cls and tracker_yaml(cls.name).name == f"{cls.name}.yaml"


def test_deepsort_is_the_default_and_unchanged() -> None:
    assert load_tracker_config("deepsort") == TrackerConfig() == TrackerConfig.from_yaml(tracker_yaml("deepsort"))
    assert isinstance(build_tracker(TrackerConfig(), ConstEmbedder()), DeepSortTracker)
    with pytest.raises(ValueError, match="needs an appearance embedder"):
        build_tracker(TrackerConfig())


def test_cosine_gallery_equals_deep_sort_realtime_metric() -> None:
    """``CosineGallery`` (stacked unit galleries, only the asked tracks computed) gives the distances of
    deep-sort-realtime's ``NearestNeighborDistanceMetric("cosine")`` for any subset of tracks, budget kept."""
    from deep_sort_realtime.deep_sort.nn_matching import NearestNeighborDistanceMetric

    from det_toolkit.runtime.tracking import CosineGallery

    rng = np.random.default_rng(0)
    ours, ref = CosineGallery(0.2, 5), NearestNeighborDistanceMetric("cosine", 0.2, 5)
    for step in range(4):  # galleries grow past the budget; track 3 is dropped at the last step
        targets = np.array([1, 2, 3, 1, 2, 7] if step < 3 else [1, 2, 7, 7])
        feats = rng.standard_normal((len(targets), 32)).astype(np.float32)
        active = [1, 2, 3, 7] if step < 3 else [1, 2, 7]
        ours.partial_fit(feats, targets, active)
        ref.partial_fit(feats, targets, active)
    query = rng.standard_normal((5, 32)).astype(np.float32)
    for subset in ([1, 2, 7], [7], [2, 1]):
        np.testing.assert_allclose(ours.distance(query, subset), ref.distance(query, subset), atol=1e-5)
    assert ours.distance(query, []).shape == (0, 5) and len(ours.samples[1]) == 5


def test_deepsort_crop_size_setting(tmp_path: Path) -> None:
    """``embedder_input_size``: person-aspect ``[H, W]`` by default, one int for square crops (older
    settings files); the embedder must run at that size."""
    assert TrackerConfig().crop_hw == (128, 64) and TrackerConfig(embedder_input_size=224).crop_hw == (224, 224)
    assert load_tracker_config(_write(tmp_path / "sq.yaml", "embedder_input_size: 128\n")).crop_hw == (128, 128)
    assert load_tracker_config(_write(tmp_path / "hw.yaml", "embedder_input_size: [160, '80']\n")).crop_hw == (160, 80)
    square = ConstEmbedder()
    square.input_size = 128  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"embedder crops are 128x128 \(HxW\) but the tracker config says 128x64"):
        DeepSortTracker(square, TrackerConfig())
    assert DeepSortTracker(square, TrackerConfig(embedder_input_size=[128, 128])).summary()["embedder"][
        "input_size"] == "128x128"


def test_deepsort_embedder_precision_setting(tmp_path: Path) -> None:
    """``embedder_precision``: ``fp32`` by default (the shipped YAML says so), ``int8`` selects the INT8
    embedder (:func:`test_int8_embedder_beside_the_weights`); anything else is refused."""
    assert TrackerConfig().embedder_precision == "fp32" == load_tracker_config("deepsort").embedder_precision
    cfg = load_tracker_config(_write(tmp_path / "q.yaml", "tracker: deepsort\nembedder_precision: int8\n"))
    assert cfg == TrackerConfig(embedder_precision="int8")
    with pytest.raises(FieldError, match="embedder_precision: expected one of fp32, int8, got 'int16'"):
        TrackerConfig(embedder_precision="int16")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_tracker_yaml_names_its_tracker(tmp_path: Path) -> None:
    # the tracker: key wins, then the file name, then Deep SORT (a settings file of --track)
    mine = _write(tmp_path / "mine.yaml", "tracker: ocsort\ndelta_t: 2\n")
    assert load_tracker_config(mine) == OCSortConfig(delta_t=2)
    assert load_tracker_config(_write(tmp_path / "botsort.yaml", "enable_cmc: false\n")) == \
        BoTSortConfig(enable_cmc=False)
    assert load_tracker_config(_write(tmp_path / "small.yml", "n_init: 1\n")) == TrackerConfig(n_init=1)
    # values are coerced like every config (YAML reads 5e-1 as a string)
    assert load_tracker_config(_write(tmp_path / "b.yaml", "tracker: bytetrack\nminimum_iou_threshold: 5e-1\n"
                                      "lost_track_buffer: '10'\n")) == \
        ByteTrackConfig(minimum_iou_threshold=0.5, lost_track_buffer=10)
    with pytest.raises(ConfigError, match="tracker: 'ocsort', but the file is read as deepsort settings"):
        TrackerConfig.from_yaml(mine)
    with pytest.raises(FileNotFoundError, match="tracker config not found"):
        load_tracker_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(("spec", "text", "message"), [
    ("bytetrak", None, "unknown tracker 'bytetrak' (did you mean 'bytetrack'?): use one of deepsort, bytetrack, "
                       "ocsort, botsort or a settings .yaml file"),
    ("t.yaml", "tracker: bytetrak\n", "t.yaml: tracker: unknown tracker 'bytetrak' (did you mean 'bytetrack'?)"),
    ("t.yaml", "tracker: bytetrack\nminimum_iou: 0.2\n",
     "t.yaml: unknown key 'minimum_iou' (did you mean 'minimum_iou_threshold'?)"),
    ("t.yaml", "tracker: bytetrack\nminimum_iou_threshold: 2\n",
     "t.yaml: minimum_iou_threshold: must be in [0, 1], got 2.0"),
    ("t.yaml", "tracker: ocsort\ndelta_t: 0\n", "t.yaml: delta_t: must be >= 1, got 0"),
    ("t.yaml", "tracker: botsort\ncmc_method: flow\n",
     "t.yaml: cmc_method: expected one of sparseOptFlow, orb, sift, ecc, got 'flow'"),
    ("t.yaml", "tracker: botsort\nlost_track_buffer: -1\n", "t.yaml: lost_track_buffer: must be >= 0, got -1"),
    ("t.yaml", "lost_track_buffer: 10\n", "t.yaml: unknown key 'lost_track_buffer' (valid keys: max_age, n_init, "
     "max_iou_distance, max_cosine_distance, nn_budget, embedder_input_size, reuse_embedding_iou, "
     "embedder_precision) (read as Deep SORT settings: the "
     "file has no 'tracker:' key; add one, e.g. 'tracker: bytetrack')"),
    ("t.yaml", "tracker: [a]\n", "t.yaml: tracker: unknown tracker a list ['a'] (one of deepsort, bytetrack, "
     "ocsort, botsort)"),
    ("t.yaml", "tracker: deepsort\nembedder_input_size: [128]\n",
     "t.yaml: embedder_input_size: must be a side >= 1 or [height, width] >= 1 in pixels, got a list [128]"),
    ("t.yaml", "tracker: deepsort\nembedder_input_size: [128, 0]\n",
     "t.yaml: embedder_input_size: must be a side >= 1 or [height, width] >= 1 in pixels, got a list [128, 0]"),
    ("t.yaml", "tracker: deepsort\nembedder_input_size: 128x64\n",
     "t.yaml: embedder_input_size: expected an integer or a list of integers, got '128x64'"),
    ("t.yaml", "tracker: deepsort\nembedder_input_size: [128, 6.5]\n",
     "t.yaml: embedder_input_size: expected an integer or a list of integers, got a list [128, 6.5]"),
    ("t.yaml", "tracker: deepsort\nembedder_precision: int16\n",
     "t.yaml: embedder_precision: expected one of fp32, int8, got 'int16'"),
])
def test_bad_tracker_settings(tmp_path: Path, spec: str, text: str | None, message: str) -> None:
    if text is not None:
        _write(tmp_path / spec, text)
        spec = str(tmp_path / spec)
        message = str(tmp_path / message)
    with pytest.raises(ConfigError) as e:
        load_tracker_config(spec)
    assert str(e.value) == message


# --- det-run on the real clip, torch-free ------------------------------------------------------------

@pytest.fixture(scope="module")
def det_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cached random-head detector (ONNX, 256 px, <= 8 boxes, scores ~0.5), alone in a folder:
    no embedder beside it, which only Deep SORT needs."""
    pytest.importorskip("torch")
    from det_toolkit.benchmarks.artifacts import cached_detector

    folder = tmp_path_factory.mktemp("det")
    (folder / "det.onnx").symlink_to(cached_detector(256, 8)[1])
    return folder / "det.onnx"


@pytest.fixture(scope="module")
def embedder_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from det_toolkit.export.embedder import export_embedder

    return export_embedder(tmp_path_factory.mktemp("emb") / "deepsort_embedder.onnx", echo=lambda _: None)


def test_int8_embedder_beside_the_weights(embedder_onnx: Path, tmp_path: Path) -> None:
    """``embedder_precision: int8`` makes Deep SORT use ``deepsort_embedder_int8.onnx`` beside the
    weights (what ``det-export --int8`` writes); when it is absent the error says how to make it (no
    silent FP32 fallback, for ``.pt`` weights either); an explicit embedder still wins."""
    from det_toolkit.runtime.api import open_embedder
    from det_toolkit.runtime.run import RunSettings, make_tracker

    weights, int8 = tmp_path / "det.onnx", tmp_path / EMBEDDER_INT8_FILENAME  # weights: only the folder is used
    cfg = str(_write(tmp_path / "int8.yaml", "tracker: deepsort\nembedder_precision: int8\n"))
    for w in (weights, tmp_path / "det.pt"):
        with pytest.raises(FileNotFoundError) as e:
            open_embedder(w, precision="int8")
        assert str(e.value) == (f"tracking with embedder_precision: int8 needs the INT8 appearance embedder "
                                f"{int8}, which is missing; run `det-export WEIGHTS --int8` (it writes "
                                f"{EMBEDDER_INT8_FILENAME} beside the detector ONNX) or pass its path (det-run "
                                "--embedder PATH, track(..., embedder=PATH))")
    with pytest.raises(FileNotFoundError, match=f"{EMBEDDER_INT8_FILENAME}, which is missing"):
        make_tracker(RunSettings(weights, tracker=cfg))
    with pytest.raises(ValueError, match="embedder precision must be one of fp32, int8, got 'int16'"):
        open_embedder(weights, precision="int16")
    shutil.copyfile(embedder_onnx, int8)  # the FP32 graph under the INT8 name: only the lookup is tested
    assert open_embedder(weights, device="cpu", input_size=(128, 64), precision="int8").path == int8
    tracker = make_tracker(RunSettings(weights, tracker=cfg))
    assert isinstance(tracker, DeepSortTracker) and tracker.embedder.path == int8
    tracker = make_tracker(RunSettings(weights, tracker=cfg, embedder=embedder_onnx))
    assert isinstance(tracker, DeepSortTracker) and tracker.embedder.path == embedder_onnx
    with pytest.raises(FileNotFoundError, match=f"run `det-export WEIGHTS` \\(it writes {EMBEDDER_FILENAME}"):
        open_embedder(weights)  # fp32 (the default) looks for deepsort_embedder.onnx only


def det_run_no_torch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300, check=False)


# the random head scores its boxes ~0.5: thresholds low enough for them to start tracks
LOW = {"deepsort": "n_init: 2\n",
       "bytetrack": "track_activation_threshold: 0.3\nhigh_conf_det_threshold: 0.4\n",
       "ocsort": "high_conf_det_threshold: 0.4\n",
       "botsort": "track_activation_threshold: 0.3\nhigh_conf_det_threshold: 0.4\n"}


@pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} absent")
@pytest.mark.parametrize("name", list(TRACKERS))
def test_det_run_tracks_without_torch(name: str, det_only: Path, embedder_onnx: Path, tmp_path: Path) -> None:
    cfg = _write(tmp_path / "low.yaml", f"tracker: {name}\n{LOW[name]}")
    extra = ["--embedder", str(embedder_onnx)] if name == "deepsort" else []
    proc = det_run_no_torch([str(VTEST), "--weights", str(det_only), "--tracker", str(cfg), *extra,
                             "--max-frames", "30", "--no-save", "--project", str(tmp_path), "--name", "r"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "30 frames processed" in proc.stdout and f"tracker {name}: " in proc.stdout
    run = tmp_path / "r"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tracker"] == name and summary["frames"] == 30
    assert ("embedder" in summary) == (name == "deepsort")
    lines = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    mot = np.loadtxt(run / "vtest_mot.txt", delimiter=",", ndmin=2)
    assert len(mot) > 0 and mot.shape[1] == 10 and mot[:, 1].min() >= 1
    assert summary["track_ids"] == len(np.unique(mot[:, 1]))
    # MOT rows and JSON lines carry the same tracks: same ids on the same boxes, frame by frame
    jsonl_rows = sorted((r["frame"] + 1, d["track_id"]) for r in lines for d in r["detections"] if "track_id" in d)
    assert jsonl_rows == sorted((int(f), int(t)) for f, t in mot[:, :2])
    for frame, tid, x, y, w, h in mot[:, :6]:
        boxes = {d["track_id"]: d["box"] for d in lines[int(frame) - 1]["detections"] if "track_id" in d}
        np.testing.assert_allclose(boxes[int(tid)], [x, y, x + w, y + h], atol=0.02)


@pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} absent")
def test_det_run_tracker_by_name(det_only: Path, tmp_path: Path) -> None:
    """--tracker NAME alone: the shipped settings, tracking on, no embedder needed; --track alone is
    Deep SORT, which does need one; a bad name is one line naming the flag's choices."""
    base = [str(VTEST), "--weights", str(det_only), "--max-frames", "6", "--no-save", "--project", str(tmp_path)]
    proc = det_run_no_torch([*base, "--tracker", "ocsort", "--embedder", "x.onnx"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--embedder ignored: ocsort tracks by motion alone" in proc.stderr
    assert json.loads((tmp_path / "exp/summary.json").read_text())["tracker"] == "ocsort"
    assert (tmp_path / "exp/vtest_mot.txt").is_file()
    proc = det_run_no_torch([*base, "--track"], tmp_path)
    assert proc.returncode == 2 and "deepsort_embedder.onnx" in proc.stderr and "det-export" in proc.stderr  # usage
    proc = det_run_no_torch([*base, "--tracker", "sort"], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "unknown tracker 'sort'" in proc.stderr and "use one of deepsort, bytetrack, ocsort, botsort" in proc.stderr


@pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} absent")
def test_python_api_tracker_argument(det_only: Path) -> None:
    """``det_toolkit.track(..., tracker=...)`` takes what --tracker takes, or a settings object."""
    from det_toolkit import Detector, track

    det = Detector(det_only, device="cpu")
    cfg = ByteTrackConfig(track_activation_threshold=0.3, high_conf_det_threshold=0.4)
    for spec, name in (("ocsort", "ocsort"), (cfg, "bytetrack")):
        with track(VTEST, det, tracker=spec, max_frames=8) as frames:  # no embedder beside det_only
            assert isinstance(frames.tracker, MotionTracker) and frames.tracker.name == name
            got = list(frames)
        assert [f.index for f in got] == list(range(8))
        if name == "bytetrack":
            assert any(f.tracks for f in got)
    with pytest.raises(TypeError, match="tracker must be"):
        track(VTEST, det, tracker=3)  # type: ignore[arg-type]
