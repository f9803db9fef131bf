"""``det-run --ray`` throughput: frames/s over ``--copies`` copies of the street video with 1 and 2 Ray
workers, beside plain single-process det-run looping over the same copies.

Run it inside a network namespace that has only loopback (Ray binds the host's interface and
probes an outside address otherwise; as root)::

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m det_toolkit.benchmarks.ray_bench --frames 200'

The copies are symlinks to one video (distinct names: one output folder each). Every configuration
runs the same det-run settings (CPU, ``--conf 0.25``, annotated video saved unless ``--no-save``):

* ``det-run (1 process)``: :func:`det_toolkit.runtime.run.run_source` on each copy in turn, as a
  loop of plain det-run calls does (one ONNX Runtime session, one thread per physical core);
* ``det-run --ray``: :func:`det_toolkit.runtime.ray_run.run_on_ray` with ``--ray-workers`` 1 and 2
  (threads per worker: the CPUs divided among them) on one local Ray instance started beforehand
  (its start-up time is printed apart; the job time includes starting the actors and loading the
  model in each).

frames/s = frames of all copies / wall seconds of the job; the per-worker column is each worker's
frames per second of its own work. Without ``--weights``, a random-head detector is exported first
(needs torch; cached in the temp dir): the speed of the architecture, not of a trained model.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import click

from det_toolkit.benchmarks.common import VTEST
from det_toolkit.runtime.backends import load_backend
from det_toolkit.runtime.device import usable_cpus
from det_toolkit.runtime.ray_run import loopback_only, run_on_ray
from det_toolkit.runtime.run import RunSettings, run_source
from det_toolkit.runtime.sources import open_source


def single_process(settings: RunSettings, copies: list[Path], out: Path) -> tuple[int, float]:
    """Plain det-run on each copy in turn (one backend, loaded once): ``(frames, wall s)``."""
    t0 = time.perf_counter()
    backend = load_backend(settings.weights, settings.device)
    frames = 0
    for c in copies:
        run_dir = out / c.stem
        run_dir.mkdir(parents=True)
        src = open_source(c)
        try:
            frames += run_source(settings, backend, str(c), src, run_dir, progress=False)["frames"]
        finally:
            src.close()
    return frames, time.perf_counter() - t0


@click.command(context_settings={"show_default": True})
@click.option("--weights", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              show_default="a random-head fasterrcnn_mobilenet_v2_fpn at 256 px", help="Detector .onnx.")
@click.option("--frames", default=None, type=click.IntRange(10), show_default="the whole video (795)",
              help="Frames per copy (det-run --max-frames).")
@click.option("--copies", default=4, type=click.IntRange(1), help="Copies of the video (one source each).")
@click.option("--workers", "worker_counts", default="1,2", help="Ray worker counts to measure, comma separated.")
@click.option("--save/--no-save", default=True, help="Write the annotated videos (det-run's default).")
def main(weights: Path | None, frames: int | None, copies: int, worker_counts: str, save: bool) -> None:
    """Print frames/s of det-run --ray with 1 and 2 workers and of single-process det-run."""
    if not loopback_only():
        raise click.ClickException("run this inside a network namespace with only loopback: unshare -n sh -c "
                                   "'ip link set lo up && .venv/bin/python -m det_toolkit.benchmarks.ray_bench'")
    if not VTEST.is_file():
        raise click.ClickException(f"video not found: {VTEST} (set DET_VIDEO)")
    try:
        counts = [int(n) for n in worker_counts.split(",")]
    except ValueError as e:
        raise click.BadParameter(f"not a comma-separated list of integers: {worker_counts}",
                                 param_hint="--workers") from e
    if weights is None:
        from det_toolkit.benchmarks.artifacts import cached_detector

        weights = cached_detector(256, 8)[1]
    import ray

    cpus = usable_cpus()
    settings = RunSettings(weights, device="cpu", save=save, max_frames=frames)
    tmp = Path(tempfile.mkdtemp(prefix="ray_bench_"))
    try:
        videos = tmp / "videos"
        videos.mkdir()
        specs = []
        for i in range(copies):
            (videos / f"vtest_{i}.avi").symlink_to(VTEST.resolve())
            specs.append(videos / f"vtest_{i}.avi")
        click.echo(f"{copies} copies of {VTEST.name} ({frames or 'all'} frames each), {weights.name}, CPU, "
                   f"{cpus} CPUs, save={save}")
        n, wall = single_process(settings, specs, tmp / "single")
        rows = [("det-run (1 process)", "1 x all cores", n, wall, "")]
        t0 = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        click.echo(f"Ray {ray.__version__} local instance started in {time.perf_counter() - t0:.1f} s")
        try:
            for w in counts:
                job = run_on_ray([str(s) for s in specs], settings, tmp, f"ray{w}", "local", echo=lambda _: None,
                                 workers=w)
                per = ", ".join(f"{s['fps']:.2f}" for s in job["workers"].values())
                rows.append((f"det-run --ray, {w} worker{'s' * (w != 1)}",
                             f"{job['ray']['workers']} x {job['ray']['threads']} threads", job["frames"],
                             job["wall_s"], per))
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    click.echo(f"{'configuration':<28} {'workers x threads':<18} {'frames':>7} {'wall s':>8} {'frames/s':>9}  "
               "per-worker FPS")
    for name, shape, n, wall, per in rows:
        click.echo(f"{name:<28} {shape:<18} {n:>7} {wall:>8.1f} {n / wall:>9.2f}  {per}")


if __name__ == "__main__":
    main()
