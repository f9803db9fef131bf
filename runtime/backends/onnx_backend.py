"""ONNX Runtime backend: the edge path (needs only ``onnxruntime``, no torch, no ``onnx``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from det_toolkit.runtime.backends.base import Backend, BackendError, RawDetections
from det_toolkit.runtime.backends.outputs import run_chunks
from det_toolkit.runtime.deps import cuda_provider_problem
from det_toolkit.runtime.device import parse_device, usable_cpus
from det_toolkit.runtime.meta import META_KEY, MetadataError, ModelMeta

log = logging.getLogger(__name__)
CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"
#: ``InferenceSession(providers=...)``: provider names, or ``(name, options)`` pairs.
Providers = list[str | tuple[str, dict[str, str]]]


def physical_cores() -> int:
    """Physical CPU cores usable by this process (``/proc/cpuinfo`` pairs, capped by affinity).

    Falls back to the logical CPU count where ``/proc/cpuinfo`` is unavailable.
    """
    usable = usable_cpus()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return usable
    cores, phys = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            cores.add((phys, value.strip()))
    return max(1, min(len(cores) or usable, usable))


def providers_for(device: str = "auto") -> Providers:
    """ONNX Runtime execution providers for ``device`` (:func:`det_toolkit.runtime.device.parse_device`:
    ``auto``, ``cpu``, ``cuda`` or ``cuda:N``), in priority order, for ``InferenceSession(providers=...)``.

    ``auto`` picks CUDA when ONNX Runtime offers it, else CPU; ``cuda:N`` passes ``device_id=N`` in
    the CUDA provider's options; CPU always comes last as the fallback for nodes CUDA does not run.

    Raises:
        BackendError: an unknown device, or ``cuda``/``cuda:N`` without a CUDA provider; the
            message says why (e.g. the CPU ``onnxruntime`` package shadowing ``onnxruntime-gpu``)
            and the command that fixes it (:func:`det_toolkit.runtime.deps.cuda_provider_problem`).
    """
    try:
        kind, index = parse_device(device)
    except ValueError as e:
        raise BackendError(str(e)) from e
    if kind == "cpu":
        return [CPU_EP]
    available = ort.get_available_providers()
    if CUDA_EP in available:
        return [CUDA_EP if index is None else (CUDA_EP, {"device_id": str(index)}), CPU_EP]
    if kind == "auto":
        return [CPU_EP]
    raise BackendError(f"--device {device}: {cuda_provider_problem(available)}; or use --device cpu")


def create_session(path: str | Path, providers: Providers | None = None,
                   threads: int | None = None) -> ort.InferenceSession:
    """Open ``path`` with tuned session options (all graph optimisations, ``threads`` intra-op
    threads, default one per physical core, without spin-waiting, sequential execution).

    Args:
        threads: intra-op threads (>= 1); ``None``: :func:`physical_cores`. Several sessions
            sharing a machine (e.g. ``det-run --ray`` workers) set it so their sum fits its CPUs.

    Raises:
        ValueError: ``threads`` < 1.
        FileNotFoundError: no such file.
        BackendError: the file is not a loadable ONNX model.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"ONNX Runtime intra-op threads must be >= 1, got {threads}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or physical_cores()
    opts.inter_op_num_threads = 1
    # idle workers sleep instead of spinning: detector, embedder and tracker alternate on the same
    # cores, and spinning threads of one session slowed the others (measured ~1.5x per frame)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: shape-inference warnings are noise here
    providers = providers or providers_for()
    try:
        sess = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:
        raise BackendError(f"{path}: not a valid ONNX model ({type(e).__name__}: {e})") from e
    asked = {p if isinstance(p, str) else p[0] for p in providers}
    if CUDA_EP in asked and CUDA_EP not in sess.get_providers():
        # ONNX Runtime falls back to the CPU silently when the CUDA/cuDNN libraries fail to load
        log.warning("%s: the CUDA execution provider did not start (CUDA/cuDNN libraries not found or "
                    "incompatible): running on the CPU. See ONNX Runtime's CUDA requirements for "
                    "onnxruntime-gpu %s", path, ort.__version__)
    return sess


def session_metadata(sess: ort.InferenceSession, key: str, path: str | Path) -> str:
    """The ``metadata_props`` value ``key`` of an open session.

    Raises:
        MetadataError: the model has no such entry.
    """
    value = sess.get_modelmeta().custom_metadata_map.get(key)
    if value is None:
        raise MetadataError(f"{path}: ONNX model has no '{key}' metadata, so it was not written by "
                            "det-export; export it with `det-export WEIGHTS`")
    return value


class OnnxBackend(Backend):
    """A det-toolkit ONNX detector run by ONNX Runtime.

    Two graph kinds (see :mod:`det_toolkit.runtime.meta`): the dynamic single-image graph (outputs ``[K, ...]``;
    images run one per forward pass) and the static graph of ``det-export --static/--batch N``
    (``meta.batch == N >= 1``, a ``num_dets`` int64 ``[N]`` output, the others padded to
    ``max_det``; images run ``N`` per forward pass, a short last chunk padded with blank images
    whose results are dropped).

    Args:
        path: ``.onnx`` file written by ``det-export`` (graph contract in :mod:`det_toolkit.runtime.meta`).
        providers: execution providers in priority order; default :func:`providers_for` ``("auto")``.
        threads: intra-op threads of the session (:func:`create_session`); ``None``: one per
            physical core.

    Attributes:
        max_batch: images per forward pass (``meta.batch``).

    Raises:
        FileNotFoundError: no such file.
        BackendError: not a valid ONNX model, graph names differ from the metadata, or a batched
            graph without a ``num_dets`` output.
        MetadataError: the :data:`det_toolkit.runtime.meta.META_KEY` metadata is missing or corrupt.
        ValueError: ``threads`` < 1.
    """

    def __init__(self, path: str | Path, providers: Providers | None = None, threads: int | None = None) -> None:
        self.path = Path(path)
        self._sess = create_session(self.path, providers, threads)
        self.meta = ModelMeta.from_json(session_metadata(self._sess, META_KEY, self.path),
                                        str(self.path))
        inputs = [i.name for i in self._sess.get_inputs()]
        outputs = [o.name for o in self._sess.get_outputs()]
        if inputs != [self.meta.input_name] or not set(self.meta.output_names) <= set(outputs):
            raise BackendError(f"{self.path}: graph inputs {inputs} / outputs {outputs} do not "
                               f"match its metadata ({self.meta.input_name!r} -> "
                               f"{list(self.meta.output_names)})")
        self.max_batch = int(self.meta.batch)
        self._padded = "num_dets" in self.meta.output_names
        if self.max_batch > 1 and not self._padded:
            raise BackendError(f"{self.path}: batched graph (batch={self.max_batch}) without the "
                               f"'num_dets' output (outputs: {outputs}); re-export it with det-export")
        self._outputs = [*self.meta.output_names[:3], *(["num_dets"] if self._padded else [])]
        self.name = f"onnxruntime[{self._sess.get_providers()[0]}]"

    def infer(self, x: np.ndarray) -> list[RawDetections]:
        """See :meth:`Backend.infer`; ``max_batch`` images per ONNX Runtime call."""
        name, n = self.meta.input_name, self.max_batch
        if not self._padded:
            return [tuple(self._sess.run(self._outputs, {name: x[i:i + 1]})) for i in range(len(x))]
        return run_chunks(lambda batch: self._sess.run(self._outputs, {name: batch}), x, n)
