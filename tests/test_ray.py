"""det-run --ray and det-label --ray on real Ray instances (issue 16, point 1).

The tests marked ``ray`` start Ray, which binds a network interface: they run only inside a network
namespace that has nothing but loopback (``.ci/run`` and ``make test`` run them as
``unshare -n sh -c 'ip link set lo up && .venv/bin/python -m pytest -q -m ray'``), so every packet
stays on 127.0.0.1; elsewhere they are skipped with that reason. Each checks real outputs: the
per-source folders of a Ray job against plain det-run / det-label runs on the same real clips and
photos (cut from ``vtest.avi``, raccoon val images) with a random-head detector.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import VTEST, need_raccoon

from det_toolkit.runtime.cli import main as det_run
from det_toolkit.runtime.ray_run import MAX_RETRIES, check_address, loopback_only
from det_toolkit.train.label import main as det_label

REPO = Path(__file__).resolve().parents[1]
CLIP_FRAMES = 30
CLIPS = 3


RAY_REASON = ("Ray binds a network interface: these tests run only in a network namespace with nothing but "
              "loopback: unshare -n sh -c 'ip link set lo up && .venv/bin/python -m pytest -q -m ray' (as root; "
              ".ci/run and make test do this)")
loopback = pytest.mark.skipif(not loopback_only(), reason=RAY_REASON)


@pytest.fixture(scope="module")
def ray_module() -> object:
    """The ``ray`` module (the test is skipped without it)."""
    return pytest.importorskip("ray", reason="the [ray] extra is not installed (pip install 'det-toolkit[ray]')")


@pytest.fixture(scope="module")
def local_ray(ray_module: object) -> object:
    """One local Ray instance (2 CPUs, no dashboard) for the module's tests."""
    if not VTEST.is_file():
        pytest.skip(f"{VTEST} absent")
    ray_module.init(num_cpus=2, include_dashboard=False)
    yield ray_module
    ray_module.shutdown()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three real clips of :data:`CLIP_FRAMES` frames cut from vtest.avi (MJPEG AVI), a corrupt
    video (random bytes), a folder of six raccoon val photos plus an unreadable ``.jpg``, the
    random-head detector, and plain det-run outputs of each clip and of the folder."""
    if not VTEST.is_file():
        pytest.skip(f"{VTEST} absent")
    raccoon = need_raccoon()
    pytest.importorskip("torch")  # to export the test detector (the code under test does not need it)
    from det_toolkit.benchmarks.artifacts import cached_detector

    root = tmp_path_factory.mktemp("media")
    cap = cv2.VideoCapture(str(VTEST))
    clips = []
    for k in range(CLIPS):
        path = root / f"clip{k}.avi"
        vw = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (768, 576))
        for _ in range(CLIP_FRAMES):
            ok, frame = cap.read()
            assert ok
            vw.write(frame)
        vw.release()
        clips.append(path)
    cap.release()
    broken = root / "broken.avi"
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
    photos = root / "photos"
    photos.mkdir()
    for stem in (raccoon / "val.txt").read_text().split()[:6]:
        (photos / f"{stem}.jpg").write_bytes((raccoon / "images" / f"{stem}.jpg").read_bytes())
    (photos / "zz_unreadable.jpg").write_text("not an image")
    weights = cached_detector(256, 8)[1]
    plain = root / "plain"
    for src in [*clips, photos]:
        res = CliRunner().invoke(det_run, [str(src), "--weights", str(weights), "--device", "cpu", "--save-txt",
                                           "--project", str(plain), "--name", src.stem])
        assert res.exit_code == 0, res.output
    return {"clips": clips, "broken": broken, "photos": photos, "weights": weights, "plain": plain}


def run_job(media: dict, project: Path, *extra: str) -> tuple[int, str]:
    """``det-run clip0 clip1 clip2 broken.avi --ray`` into ``project/job``: (exit code, output)."""
    args = [*map(str, media["clips"]), str(media["broken"]), "--weights", str(media["weights"]), "--device", "cpu",
            "--project", str(project), "--name", "job", *extra, "--ray"]
    res = CliRunner().invoke(det_run, args)
    return res.exit_code, res.output


def check_job(media: dict, job: Path, nodes: int) -> dict:
    """The three clip folders equal plain det-run's (predictions.jsonl byte for byte, the same labels,
    a video of the same frame count and size); the corrupt video is failed with its reason."""
    for clip in media["clips"]:
        got, want = job / clip.stem, media["plain"] / clip.stem
        assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())
        assert (got / "predictions.jsonl").read_bytes() == (want / "predictions.jsonl").read_bytes()
        lines = (got / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == CLIP_FRAMES and all(json.loads(ln)["detections"] for ln in lines)
        for f in (want / "labels").iterdir():
            assert (got / "labels" / f.name).read_text() == f.read_text()
        cap = cv2.VideoCapture(str(got / f"{clip.stem}.mp4"))
        assert (cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == (CLIP_FRAMES, 768)
        cap.release()
        summary = json.loads((got / "summary.json").read_text())
        assert summary["source"] == str(clip) and summary["frames"] == CLIP_FRAMES and summary["skipped"] == 0
    assert not (job / "broken").exists()
    s = json.loads((job / "summary.json").read_text())
    assert s["command"] == "det-run --ray" and s["ray"]["nodes"] == nodes
    broken = {e["source"]: e for e in s["sources"]}[str(media["broken"])]
    assert broken["status"] == "failed" and "cannot open" in broken["reason"] and "corrupt" in broken["reason"]
    return s


@pytest.mark.parametrize("address", ["auto", "local", "10.0.0.5:6379", "ray://head.example.org:10001", "[::1]:6379"])
def test_ray_address_forms(address: str) -> None:
    assert check_address(address) == address


def test_ray_option_refuses_what_is_no_address(tmp_path: Path) -> None:
    """A source swallowed by --ray is a usage error that says how to write the option; --ray-workers
    needs --ray; no Ray is started for either."""
    for bad in ("clip.avi", "head:99999", "http://x:1", "ray://:10001"):
        with pytest.raises(ValueError, match="is not a Ray address"):
            check_address(bad)
    res = CliRunner().invoke(det_run, ["--ray", "clip.avi", "--weights", "w.onnx"])
    assert res.exit_code == 2 and "is not a Ray address" in res.output and "--ray=ADDRESS" in res.output
    res = CliRunner().invoke(det_run, ["clip.avi", "--weights", "w.onnx", "--ray-workers", "2"])
    assert res.exit_code == 2 and "apply to --ray only" in res.output
    res = CliRunner().invoke(det_label, ["--ray", "vid.mp4", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "is not a Ray address" in res.output
    assert not (tmp_path / "o").exists()


def test_missing_ray_names_the_extra(tmp_path: Path) -> None:
    """Without Ray installed (imports blocked), det-run --ray says which extra to install; no traceback."""
    script = f"""
import sys
class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "ray":
            raise ImportError("ray is blocked")
sys.meta_path.insert(0, NoRay())
from click.testing import CliRunner
from det_toolkit.runtime.cli import main
res = CliRunner().invoke(main, ["{VTEST}", "--weights", "w.onnx", "--project", "{tmp_path}", "--ray"])
print(res.exit_code, res.output)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.startswith("1 ") and 'pip install "det-toolkit[ray]"' in proc.stdout, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout


@pytest.mark.ray
@pytest.mark.slow
@loopback
@pytest.mark.usefixtures("local_ray")
def test_det_run_ray_videos_equal_plain_runs_and_resume(media: dict, tmp_path: Path) -> None:
    """Local Ray: the three clips' folders equal plain det-run's, the corrupt video is failed with its
    reason (exit 1), a second run skips the finished clips (their files untouched) and retries the
    failed one, a clip without its summary.json is redone, and other settings are refused."""
    code, out = run_job(media, tmp_path, "--save-txt")
    assert code == 1 and "1 of 4 sources failed" in out, out
    job = tmp_path / "job"
    s = check_job(media, job, nodes=1)
    assert (s["done"], s["failed"], s["skipped"], s["frames"]) == (3, 1, 0, CLIPS * CLIP_FRAMES)
    assert sum(w["frames"] for w in s["workers"].values()) == CLIPS * CLIP_FRAMES
    assert all(w["fps"] > 0 for w in s["workers"].values()) and s["ray"]["workers"] * s["ray"]["threads"] <= 2

    stamps = {p: p.stat().st_mtime_ns for p in job.rglob("*") if p.is_file() and p.parent != job}
    (job / "clip1" / "summary.json").unlink()  # clip1 as if its worker had stopped before finishing
    code, out = run_job(media, tmp_path, "--save-txt")
    assert code == 1, out
    s = check_job(media, job, nodes=1)
    assert (s["done"], s["failed"], s["skipped"], s["frames"]) == (1, 1, 2, CLIP_FRAMES)
    assert [e["status"] for e in s["sources"]] == ["skipped", "done", "skipped", "failed"]
    for p, t in stamps.items():
        if p.parent.name in ("clip0", "clip2") or p.parent.parent.name in ("clip0", "clip2"):
            assert p.stat().st_mtime_ns == t, f"{p} was rewritten"

    code, out = run_job(media, tmp_path, "--save-txt", "--conf", "0.3")
    assert code == 1 and "other settings (conf)" in out, out
    code, out = run_job(media, tmp_path / "big", "--ray-workers", "2", "--ray-threads", "2")
    assert code == 1 and "2 Ray workers of 2 CPUs each do not fit" in out and not (tmp_path / "big").exists(), out


@pytest.mark.ray
@pytest.mark.slow
@loopback
@pytest.mark.usefixtures("local_ray")
def test_det_run_ray_image_folder_on_ray_data(media: dict, tmp_path: Path) -> None:
    """An image folder goes through Ray Data in batches and gives plain det-run's predictions.jsonl
    and labels, annotated images under the same names, the unreadable file counted as skipped."""
    res = CliRunner().invoke(det_run, [str(media["photos"]), "--weights", str(media["weights"]), "--device", "cpu",
                                       "--save-txt", "--project", str(tmp_path), "--name", "job", "--ray"])
    assert res.exit_code == 0, res.output
    got, want = tmp_path / "job" / "photos", media["plain"] / "photos"
    assert (got / "predictions.jsonl").read_bytes() == (want / "predictions.jsonl").read_bytes()
    assert len((got / "predictions.jsonl").read_text().splitlines()) == 6
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())
    for f in (want / "labels").iterdir():
        assert (got / "labels" / f.name).read_text() == f.read_text()
    summary = json.loads((got / "summary.json").read_text())
    assert (summary["frames"], summary["skipped"]) == (6, 1) and summary["ray"]["batch"] >= 1
    assert json.loads((tmp_path / "job" / "summary.json").read_text())["sources"][0]["kind"] == "images"


@pytest.mark.ray
@pytest.mark.slow
@loopback
@pytest.mark.usefixtures("local_ray")
def test_det_label_ray_writes_the_plain_dataset(media: dict, tmp_path: Path) -> None:
    """det-label over two clips, a photo folder and a corrupt video, with --ray and without: the same
    dataset (frames, labels, splits, data.yaml), the corrupt video failed in both (exit 1)."""
    sources = [str(media["clips"][0]), str(media["photos"]), str(media["clips"][1]), str(media["broken"])]
    common = ["--teacher", str(media["weights"]), "--device", "cpu", "--conf", "0.3", "--format", "yolo",
              "--every", "5"]
    plain = CliRunner().invoke(det_label, [*sources, *common, "--out", str(tmp_path / "plain")])
    ray_res = CliRunner().invoke(det_label, [*sources, *common, "--out", str(tmp_path / "ray"), "--ray"])
    for res in (plain, ray_res):
        assert res.exit_code == 1 and "1 of 4 sources failed" in res.output and "broken.avi" in res.output, res.output
    files = sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*") if p.is_file())
    images = [f for f in files if f.parts[0] == "images"]
    assert len(images) == 2 * CLIP_FRAMES // 5 + 2  # 6 frames per clip, photos 0 and 5
    for f in files:
        if f.name != "label_summary.json":
            assert (tmp_path / "plain" / f).read_bytes() == (tmp_path / "ray" / f).read_bytes(), f
    a, b = (json.loads((tmp_path / d / "label_summary.json").read_text()) for d in ("plain", "ray"))
    for k in ("teacher_ms", "data"):
        a.pop(k), b.pop(k)
    # a plain run decodes every image up to --end, so it also counts the unselected unreadable one
    assert (a.pop("skipped"), b.pop("skipped")) == (1, 0)
    assert a == b and a["failed"][0]["source"] == str(media["broken"]) and a["boxes"] > 0


class CrashOnce:
    """A worker function that kills its process the first time it sees a job folder (one named
    ``crash``: every time), then returns the folder's name."""

    def __call__(self, job: str) -> str:
        marker = Path(job) / "seen"
        if Path(job).name == "crash" or not marker.exists():
            marker.touch()
            os._exit(1)
        return Path(job).name


@pytest.mark.ray
@pytest.mark.slow
@loopback
@pytest.mark.usefixtures("local_ray")
def test_worker_crash_is_retried_by_ray(tmp_path: Path) -> None:
    """A worker process that dies is restarted and its job retried by Ray; one that dies every time
    fails that job with the reason, and the pool goes on."""
    import ray

    from det_toolkit.runtime import ray_run

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    jobs = [tmp_path / "once", tmp_path / "crash"]
    for j in jobs:
        j.mkdir()
    plan = ray_run.plan_workers(2, 1, 1)
    results = ray_run.run_jobs(CrashOnce, (), [str(j) for j in jobs], plan)
    assert results[0].error is None and results[0].value == "once"
    assert results[1].value is None and f"{MAX_RETRIES} restarts/retries ran out" in results[1].error


@pytest.mark.ray
@pytest.mark.slow
@loopback
def test_det_run_ray_on_a_two_node_cluster(ray_module: object, media: dict, tmp_path: Path) -> None:
    """A two-node cluster on this machine (ray.cluster_utils.Cluster, one CPU per node): both nodes
    get a worker and the clip folders equal plain det-run's."""
    from ray.cluster_utils import Cluster

    ray_module.shutdown()  # the module's local instance, if a test started it
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray_module.init(address=cluster.address)
        code, out = run_job(media, tmp_path, "--save-txt")
        assert code == 1 and "1 of 4 sources failed" in out, out
        s = check_job(media, tmp_path / "job", nodes=2)
        assert s["ray"]["workers"] == 2 and s["ray"]["threads"] == 1 and len(s["workers"]) == 2
    finally:
        ray_module.shutdown()
        cluster.shutdown()
