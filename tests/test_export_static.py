"""Static TensorRT-ready graph (det-export --imgsz H W --batch N), readiness check, FP16 variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner, Result
from onnx import TensorProto, helper, numpy_helper

from det_toolkit.export.cli import main
from det_toolkit.export.fp16 import (
    FP16_CONF,
    FP16_SCORE_TOL,
    POOL_SCOPE,
    dense_nodes,
    export_fp16,
    final_nms_iou,
    to_fp16,
)
from det_toolkit.export.parity import ParityError, ParityReport, check_onnx_parity, match_detections
from det_toolkit.export.trt_check import check_trt_readiness, supported_ops
from det_toolkit.runtime.backends.outputs import pad_batch, run_chunks, split_batched
from det_toolkit.runtime.meta import META_KEY, ModelMeta
from det_toolkit.runtime.preprocess import letterbox, to_input
from det_toolkit.train.checkpoint import make_checkpoint, save_atomic
from det_toolkit.train.models import build_model
from tests.conftest import RACCOON, raccoon_photos

GLOB = str(RACCOON / "images" / "raccoon-1[012].jpg")  # 3 photos: batch 2 + a zero-padded one
H, W, N = 200, 256, 2  # H not a multiple of 32: the graph pads it


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return raccoon_photos("raccoon-1[012].jpg")[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untrained 1-class detector (ImageNet backbone, head seeded); score threshold 0.05 still yields boxes."""
    import torch

    torch.manual_seed(0)  # an unseeded random head put FP16 parity anywhere around its 98% bar
    model = build_model("fasterrcnn_mobilenet_v2_fpn", 1, weights="auto", box_score_thresh=0.05)
    return save_atomic(make_checkpoint(model, ["raccoon"], imgsz=320), tmp_path_factory.mktemp("s") / "best.pt")


@pytest.fixture(scope="module")
def export(ckpt: Path, images: list[np.ndarray]) -> Result:
    return CliRunner().invoke(main, [str(ckpt), "--imgsz", str(H), str(W), "--batch", str(N), "--fp16",
                                     "--no-embedder", "--parity-images", GLOB])


@pytest.fixture(scope="module")
def graph(ckpt: Path, export: Result) -> Path:
    assert export.exit_code == 0, export.output
    return ckpt.with_suffix(".onnx")


def test_static_contract(graph: Path, export: Result) -> None:
    model = onnx.load(str(graph))
    dims = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in [*model.graph.input, *model.graph.output]}
    assert dims == {"images": [N, 3, H, W], "boxes": [N, 100, 4], "scores": [N, 100],
                    "labels": [N, 100], "num_dets": [N]}
    meta = ModelMeta.from_json({p.key: p.value for p in model.metadata_props}[META_KEY])
    assert (meta.batch, meta.imgsz, meta.dynamic_hw, meta.max_det) == (N, (H, W), False, 100)
    assert meta.output_names == ("boxes", "scores", "labels", "num_dets") and meta.extra["simplified"]
    assert "result           PASS" in export.output and "readiness: PASS" in export.output


def test_readiness_of_export(graph: Path) -> None:
    report = check_trt_readiness(graph)
    assert report.ready, report.summary()
    ops = report.op_counts
    assert "If" not in ops and "Loop" not in ops and "NonZero" not in ops
    assert ops["NonMaxSuppression"] == 2 and set(ops) <= supported_ops()
    # 28x32 + 14x16 + 7x8 = 1176 FPN cells at 224x256 (> 1024): one RoiAlign over the stacked levels
    pool = [n.op_type for n in onnx.load(str(graph)).graph.node if POOL_SCOPE in n.name]
    assert ops["RoiAlign"] == 1 and pool.count("MatMul") == 0


def test_unsimplified_static_graph_is_tensorrt_ready(ckpt: Path, images: list[np.ndarray], tmp_path: Path) -> None:
    """Without onnxslim (kept when onnxslim's graph fails parity, as it does for the default model
    at 416 px on real photos) every shape of the static graph is still known: no Expand or Pad
    whose shape the legacy exporter computes at run time."""
    from det_toolkit.export.onnx_export import export_onnx

    out = export_onnx(ckpt, tmp_path / "raw.onnx", imgsz=(H, W), static=True, batch=N, simplify=False,
                      parity_images=images, echo=lambda _: None)
    model = onnx.load(str(out))
    assert not ModelMeta.from_json({p.key: p.value for p in model.metadata_props}[META_KEY]).extra["simplified"]
    assert check_trt_readiness(model).ready


def test_batched_outputs_and_padding(ckpt: Path, graph: Path, images: list[np.ndarray]) -> None:
    sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    xs = np.concatenate([to_input(letterbox(im[:, :, ::-1], (H, W))[0]) for im in images])
    def run(b: np.ndarray) -> list[np.ndarray]:
        return sess.run(None, {"images": b})

    boxes, scores, labels, num_dets = run(xs[:N])
    assert labels.dtype == np.int64 and num_dets.dtype == np.int64 and (num_dets > 0).all()
    for i, k in enumerate(num_dets):  # padding rows are zero, valid rows sorted by score
        assert not boxes[i, k:].any() and not scores[i, k:].any()
        assert (np.diff(scores[i, :k]) <= 0).all() and (scores[i, :k] > 0.05).all()
    per_image = run_chunks(run, xs, N)  # 3 images: chunk 2 is one image + one zero image
    assert len(per_image) == 3
    np.testing.assert_allclose(per_image[0][0], boxes[0, :num_dets[0]])
    alone = split_batched(*run(pad_batch(xs[2:], N)), n=1)[0]
    np.testing.assert_allclose(per_image[2][1], alone[1])


def test_parity_with_torch(export: Result) -> None:
    """The export's own check: torch per image vs the batched graph (3 images: one padded chunk)."""
    lines = dict(line.strip().split(None, 1) for line in export.output.splitlines()
                 if line.startswith("  ") and len(line.split()) > 1 and line.split()[0] in ("matched", "images"))
    assert lines["images"] == "3" and float(lines["matched"].split("(")[1].split("%")[0]) >= 99.0


def test_fp16_variant(graph: Path, export: Result) -> None:
    path = graph.with_name("best_fp16.onnx")
    model = onnx.load(str(path))
    io = [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]]
    assert io[0] == TensorProto.FLOAT and TensorProto.FLOAT16 not in io
    assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    weight = {i.name: i.data_type for i in model.graph.initializer}
    dtype = {n.name: weight.get(n.input[1]) for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    assert dtype[first_conv] == TensorProto.FLOAT  # the stem sees raw pixels: float32
    assert dtype["/box_head/fc7/Gemm"] == TensorProto.FLOAT16  # backbone, FPN, box head: float16
    # 1176 FPN cells: RoiAlign pools (float32), fc6 reads it in float16 (the folded form: tests/test_roi_pool.py)
    assert dtype["/box_head/fc6/Gemm"] == TensorProto.FLOAT16 and "box_roi_pool.fold.weight" not in weight
    assert sum(d == TensorProto.FLOAT16 for d in dtype.values()) > 40
    for name in ("/box_predictor/cls_score/Gemm", "/box_predictor/bbox_pred/Gemm", "/head/cls_logits/Conv",
                 "/head/bbox_pred/Conv"):  # prediction layers (logits, deltas before Exp): float32
        assert dtype[name] == TensorProto.FLOAT, name
    meta = ModelMeta.from_json({p.key: p.value for p in model.metadata_props}[META_KEY])
    parity = meta.extra["fp16_parity"]
    assert meta.extra["precision"] == "fp16" and parity["match_rate"] >= 0.98 and parity["n_ref_boxes"] > 100
    assert parity["criterion"].startswith(f"boxes scoring >= {FP16_CONF:g}") and 0 < parity["strict_match_rate"] <= 1
    assert "FP16 vs FP32 graph" in export.output and "strict:" in export.output and f"fp16: {path}" in export.output
    assert check_trt_readiness(model).ready
    dense = dense_nodes(onnx.load(str(graph)))  # RoI pooling float32, as RoiAlign was; its reader float16
    assert "/box_head/fc7/Gemm" in dense and not any(POOL_SCOPE in n for n in dense)


def _coarsen(model: onnx.ModelProto, mantissa_bits: int) -> onnx.ModelProto:
    """A copy of ``model`` whose float16 weights keep only ``mantissa_bits`` of float16's 10 mantissa
    bits (rounded half up): 7 is bfloat16's precision, 3 FP8 E4M3's."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    drop = 10 - mantissa_bits
    for init in out.graph.initializer:
        if init.data_type == TensorProto.FLOAT16:
            bits = numpy_helper.to_array(init).astype(np.float16).view(np.uint16).astype(np.uint32)
            bits = (bits + np.uint32(1 << (drop - 1))) & np.uint32(0xFFFF ^ ((1 << drop) - 1))
            init.CopyFrom(numpy_helper.from_array(bits.astype(np.uint16).view(np.float16), init.name))
    return out


def test_fp16_parity_catches_a_broken_graph(graph: Path, images: list[np.ndarray]) -> None:
    """The FP16 criterion passes the real FP16 graph and fails one whose weights lost more precision
    (3 mantissa bits, FP8 E4M3's; on the trained raccoon model already 7 bits, bfloat16's, fail)."""
    fp32, fp16 = onnx.load(str(graph)), onnx.load(str(graph.with_name("best_fp16.onnx")))
    assert final_nms_iou(fp32) == pytest.approx(0.5)
    def check(test: onnx.ModelProto) -> ParityReport:
        return check_onnx_parity(fp32, test, images, iou_thr=0.9, score_tol=FP16_SCORE_TOL,
                                 min_match=0.98, min_score=FP16_CONF, swap_iou=0.5)

    assert check(fp16).passed
    broken = check(_coarsen(fp16, 3))
    assert not broken.passed and broken.match_rate < 0.9, broken.summary()


def test_fp16_float32_region_is_float32(graph: Path, images: list[np.ndarray]) -> None:
    """With no node converted, the converter's output must compute exactly the fp32 graph: no lossy
    Cast(float16) -> Cast(float) pair left between float32 nodes (onnxconverter-common 1.16 leaves
    one around every blocked node; det_toolkit.export.fp16.remove_roundtrip_casts removes them)."""
    fp32 = onnx.load(str(graph))
    same = to_fp16(fp32, dense=set())
    assert not [n for n in same.graph.node if n.op_type == "Cast"
                and next(a.i for a in n.attribute if a.name == "to") == TensorProto.FLOAT16]
    x = np.concatenate([to_input(letterbox(im[:, :, ::-1], (H, W))[0]) for im in images[:N]])
    def run(m: onnx.ModelProto) -> list[np.ndarray]:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})

    for a, b in zip(run(fp32), run(same)):
        np.testing.assert_array_equal(a, b)


def test_match_detections_nms_swap() -> None:
    """A leftover pair overlapping more than the NMS threshold with scores within the tolerance is
    an NMS swap (matched); lower overlap or a larger score gap is not."""
    ref = (np.array([[0, 0, 100, 100]], np.float32), np.array([0.9], np.float32), np.array([0]))
    def test(box: list[float], score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.array([box], np.float32), np.array([score], np.float32), np.array([0])

    swapped = test([0, 0, 100, 70], 0.91)  # IoU 0.7
    assert match_detections(ref, swapped, 0.9, 0.03, 0.05)[2] == []
    assert match_detections(ref, swapped, 0.9, 0.03, 0.05, swap_iou=0.5)[2] == [pytest.approx(0.7)]
    assert match_detections(ref, test([0, 0, 100, 40], 0.9), 0.9, 0.03, 0.05, swap_iou=0.5)[2] == []
    assert match_detections(ref, test([0, 0, 100, 70], 0.8), 0.9, 0.03, 0.05, swap_iou=0.5)[2] == []


def test_fp16_gate_refuses(graph: Path, images: list[np.ndarray], tmp_path: Path) -> None:
    out = tmp_path / "strict_fp16.onnx"
    with pytest.raises(ParityError, match="was not written"):
        export_fp16(graph, out, images=images[:1], min_match=1.01)
    assert not out.exists()


def _model(nodes: list, inputs: list, outputs: list, inits: list | None = None) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits or [])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_readiness_reports_each_problem() -> None:
    vi = helper.make_tensor_value_info
    boxes, scores = vi("boxes", TensorProto.FLOAT, [1, 6000, 4]), vi("scores", TensorProto.FLOAT, [1, 1, 6000])
    k_dyn = vi("k", TensorProto.INT64, [1])
    big_k = helper.make_tensor("big_k", TensorProto.INT64, [1], [4000])
    nms_then = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["sel"], name="nms_in_if")],
        "then", [], [vi("sel", TensorProto.INT64, [None, 3])])
    cond = vi("cond", TensorProto.BOOL, [])
    nodes = [
        helper.make_node("TopK", ["x", "k"], ["v1", "i1"], name="topk_dynamic"),
        helper.make_node("TopK", ["x", "big_k"], ["v2", "i2"], name="topk_big"),
        helper.make_node("Unique", ["x"], ["u"], name="unique"),
        helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["s2"], name="nms_many"),
        helper.make_node("If", ["cond"], ["sel"], name="branch", then_branch=nms_then, else_branch=nms_then),
    ]
    m = _model(nodes, [vi("x", TensorProto.FLOAT, ["n"]), k_dyn, boxes, scores, cond],
               [vi("u", TensorProto.FLOAT, None), vi("v1", TensorProto.FLOAT, None),
                vi("v2", TensorProto.FLOAT, None), vi("s2", TensorProto.INT64, None),
                vi("sel", TensorProto.INT64, None)], [big_k])
    report = check_trt_readiness(m)
    text = report.summary()
    assert not report.ready and "FAIL" in text
    for needle in ("TopK 'topk_dynamic': K is not a constant", "TopK 'topk_big': K=4000 >= 3840",
                   "Unique 'unique': not supported", "NonMaxSuppression 'nms_many': 6000 boxes per image > 5000",
                   "NonMaxSuppression 'nms_in_if': inside an If/Loop/Scan body",
                   "graph input 'x': shape [None] is not static"):
        assert needle in text, text


def test_cli_static_errors(ckpt: Path) -> None:
    result = CliRunner().invoke(main, [str(ckpt), "--int8"])  # no dataset to calibrate on: before any export work
    assert result.exit_code == 1 and "pass --calib DIR" in result.output
    result = CliRunner().invoke(main, [str(ckpt), "--batch", "0"])
    assert result.exit_code == 2


def test_supported_ops_list_has_source() -> None:
    path = Path(__file__).resolve().parents[1] / "export" / "data" / "trt_ops_10.15.txt"
    head = path.read_text().splitlines()[:3]
    assert any("github.com/onnx/onnx-tensorrt" in line for line in head)
    ops = supported_ops("10.15")
    assert {"NonMaxSuppression", "RoiAlign", "TopK", "Conv"} <= ops and "Unique" not in ops
    with pytest.raises(FileNotFoundError, match="no supported-operator list"):
        supported_ops("7.0")
    listed = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(ops) == len(listed) == 158  # one op per line, none twice, none lost
    assert "AveragePool" in ops and not any(" " in op for op in ops)  # restriction notes are not op names
    # every name is a real ONNX operator (a typo in the copied list would silently fail a graph),
    # except three long-deprecated experimental ops the parser still accepts
    assert sorted(op for op in ops if not onnx.defs.has(op)) == ["ImageScaler", "ParametricSoftplus", "ScaledTanh"]
