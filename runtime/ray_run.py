"""``det-run SOURCES... --ray``: the sources of one det-run shared out to the workers of a Ray cluster,
and the Ray plumbing ``det-label --ray`` (:mod:`det_toolkit.train.label`) uses too.

Everything distributed is Ray's own machinery; nothing here schedules, queues or sends messages:

* Videos, streams (and image sets with ``--track`` or ``--max-frames``): one Ray actor task per
  source (:func:`run_jobs`), run by a :class:`ray.util.ActorPool` of actors that each load the
  artifact once (one ONNX Runtime session with ``threads`` intra-op threads) and run
  :func:`det_toolkit.runtime.run.run_source` into ``PROJECT/NAME/<stream>/``: the same files a plain
  ``det-run`` on that source writes.
* Image folders, globs and list files: Ray Data (:func:`map_rows`): ``from_items`` of the image
  paths -> ``map_batches`` on an actor pool (``ActorPoolStrategy(size=workers)``, ``num_cpus=threads``), one
  :meth:`~det_toolkit.runtime.predictor.Predictor.predict_batch` call per batch; images are decoded
  with OpenCV exactly as det-run does (``read_images`` decodes with PIL: other pixels, no EXIF
  rotation), results come back in input order and the driver writes ``predictions.jsonl`` (and
  ``--save-txt``/``--save-json``) with :class:`~det_toolkit.runtime.writers.RunOutputs`; workers save
  the annotated images.

Workers read the sources and write the outputs themselves, at the paths the driver sees: a cluster
of several machines needs the sources and ``--project`` on a shared folder mounted at the same path
on every node (and det-toolkit installed on every node). Workers change to the driver's working
folder, so relative paths mean the same there.

Faults: a source that cannot be opened or decoded is recorded as failed with its reason and the job
goes on; a worker process that dies is restarted and its task retried by Ray (:data:`MAX_RETRIES`
each for source tasks, Ray Data's own defaults for image batches); a source whose retries run out
is recorded as failed. Each source's ``summary.json`` is written atomically last, so it marks a
finished source: running the same command again (same ``--project``/``--name``, which ``--ray``
never increments, and the same options) skips finished sources and redoes the others (failed or
cut short). ``PROJECT/NAME/summary.json`` is the job summary.

Ray is imported only inside the functions here (the ``[ray]`` extra; :data:`RAY`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

from det_toolkit.runtime.backends import Backend, load_backend
from det_toolkit.runtime.deps import RAY, require_extra
from det_toolkit.runtime.draw import draw_detections, draw_fps
from det_toolkit.runtime.files import atomic_write, check_writable
from det_toolkit.runtime.pipeline import ALL_STAGES
from det_toolkit.runtime.predictor import Detections, Predictor
from det_toolkit.runtime.run import RunSettings, make_predictor, make_tracker, run_source, stream_names
from det_toolkit.runtime.source_types import SourceError, SourceInfo
from det_toolkit.runtime.sources import ImageSource, open_source
from det_toolkit.runtime.video_sources import STREAM_PREFIXES
from det_toolkit.runtime.writers import ImageWriter, RunOutputs

#: The ``[ray]`` extra (``ray[data]``): what ``--ray`` needs.
#: Ray restarts of a dead worker and retries of its task (``max_restarts``, ``max_task_retries``).
MAX_RETRIES = 2
#: Images per Ray Data ``map_batches`` call (for a batched graph: a multiple of its batch, at least one).
DATA_BATCH = 16
#: The forms ``--ray ADDRESS`` takes, for messages.
ADDRESS_FORMS = "auto, local, HOST:PORT or ray://HOST:PORT"
#: ``"command"`` of a job summary written here.
JOB_COMMAND = "det-run --ray"
_ADDRESS = re.compile(r"^(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})$")


class RayJobError(ValueError):
    """A Ray job cannot start: an unreachable cluster, a bad address, too few CPUs for the workers
    asked for, stdin as a source, or an output folder that holds another job."""


def check_address(value: str) -> str:
    """Check a ``--ray`` value: ``auto`` (a running cluster, else a local one), ``local`` (a new local
    instance), ``HOST:PORT`` (a cluster's GCS address) or ``ray://HOST:PORT`` (Ray Client).

    Returns:
        ``value`` unchanged.

    Raises:
        ValueError: any other text (e.g. a source path that ``--ray`` took as its value); the
            message says how to write the option.
    """
    m = _ADDRESS.match(value)
    if value in ("auto", "local") or (m and 0 < int(m.group(4)) < 65536):
        return value
    raise ValueError(f"'{value}' is not a Ray address ({ADDRESS_FORMS}). --ray takes an optional value: "
                     "write it after the sources (det-run a.mp4 b.mp4 --weights W --ray) or as "
                     "--ray=ADDRESS (det-run --ray=10.0.0.5:6379 a.mp4 ...)")


def ray_address_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """click callback of ``--ray [ADDRESS]`` (det-run, det-label): :func:`check_address`; anything
    else is a usage error saying how to write the option."""
    if value is None:
        return None
    try:
        return check_address(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from e


def loopback_only() -> bool:
    """Whether this process's network namespace has no interface but ``lo`` (``unshare -n``, then
    ``ip link set lo up``): there Ray binds 127.0.0.1 and nothing leaves the machine. Read with
    ``socket.if_nameindex`` (the namespace's own list; ``/sys/class/net`` keeps showing the host's)."""
    import socket

    return [name for _, name in socket.if_nameindex()] == ["lo"]


# --- Ray plumbing (shared with det-label --ray) ------------------------------------------------


@dataclass(frozen=True)
class Workers:
    """How a job uses the cluster: ``count`` actors with ``threads`` CPUs (intra-op threads) each.

    Attributes:
        count: actors (workers).
        threads: CPUs reserved per actor (``num_cpus``) and ONNX Runtime/OpenCV threads in it.
        gpus: GPUs reserved per actor (``num_gpus``): 1 for ``--device cuda[:N]``, else 0.
        nodes: alive nodes of the cluster; cpus: their CPUs in total.
    """

    count: int
    threads: int
    gpus: int
    nodes: int
    cpus: int


@dataclass
class JobResult:
    """What one job (a source) gave back from a worker.

    Attributes:
        value: the worker function's return value; ``None`` when it failed.
        error: why it failed (``None``: it did not).
        worker: ``"<node ip>:<pid>"`` of the worker process (``None``: it died).
        seconds: wall time of the job in the worker.
    """

    value: Any = None
    error: str | None = None
    worker: str | None = None
    seconds: float = 0.0


@dataclass
class WorkerStats:
    """Frames and busy seconds of one worker process; :attr:`fps` frames per busy second."""

    frames: int = 0
    busy_s: float = 0.0

    @property
    def fps(self) -> float:
        """Frames per second of work (0 when idle)."""
        return round(self.frames / self.busy_s, 3) if self.busy_s > 0 else 0.0


def _enter_worker(cwd: str, threads: int) -> str:
    """Set up a worker process: the driver's working folder, OpenCV's thread count; returns its id."""
    import ray

    try:
        os.chdir(cwd)
    except OSError as e:
        raise RayJobError(f"worker on {ray.util.get_node_ip_address()}: the driver's working folder {cwd} is "
                          f"missing here ({e}); a cluster needs the same shared folders on every node") from e
    cv2.setNumThreads(threads)
    return f"{ray.util.get_node_ip_address()}:{os.getpid()}"


def _reason(e: BaseException) -> str:
    """An exception as a failure reason: the message of expected input errors, else type and message."""
    return str(e) if isinstance(e, (OSError, ValueError)) and str(e) else f"{type(e).__name__}: {e}"


class _Actor:
    """Ray actor body of :func:`run_jobs`: ``factory(*args)`` built once, then called per job."""

    def __init__(self, factory: Callable[..., Callable[[Any], Any]], args: tuple, cwd: str, threads: int) -> None:
        self.id = _enter_worker(cwd, threads)
        self.fn = factory(*args)

    def run(self, index: int, job: Any) -> tuple[int, JobResult]:
        t0 = time.perf_counter()
        try:
            return index, JobResult(self.fn(job), None, self.id, time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - a bad source is a failed job, not a failed worker
            return index, JobResult(None, _reason(e), self.id, time.perf_counter() - t0)


class _BatchActor:
    """Ray Data ``map_batches`` class of :func:`map_rows`: ``factory(*args)`` built once per actor,
    called with each batch as a list of row dicts; it returns a list of row dicts."""

    def __init__(self, factory: Callable[..., Callable[[list[dict]], list[dict]]], args: tuple, cwd: str,
                 threads: int) -> None:
        self.id = _enter_worker(cwd, threads)
        self.fn = factory(*args)

    def __call__(self, batch: Any) -> Any:  # pandas.DataFrame in and out
        import pandas as pd

        rows = self.fn(batch.to_dict("records"))
        for r in rows:
            r["worker"] = self.id
        return pd.DataFrame(rows)


@contextmanager
def connect(address: str) -> Iterator[None]:
    """Connect to (or start) Ray for ``address`` (:func:`check_address`) for the ``with`` block and
    disconnect after it, unless this process is already connected (then that connection is used as
    it is and kept: tests and notebooks that ran ``ray.init`` themselves).

    Raises:
        det_toolkit.runtime.deps.MissingExtraError: Ray is not installed (names the ``[ray]`` extra).
        RayJobError: Ray cannot start or the cluster cannot be reached (Ray's reason quoted).
    """
    require_extra(RAY, "--ray")
    import logging

    import ray

    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    if address == "local":
        kwargs.update(address="local", include_dashboard=False)
    elif address != "auto":  # auto: ray.init() joins a running cluster, else starts a local one
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError, ...
        raise RayJobError(f"cannot start or reach Ray at '{address}': {type(e).__name__}: {e}") from e
    try:
        yield
    finally:
        ray.shutdown()


def plan_workers(jobs: int, workers: int | None, threads: int | None, device: str = "cpu") -> Workers:
    """Choose how many actors and how many CPUs each so that every actor fits on a node of the
    connected cluster (``ray.nodes()``; actors x threads never exceeds a node's CPUs).

    Defaults: ``workers`` = as many as there are jobs (at most the cluster's CPUs), ``threads`` =
    the most CPUs per actor that still places them all.

    Args:
        jobs: sources (or image batches) to share out (>= 1).
        workers / threads: what ``--ray-workers`` / ``--ray-threads`` asked for (``None``: default).
        device: the run's device; ``cuda``/``cuda:N`` reserves one GPU per actor.

    Raises:
        RayJobError: the cluster cannot place ``workers`` actors of ``threads`` CPUs (or has no GPU
            for each), with the numbers.
    """
    import ray

    cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    gpus = sum(int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive"))
    total = sum(cpus)

    def fits(t: int) -> int:  # actors of t CPUs the nodes can hold
        return sum(c // t for c in cpus)

    if threads is None:
        want = workers or max(1, min(jobs, total))
        threads = max([t for t in range(1, max(cpus, default=1) + 1) if fits(t) >= want], default=1)
    count = workers or max(1, min(jobs, fits(threads)))
    if fits(threads) < count:
        raise RayJobError(f"{count} Ray workers of {threads} CPUs each do not fit the cluster's nodes "
                          f"(CPUs per node: {cpus}); lower --ray-workers or --ray-threads")
    per_gpu = 1 if device.startswith("cuda") else 0
    if per_gpu and gpus < count:
        raise RayJobError(f"--device {device}: {count} Ray workers need a GPU each; the cluster has {gpus}")
    return Workers(count, threads, per_gpu, len(cpus), total)


def run_jobs(factory: Callable[..., Callable[[Any], Any]], args: tuple, jobs: Sequence[Any], workers: Workers,
             on_result: Callable[[int, JobResult], None] | None = None) -> list[JobResult]:
    """Run each job on a pool of Ray actors, each holding ``factory(*args)`` (built once per actor),
    as ``fn(job)``; a free actor takes the next job (:class:`ray.util.ActorPool`).

    ``factory`` and ``args`` must be picklable (a module-level class and plain data); an exception
    ``fn`` raises is the job's ``error``. Dead actors are restarted and their task retried
    :data:`MAX_RETRIES` times by Ray; a job still without a result then is failed.

    Args:
        workers: :func:`plan_workers`' plan (at most ``len(jobs)`` actors are started).
        on_result: called in the driver with ``(job index, result)`` as each job finishes.

    Returns:
        One :class:`JobResult` per job, in ``jobs`` order.
    """
    import ray
    from ray.util.actor_pool import ActorPool

    actor_cls = ray.remote(num_cpus=workers.threads, num_gpus=workers.gpus, max_restarts=MAX_RETRIES,
                           max_task_retries=MAX_RETRIES)(_Actor)
    actors = [actor_cls.remote(factory, args, os.getcwd(), workers.threads)
              for _ in range(min(workers.count, len(jobs)))]
    results: list[JobResult | None] = [None] * len(jobs)
    crashes: list[str] = []
    try:
        pool = ActorPool(actors)
        for i, job in enumerate(jobs):
            pool.submit(lambda a, v: a.run.remote(*v), (i, job))
        while pool.has_next():
            try:
                i, r = pool.get_next_unordered()
            except ray.exceptions.RayError as e:  # the actor died and Ray's retries ran out
                crashes.append(str(e).strip().splitlines()[0][:300])
                continue
            results[i] = r
            if on_result is not None:
                on_result(i, r)
    finally:
        for a in actors:
            ray.kill(a)
    died = (f"its Ray worker died and Ray's {MAX_RETRIES} restarts/retries ran out "
            f"({'; '.join(crashes) or 'no live worker left'})")
    out = []
    for i, r in enumerate(results):
        if r is None:
            r = JobResult(None, died)
            if on_result is not None:
                on_result(i, r)
        out.append(r)
    return out


def map_rows(factory: Callable[..., Callable[[list[dict]], list[dict]]], args: tuple, rows: list[dict],
             workers: Workers, batch_size: int) -> Iterator[dict]:
    """Ray Data: ``from_items(rows)`` -> ``map_batches`` on ``workers.count`` actors, each holding
    ``factory(*args)`` and called with ``batch_size`` rows at a time; the output rows (each with a
    ``worker`` key added) are yielded in input order (``preserve_order``) as they arrive.

    ``factory(*args)(rows) -> rows``: a list of dicts of scalars, strings and bytes in, one out.
    Dead actors are restarted and their batches retried by Ray Data's own defaults (its actor pools
    set ``max_restarts`` and ``max_task_retries`` to unlimited).

    Raises:
        Whatever Ray Data raises when a batch fails for good (``ray.exceptions.RayError``, or the
        function's own exception wrapped by Ray).
    """
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, False
    try:
        ds = ray.data.from_items(rows).map_batches(
            _BatchActor, fn_constructor_args=(factory, args, os.getcwd(), workers.threads), batch_size=batch_size,
            batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=workers.count), num_cpus=workers.threads,
            num_gpus=workers.gpus)
        for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
            yield from batch.to_dict("records")
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


def load_backend_threads(weights: str | Path, device: str, threads: int) -> Backend:
    """:func:`det_toolkit.runtime.backends.load_backend`, with ``threads`` intra-op threads for an
    ONNX Runtime session (other backends as loaded there).

    Raises:
        See :func:`~det_toolkit.runtime.backends.load_backend`.
    """
    if Path(weights).suffix.lower() == ".onnx" and Path(weights).is_file():
        from det_toolkit.runtime.backends.onnx_backend import OnnxBackend, providers_for

        return OnnxBackend(weights, providers_for(device), threads)
    return load_backend(weights, device)


def source_kind(spec: str) -> tuple[str, list[Path] | None]:
    """``("images", files)`` for an image file, folder, glob or list file (:func:`open_source`'s
    sorted list), ``("video", None)`` for a video file, ``("stream", None)`` for a camera index or URL.

    Raises:
        FileNotFoundError, det_toolkit.runtime.source_types.SourceError: the source cannot be opened.
        RayJobError: ``-`` (stdin cannot be shared out to workers).
    """
    if spec == "-":
        raise RayJobError("stdin (-) cannot be shared out to Ray workers: run it without --ray")
    if (spec.isdigit() and not Path(spec).exists()) or spec.lower().startswith(STREAM_PREFIXES):
        return "stream", None
    src = open_source(spec)
    try:
        return ("images", list(src.files)) if isinstance(src, ImageSource) else ("video", None)
    finally:
        src.close()


# --- det-run --ray -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceJob:
    """One source for a worker: ``spec`` as given on the command line, run into the folder ``run_dir``."""

    spec: str
    run_dir: str


class SourceRunner:
    """Worker function of a whole-source job: a plain det-run of ``job.spec`` into ``job.run_dir``
    (emptied first: a retried or resumed source starts over) with :func:`run_source` (no progress
    bar); the folder's ``summary.json`` is written atomically last.

    Args:
        settings: the job's :class:`RunSettings`.
        threads: intra-op threads of the artifact's ONNX Runtime session.

    Call:
        Returns the source's summary. Raises :class:`SourceError` / ``FileNotFoundError`` (cannot
        open), ``ValueError`` (no frame decoded; a frame breaking a limit), ``OSError`` (writing).
    """

    def __init__(self, settings: RunSettings, threads: int) -> None:
        self.settings = settings
        self.backend = load_backend_threads(settings.weights, settings.device, threads)

    def __call__(self, job: SourceJob) -> dict[str, Any]:
        run_dir = Path(job.run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        src = open_source(job.spec)
        try:
            summary = run_source(self.settings, self.backend, job.spec, src, run_dir, progress=False)
        finally:
            src.close()
        if summary["frames"] == 0 and not summary["interrupted"]:  # as det-run: no folder of empty files
            shutil.rmtree(run_dir)
            raise SourceError(f"no frame of {job.spec} could be decoded ({summary['skipped']} unreadable)")
        atomic_write(run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        return summary


class ImageBatchRunner:
    """Ray Data worker function for image sets: decodes a batch of image paths as det-run does
    (:class:`ImageSource`: OpenCV, unreadable ones skipped, truncated JPEGs named), detects them in
    one :meth:`Predictor.predict_batch` call (one by one with SAHI or ``--rect``, whose inputs
    differ per image), saves the annotated images into
    their source's folder with ``settings.save`` and returns one row per input row.

    Args:
        settings: the job's :class:`RunSettings`.
        threads: intra-op threads of the ONNX Runtime session.
        run_dirs: output folder of each image-set source (rows' ``src`` indexes it).

    Call:
        ``rows``: dicts with ``src`` (int), ``index`` (position in the source), ``path``. Returns
        dicts with ``src``, ``index``, ``name`` (file name), ``ok`` (decoded), ``truncated``,
        ``height``, ``width`` (px), ``boxes`` (float32 ``[K, 4]`` xyxy px as bytes), ``scores``
        (float32 bytes), ``labels`` (int64 bytes) and per-image ``ms_<stage>``
        (:data:`~det_toolkit.runtime.pipeline.ALL_STAGES`).
    """

    def __init__(self, settings: RunSettings, threads: int, run_dirs: list[str]) -> None:
        self.settings = settings
        self.backend = load_backend_threads(settings.weights, settings.device, threads)
        self.predictor = make_predictor(settings, self.backend)
        self.writers = [ImageWriter(d) for d in run_dirs]
        self.fps = 0.0

    def __call__(self, rows: list[dict]) -> list[dict]:
        t0 = time.perf_counter()
        src = ImageSource(SourceInfo("batch", False, len(rows)), [Path(r["path"]) for r in rows])
        decoded = {j: (name, img) for j, name, img in src}
        t1 = time.perf_counter()
        imgs = [img for _, img in decoded.values()]
        ms = dict.fromkeys(ALL_STAGES, 0.0)
        if imgs and isinstance(self.predictor, Predictor) and not self.predictor.rect:
            dets = self.predictor.predict_batch(imgs)
            ms.update(self.predictor.times_ms)
        else:  # SAHI (the tiles of an image are its batch); --rect (a batch would pad to its largest image)
            dets = []
            for img in imgs:
                dets.append(self.predictor(img))
                for k, v in self.predictor.times_ms.items():
                    ms[k] += v
        by_j = dict(zip(decoded, dets))
        t2 = time.perf_counter()
        if self.settings.save and imgs:
            self.fps = len(imgs) / max(t2 - t0, 1e-9)
            for j, (name, img) in decoded.items():
                draw_detections(img, by_j[j], self.backend.meta.class_names)
                draw_fps(img, self.fps)
                self.writers[rows[j]["src"]].write(name, img)
        ms["decode"], ms["encode"] = (t1 - t0) * 1e3, (time.perf_counter() - t2) * 1e3
        n = max(len(imgs), 1)
        truncated = set(src.truncated)
        out = []
        for j, r in enumerate(rows):
            name, img = decoded.get(j, (Path(r["path"]).name, None))
            d = by_j.get(j, Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)))
            out.append({"src": r["src"], "index": r["index"], "name": name, "ok": img is not None,
                        "truncated": img is not None and name in truncated,
                        "height": 0 if img is None else img.shape[0], "width": 0 if img is None else img.shape[1],
                        "boxes": d.boxes.astype(np.float32).tobytes(), "scores": d.scores.astype(np.float32).tobytes(),
                        "labels": d.labels.astype(np.int64).tobytes(),
                        **{f"ms_{k}": (v / n if img is not None else 0.0) for k, v in ms.items()}})
        return out


@dataclass
class _ImageSet:
    """Driver-side state of one image-set source while its rows stream in."""

    spec: str
    run_dir: Path
    files: list[Path]
    outputs: RunOutputs | None = None
    frames: int = 0
    skipped: int = 0
    truncated: list[str] = field(default_factory=list)
    ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ALL_STAGES, 0.0))
    t_start: float = 0.0
    per_worker: dict[str, int] = field(default_factory=dict)


def _settings_json(settings: RunSettings) -> dict[str, Any]:
    """``settings`` as JSON-ready data (paths as text)."""
    return json.loads(json.dumps(asdict(settings), default=str))


def _prepare_job_dir(job_dir: Path, settings: RunSettings) -> dict[str, Any] | None:
    """Check ``job_dir`` can hold this job; returns the previous job summary there (``None``: new).

    Raises:
        RayJobError: it holds another kind of run, or a ``--ray`` job with other settings.
    """
    check_writable(job_dir, "--project/--name")
    path = job_dir / "summary.json"
    if not job_dir.exists() or not any(job_dir.iterdir()):
        return None
    try:
        prev = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        prev = None
    if not isinstance(prev, dict) or prev.get("command") != JOB_COMMAND:
        raise RayJobError(f"{job_dir} exists and holds no det-run --ray job (no job summary.json); "
                          "choose another --name (--ray writes into PROJECT/NAME as given, to resume it)")
    if prev.get("settings") != _settings_json(settings):
        changed = sorted(k for k, v in _settings_json(settings).items() if prev.get("settings", {}).get(k) != v)
        raise RayJobError(f"{job_dir} holds a det-run --ray job with other settings ({', '.join(changed)}); "
                          "resume it with the same options or choose another --name")
    return prev


def _finished(run_dir: Path, spec: str) -> dict[str, Any] | None:
    """The summary of a finished source in ``run_dir`` (its ``summary.json`` for ``spec``), else ``None``."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("source") == spec else None


def run_on_ray(specs: Sequence[str], settings: RunSettings, project: Path, name: str, address: str,
               echo: Callable[[str], None] = print, workers: int | None = None,
               threads: int | None = None) -> dict[str, Any]:
    """``det-run SOURCES... --ray``: run every source on Ray workers into ``PROJECT/NAME/<stream>/``
    (:func:`~det_toolkit.runtime.run.stream_names`), what a plain det-run on that source writes, and
    write the job summary ``PROJECT/NAME/summary.json``.

    ``PROJECT/NAME`` is used as given (not incremented): a second run of the same job skips the
    sources whose ``summary.json`` exists and redoes the others (failed or unfinished ones).

    Args:
        specs: the sources (files, folders, globs, list files, camera indices, URLs; not ``-``).
        settings: det-run's options.
        project / name: the job folder ``project / name``.
        address: ``--ray`` value (:func:`check_address`).
        echo: where progress lines go.
        workers / threads: ``--ray-workers`` / ``--ray-threads`` (:func:`plan_workers`).

    Returns:
        The job summary: ``command``, ``address``, ``settings``, ``ray`` (``nodes``, ``cpus``,
        ``workers``, ``threads``), ``sources`` (per source: ``source``, ``folder``, ``kind``,
        ``status`` ``done``/``failed``/``skipped``, ``reason`` when failed, ``frames``, ``fps``,
        ``worker``), ``done``/``failed``/``skipped`` counts, ``frames`` (this run), ``wall_s``,
        ``fps`` (frames / wall s) and ``workers`` (per worker: ``frames``, ``busy_s``, ``fps``).

    Raises:
        ValueError (:class:`RayJobError`, :class:`ClassSpecError`, ...), FileNotFoundError,
        OSError: the job cannot start (bad option, weights, address, output folder); nothing of the
        job is written then.
        det_toolkit.runtime.deps.MissingExtraError: Ray is not installed.
    """
    require_extra(RAY, "det-run --ray")
    check_address(address)
    if "-" in specs:
        raise RayJobError("stdin (-) cannot be shared out to Ray workers: run it without --ray")
    job_dir = project.resolve() / name
    _prepare_job_dir(job_dir, settings)
    # everything that fails on bad options fails here, before Ray starts or anything is written
    settings.check()
    probe = load_backend(settings.weights, settings.device)
    predictor = make_predictor(settings, probe)
    make_tracker(settings, note=echo)
    backend_name, imgsz, names = probe.name, list(predictor.imgsz), list(probe.meta.class_names)
    batch = max(1, int(getattr(probe, "max_batch", 1)))
    del probe, predictor

    folders = stream_names(specs)
    entries: list[dict[str, Any]] = [{"source": s, "folder": f} for s, f in zip(specs, folders)]
    whole: list[int] = []  # one actor task per source
    image_sets: dict[int, _ImageSet] = {}
    for k, (spec, entry) in enumerate(zip(specs, entries)):
        run_dir = job_dir / entry["folder"]
        done = _finished(run_dir, spec)
        try:
            kind, files = source_kind(spec)
        except (FileNotFoundError, SourceError) as e:
            entry.update(kind="unknown", status="failed", reason=str(e), frames=0, fps=0.0, worker=None)
            echo(f"failed: {spec}: {e}")
            continue
        entry["kind"] = kind
        if done is not None:
            entry.update(status="skipped", reason="finished in an earlier run", frames=done.get("frames", 0),
                         fps=done.get("fps", 0.0), worker=None)
        elif kind == "images" and settings.tracker is None and settings.max_frames is None:
            image_sets[k] = _ImageSet(spec, run_dir, files)
        else:  # videos and streams; tracked or --max-frames image sets run whole, exactly as det-run
            whole.append(k)

    job: dict[str, Any] = {"command": JOB_COMMAND, "address": address, "settings": _settings_json(settings),
                           "status": "running", "sources": entries}
    stats: dict[str, WorkerStats] = {}
    t0 = time.perf_counter()
    if not whole and not image_sets:  # everything finished earlier (or failed to open): no Ray needed
        return _finish_job(job, job_dir, entries, {}, time.perf_counter() - t0, echo)
    with connect(address):
        import ray

        batch_size = max(DATA_BATCH, batch) // batch * batch
        n_batches = sum(-(-len(s.files) // batch_size) for s in image_sets.values())
        plan = plan_workers(max(len(whole), n_batches), workers, threads, settings.device)
        job["ray"] = {"nodes": plan.nodes, "cpus": plan.cpus, "workers": plan.count, "threads": plan.threads,
                      "version": ray.__version__}
        # the first file of the job: its settings guard a re-run (written once the cluster can hold it)
        atomic_write(job_dir / "summary.json", (json.dumps(job, indent=2) + "\n").encode())
        echo(f"Ray: {plan.nodes} node(s), {plan.cpus} CPUs; {plan.count} worker(s) x {plan.threads} thread(s); "
             f"{len(whole)} source task(s), {len(image_sets)} image set(s) on Ray Data, "
             f"{sum(e.get('status') == 'skipped' for e in entries)} finished earlier")
        n_total = len(specs)

        def finished(k: int, r: JobResult) -> None:
            e = entries[k]
            if r.error is not None:
                e.update(status="failed", reason=r.error, frames=0, fps=0.0, worker=r.worker)
                echo(f"failed: {e['source']}: {r.error}")
                return
            e.update(status="done", frames=r.value["frames"], fps=r.value["fps"], worker=r.worker)
            w = stats.setdefault(r.worker, WorkerStats())
            w.frames, w.busy_s = w.frames + r.value["frames"], w.busy_s + r.seconds
            echo(f"done [{sum(x.get('status') in ('done', 'failed') for x in entries)}/{n_total}]: {e['source']} "
                 f"-> {e['folder']}/ ({e['frames']} frames, {e['fps']:.1f} FPS on {r.worker})")

        if whole:
            run_jobs(SourceRunner, (settings, plan.threads),
                     [SourceJob(specs[k], str(job_dir / entries[k]["folder"])) for k in whole], plan,
                     lambda i, r: finished(whole[i], r))
        if image_sets:
            _run_image_sets(image_sets, entries, settings, plan, batch_size, backend_name, imgsz, names, stats, echo)
    return _finish_job(job, job_dir, entries, stats, time.perf_counter() - t0, echo)


def _finish_job(job: dict[str, Any], job_dir: Path, entries: list[dict[str, Any]], stats: dict[str, WorkerStats],
                wall: float, echo: Callable[[str], None]) -> dict[str, Any]:
    """Complete the job summary (counts, frames, FPS, per-worker figures), write it, print it."""
    frames = sum(e["frames"] for e in entries if e["status"] == "done")
    job.update(status="finished", done=sum(e["status"] == "done" for e in entries),
               failed=sum(e["status"] == "failed" for e in entries),
               skipped=sum(e["status"] == "skipped" for e in entries), frames=frames, wall_s=round(wall, 3),
               fps=round(frames / wall, 3) if wall > 0 else 0.0,
               workers={w: {"frames": s.frames, "busy_s": round(s.busy_s, 3), "fps": s.fps} for w, s in stats.items()})
    atomic_write(job_dir / "summary.json", (json.dumps(job, indent=2) + "\n").encode())
    echo(f"{job['done']} done, {job['failed']} failed, {job['skipped']} skipped (finished earlier); "
         f"{frames} frames in {wall:.1f} s ({job['fps']:.2f} FPS overall)")
    for w, s in sorted(stats.items()):
        echo(f"  worker {w}: {s.frames} frames, {s.fps:.2f} FPS")
    echo(f"Results saved to {job_dir}")
    return job


def _run_image_sets(sets: dict[int, _ImageSet], entries: list[dict[str, Any]], settings: RunSettings,
                    plan: Workers, batch_size: int, backend_name: str, imgsz: list[int], names: list[str],
                    stats: dict[str, WorkerStats], echo: Callable[[str], None]) -> None:
    """The image-set sources on Ray Data (:func:`map_rows` of :class:`ImageBatchRunner`): rows come
    back in order, so each source's ``predictions.jsonl`` is written as det-run writes it, and its
    ``summary.json`` last; a Ray Data failure fails the sources not finished by then."""
    order = list(sets)
    for s in sets.values():
        shutil.rmtree(s.run_dir, ignore_errors=True)
        s.run_dir.mkdir(parents=True)
    rows = [{"src": i, "index": j, "path": str(f.resolve())} for i, k in enumerate(order)
            for j, f in enumerate(sets[k].files)]
    run_dirs = [str(sets[k].run_dir) for k in order]
    current: _ImageSet | None = None
    t_prev = time.perf_counter()

    def close(k: int, s: _ImageSet) -> None:
        nonlocal t_prev
        s.outputs.close()
        now = time.perf_counter()
        n = max(s.frames, 1)
        summary = {"source": s.spec, "weights": str(settings.weights), "backend": backend_name, "imgsz": imgsz,
                   "frames": s.frames, "skipped": s.skipped, "truncated": s.truncated, "dropped": 0,
                   "interrupted": False, "signal": None, "warmup_frames": 0,
                   "fps": round(s.frames / (now - t_prev), 3) if now > t_prev else 0.0,
                   "mean_ms": {st: round(v / n, 3) for st, v in s.ms.items()}, "track_ids": 0,
                   "ray": {"workers": plan.count, "batch": batch_size, "frames_per_worker": s.per_worker}}
        t_prev = now
        e = entries[k]
        if s.frames == 0:
            shutil.rmtree(s.run_dir, ignore_errors=True)
            e.update(status="failed", reason=f"no image of {s.spec} could be decoded ({s.skipped} unreadable)",
                     frames=0, fps=0.0, worker=None)
            echo(f"failed: {s.spec}: {e['reason']}")
            return
        atomic_write(s.run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        e.update(status="done", frames=s.frames, fps=summary["fps"], worker=", ".join(sorted(s.per_worker)))
        echo(f"done: {s.spec} -> {e['folder']}/ ({s.frames} images, {summary['fps']:.1f} images/s on Ray Data)")

    def open_set(k: int) -> _ImageSet:
        s = sets[k]
        s.outputs = RunOutputs(s.run_dir, SourceInfo(s.run_dir.name, False, len(s.files)), names, track=False,
                               save=False, save_txt=settings.save_txt, save_json=settings.save_json)
        return s

    k_cur = -1
    try:
        for r in map_rows(ImageBatchRunner, (settings, plan.threads, run_dirs), rows, plan, batch_size):
            k = order[r["src"]]
            if k != k_cur:
                if current is not None:
                    close(k_cur, current)
                k_cur, current = k, open_set(k)
            w = stats.setdefault(r["worker"], WorkerStats())
            if not r["ok"]:
                current.skipped += 1
                continue
            dets = Detections(np.frombuffer(r["boxes"], np.float32).reshape(-1, 4),
                              np.frombuffer(r["scores"], np.float32), np.frombuffer(r["labels"], np.int64))
            # no pixels travel back: RunOutputs (save=False) reads only the frame's height and width
            current.outputs.write(int(r["index"]), r["name"], np.empty((r["height"], r["width"], 0), np.uint8),
                                  dets, None, 0.0)
            current.frames += 1
            if r["truncated"]:
                current.truncated.append(r["name"])
            current.per_worker[r["worker"]] = current.per_worker.get(r["worker"], 0) + 1
            for st in ALL_STAGES:
                current.ms[st] += r[f"ms_{st}"]
            w.frames += 1
            w.busy_s += sum(r[f"ms_{st}"] for st in ALL_STAGES) / 1e3
        if current is not None:
            close(k_cur, current)
            current = None
        for k in order:  # sets whose every image was unreadable send rows too; none is left unclosed
            if "status" not in entries[k]:
                s = open_set(k)
                close(k, s)
    except Exception as e:  # noqa: BLE001 - Ray Data gave up: the unfinished sets fail, the job goes on
        if current is not None and current.outputs is not None:
            current.outputs.close()
        for k in order:
            if "status" not in entries[k]:
                entries[k].update(status="failed", reason=f"Ray Data failed: {_reason(e).splitlines()[0][:300]}",
                                  frames=0, fps=0.0, worker=None)
                echo(f"failed: {entries[k]['source']}: {entries[k]['reason']}")
