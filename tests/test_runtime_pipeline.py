"""det-run's threaded pipeline: Ctrl-C keeps a playable video, corrupt/truncated videos lose only bad
frames, stdin image streams, --live frame dropping, --save-txt/--save-json."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from det_toolkit.benchmarks.common import read_frames
from det_toolkit.runtime.image_bytes import split_images

REPO = Path(__file__).resolve().parents[1]
VIDEO = Path(__file__).resolve().parents[2] / "shared/videos/vtest.avi"


@pytest.fixture(scope="module")
def det() -> Path:
    """A random-head detector exported to ONNX at 256 px (<= 8 boxes per image)."""
    pytest.importorskip("torch")
    from det_toolkit.benchmarks.artifacts import cached_detector

    return cached_detector(256, 8)[1]


def det_run(args: list[str], cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "det_toolkit.runtime.cli", *args], cwd=cwd, input=stdin,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=300, check=False)


def video_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} is not a readable video"
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        out.append(f)


def run_outputs(run: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((run / "summary.json").read_text())
    return summary, [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]


def start_det_run_on_video(det: Path, tmp_path: Path, name: str) -> subprocess.Popen:
    """det-run on vtest.avi in a child process; returns once the frame loop has written a frame."""
    proc = subprocess.Popen([sys.executable, "-m", "det_toolkit.runtime.cli", str(VIDEO), "--weights", str(det),
                             "--project", str(tmp_path), "--name", name], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            # a runner started in the background (`cmd &`) ignores SIGINT and its
                            # children inherit that: give det-run the default disposition
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    jsonl = tmp_path / name / "predictions.jsonl"
    # wait for the frame loop itself (written frames), not just the output files: under load the
    # model load + warm-up can take longer than a fixed delay
    while not (jsonl.exists() and jsonl.stat().st_size > 0) and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode()[-2000:])
        time.sleep(0.2)
    time.sleep(1)
    return proc


@pytest.mark.skipif(not VIDEO.is_file(), reason=f"{VIDEO} absent")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_stop_signal_leaves_a_playable_video(det: Path, tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C, SIGTERM (timeout, docker stop, systemd) or SIGHUP mid-video: exit 128 + signal, and the
    video and predictions.jsonl hold exactly the frames processed (all written)."""
    proc = start_det_run_on_video(det, tmp_path, "int")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err.decode()[-2000:]
    assert f"interrupted ({sig.name})".encode() in err
    summary, lines = run_outputs(tmp_path / "int")
    assert summary["interrupted"] and summary["signal"] == sig.name and 0 < summary["frames"] < 795
    assert len(lines) == summary["frames"] == len(video_frames(tmp_path / "int/vtest.mp4"))
    assert [r["frame"] for r in lines] == list(range(len(lines)))


@pytest.mark.skipif(not VIDEO.is_file(), reason=f"{VIDEO} absent")
def test_sigkill_leaves_complete_json_lines(det: Path, tmp_path: Path) -> None:
    """SIGKILL cannot be handled: every line of predictions.jsonl on disk is still a complete frame,
    in order (lines are flushed as frames complete, not on close)."""
    proc = start_det_run_on_video(det, tmp_path, "kill")
    time.sleep(2)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    text = (tmp_path / "kill/predictions.jsonl").read_text()
    lines = [json.loads(x) for x in text.splitlines()]  # raises on a torn line
    assert text.endswith("\n") and len(lines) >= 2
    assert [r["frame"] for r in lines] == list(range(len(lines)))
    assert not (tmp_path / "kill/summary.json").exists()


def make_broken_mjpeg(path: Path, n: int = 30, bad: tuple[int, ...] = (5, 12, 13), cut_at: int = 27) -> list[int]:
    """An MJPEG AVI whose frame ``i`` has grey level ``8 * i + 4``; frames ``bad`` get their JPEG headers
    wiped, the file is cut inside frame ``cut_at``. Returns the frames that still decode on their own."""
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (160, 120))
    for i in range(n):
        vw.write(np.full((120, 160, 3), 8 * i + 4, np.uint8))
    vw.release()
    data = bytearray(path.read_bytes())
    starts, s = [], data.find(b"\xff\xd8\xff")
    while s >= 0:
        starts.append(s)
        s = data.find(b"\xff\xd8\xff", s + 3)
    assert len(starts) == n
    starts.append(len(data))
    for k in bad:  # SOI, DQT, SOF, DHT: gone
        wipe = (starts[k + 1] - starts[k]) // 2
        data[starts[k]:starts[k] + wipe] = bytes(wipe)
    data = data[:(starts[cut_at] + starts[cut_at + 1]) // 2]
    path.write_bytes(bytes(data))
    good = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in split_images(io.BytesIO(bytes(data)))]
    return [int(np.median(g)) // 8 for g in good if g is not None]


def test_corrupt_and_truncated_video_keeps_every_good_frame(det: Path, tmp_path: Path) -> None:
    good = make_broken_mjpeg(tmp_path / "broken.avi")
    assert good == [i for i in range(27) if i not in (5, 12, 13)]
    # --conf 1 keeps no boxes, so the output frames can be identified by their background level
    res = det_run(["broken.avi", "--weights", str(det), "--conf", "1", "--project", ".", "--name", "b",
                   "--save-txt"], tmp_path)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    summary, lines = run_outputs(tmp_path / "b")
    frames = video_frames(tmp_path / "b/broken.mp4")
    assert summary["frames"] == len(lines) == len(frames) and summary["skipped"] >= 3
    ids = [int(np.median(f[40:, 40:])) // 8 for f in frames]
    assert set(good) <= set(ids), f"good frames missing from the output: {sorted(set(good) - set(ids))}"
    assert ids == sorted(ids)
    assert len(list((tmp_path / "b/labels").glob("broken_*.txt"))) == len(frames)


def test_stdin_image_stream(det: Path, tmp_path: Path) -> None:
    """``-`` reads concatenated JPEG and PNG images; an undecodable one is skipped and counted."""
    frames = read_frames(VIDEO, 5, every=20) if VIDEO.is_file() else [
        np.random.default_rng(i).integers(0, 255, (240, 320, 3), np.uint8) for i in range(5)]
    parts = [cv2.imencode(".png" if i % 2 else ".jpg", f)[1].tobytes() for i, f in enumerate(frames)]
    no_image = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"  # SOI APP0 EOI
    blob = b"".join([parts[0], parts[1], b"junk between images", no_image, parts[2], parts[3], parts[4]])
    res = det_run(["-", "--weights", str(det), "--project", ".", "--name", "p", "--save-json"], tmp_path, blob)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    summary, lines = run_outputs(tmp_path / "p")
    assert summary["frames"] == len(lines) == 5 and summary["dropped"] == 0 and summary["skipped"] == 1
    out = video_frames(tmp_path / "p/stdin.mp4")
    assert len(out) == 5 and out[0].shape == frames[0].shape
    coco = json.loads((tmp_path / "p/predictions.json").read_text())
    # image ids are stream positions: 2 was the undecodable image
    assert {r["image_id"] for r in coco} <= {0, 1, 3, 4, 5} and all(len(r["bbox"]) == 4 for r in coco)


def test_live_keeps_only_the_newest_frame(det: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"MJPG"), 25, (320, 240))
    for i in range(60):
        vw.write(np.full((240, 320, 3), 4 * i, np.uint8))
    vw.release()
    res = det_run([str(clip), "--weights", str(det), "--live", "--no-save", "--project", ".", "--name", "l"],
                  tmp_path)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    summary, lines = run_outputs(tmp_path / "l")
    # decoding (~1 ms) outpaces detection (~100+ ms): frames are replaced, never queued up
    assert summary["dropped"] > 0 and summary["frames"] + summary["dropped"] <= 60
    assert summary["frames"] == len(lines) >= 1
    assert [r["frame"] for r in lines] == sorted(r["frame"] for r in lines)


class FlakyCapture:
    """A fake cv2.VideoCapture: each connection yields 3 frames, then reads fail (the stream drops);
    the 3rd connection attempt fails, later ones work again."""

    connections = 0

    def __init__(self, target: object) -> None:
        FlakyCapture.connections += 1
        self.n, self.ok = 0, FlakyCapture.connections != 3

    def isOpened(self) -> bool:
        return self.ok

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FRAME_WIDTH: 64, cv2.CAP_PROP_FRAME_HEIGHT: 48, cv2.CAP_PROP_FPS: 25}.get(prop, 0)

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.n += 1
        return (True, np.full((48, 64, 3), FlakyCapture.connections, np.uint8)) if self.n <= 3 else (False, None)

    def release(self) -> None:
        pass


def test_stream_reconnects_with_backoff(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from det_toolkit.runtime import sources, video_sources

    monkeypatch.setattr(video_sources.cv2, "VideoCapture", FlakyCapture)
    monkeypatch.setattr(video_sources, "RECONNECT_BACKOFF_S", (0.01, 0.02))
    monkeypatch.setattr(video_sources, "MAX_RECONNECTS", 3)
    FlakyCapture.connections = 0
    src = sources.open_source("rtsp://camera.local/stream")
    assert src.info.live and src.info.stem == "camera.local_stream" and (src.info.width, src.info.height) == (64, 48)
    frames = []
    for _, _, f in src:
        frames.append(int(f[0, 0, 0]))
        if len(frames) == 9:
            src.close()
    # connection 1: 3 frames; drop -> attempt 1 (connection 2) ok: 3 frames; drop -> attempt 1 fails
    # (connection 3), attempt 2 (connection 4) ok: 3 frames, then closed
    assert frames == [1, 1, 1, 2, 2, 2, 4, 4, 4] and src.reconnects == 2
    assert sum("reconnecting in" in r.message for r in caplog.records) == 3
    assert sum(r.message.endswith("reconnected") for r in caplog.records) == 2


class MjpegServer:
    """A real HTTP MJPEG stream (``multipart/x-mixed-replace``, as IP cameras serve) on localhost.

    Connection ``c`` sends ``frames`` JPEG frames of value ``40 * c``, then closes: the stream
    drops and the client must reconnect.
    """

    def __init__(self, frames: int, interval_s: float = 0.02) -> None:
        import http.server
        import socketserver
        import threading

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.connections += 1
                jpg = cv2.imencode(".jpg", np.full((48, 64, 3), 40 * server.connections, np.uint8))[1].tobytes()
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for _ in range(frames):
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(jpg) + jpg + b"\r\n")
                        self.wfile.flush()
                        time.sleep(interval_s)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.connections = 0
        self.httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_real_http_stream_drops_and_reconnects(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """OpenCV's FFmpeg reads a real MJPEG-over-HTTP stream; when the server ends the connection the
    source reconnects and carries on with the next connection's frames."""
    from det_toolkit.runtime import sources, video_sources

    monkeypatch.setattr(video_sources, "RECONNECT_BACKOFF_S", (0.05,))
    server = MjpegServer(frames=4)
    try:
        src = sources.open_source(server.url)
        assert src.info.live and (src.info.width, src.info.height) == (64, 48)
        values = []
        for _, _, frame in src:
            values.append(int(np.round(frame.mean() / 40)))  # JPEG rounding: 40 * connection
            if len(values) == 10:
                src.close()
    finally:
        server.close()
    assert values == [1] * 4 + [2] * 4 + [3] * 2 and src.reconnects == 2
    assert sum(r.message.endswith("reconnected") for r in caplog.records) == 2


def test_cli_on_a_real_http_stream(det: Path, tmp_path: Path) -> None:
    server = MjpegServer(frames=100, interval_s=0.04)
    try:
        res = det_run([server.url, "--weights", str(det), "--max-frames", "3", "--save-json", "--project", ".",
                       "--name", "h"], tmp_path)
    finally:
        server.close()
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    summary, lines = run_outputs(tmp_path / "h")
    assert summary["frames"] == len(lines) == 3
    assert len(video_frames(next((tmp_path / "h").glob("*.mp4")))) == 3


def test_unopenable_camera_is_a_clear_error(det: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from det_toolkit.runtime.cli import main

    res = CliRunner().invoke(main, ["7", "--weights", str(det), "--project", str(tmp_path / "r")])
    assert res.exit_code != 0 and "cannot open camera 7" in res.output
    assert not (tmp_path / "r").exists()


def test_show_without_display_says_so(det: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from det_toolkit.runtime.cli import main

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.full((64, 96, 3), 90, np.uint8))
    res = CliRunner().invoke(main, [str(img), "--weights", str(det), "--show", "--no-save",
                                    "--project", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "--show ignored: no display found" in res.output
