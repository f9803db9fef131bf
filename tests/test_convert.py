"""det-convert on real data: raccoon (VOC) and Penn-Fudan round trips through every format keep every
box, class and split; the data report matches the source's counts; the Penn-Fudan reader reads boxes
as the VOC reader does and cross-checks them against the instance masks; broken records are reported
with their file and record and the rest is kept; the command runs without torch.

Penn-Fudan is read from ../shared (never copied into the repository); doctored copies live in tmp
folders, their images and masks symlinked. Conversions in tests use ``--images symlink``.

Box tolerance through YOLO: 6 decimals of the normalised coordinates move a box edge by at most
0.75e-6 x the image side (0.0015 px at 2000 px) plus float32 rounding, so YOLO stages are compared
within ``YOLO_ATOL`` = 0.01 px; VOC and COCO stages of these integer-pixel sources are exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import SHARED, need_raccoon, no_torch_script
from PIL import Image

from det_toolkit.train.convert import REPORT_FILE, Conversion, SourceData, convert, main, read_source
from det_toolkit.train.data.pennfudan import MaskCheck, is_pennfudan, mask_boxes, parse_annotation, read_pennfudan

REPO = Path(__file__).resolve().parents[1]
PENNFUDAN = SHARED / "datasets" / "pennfudan"
#: max |difference| in pixels of a box that went through YOLO's normalised 6-decimal text
YOLO_ATOL = 0.01


def need_pennfudan() -> Path:
    """The Penn-Fudan root, or skip the test (with the reason) when it is absent."""
    if not is_pennfudan(PENNFUDAN):
        pytest.skip(f"Penn-Fudan not found at {PENNFUDAN}")
    return PENNFUDAN


def raccoon_yaml(tmp: Path) -> Path:
    """A data YAML for the shared raccoon set (VOC, the author's 160/40 split)."""
    root = need_raccoon()
    path = tmp / "raccoon.yaml"
    path.write_text(yaml.safe_dump({"path": str(root), "format": "voc", "train": "train.txt", "val": "val.txt",
                                    "images": "images", "labels": "annotations", "names": ["raccoon"]}))
    return path


def boxes_by_image(data: SourceData) -> dict[str, list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]]:
    """Per split, in order: ``(image stem, boxes, labels, difficult)``."""
    return {sp.name: [(s.image.stem, s.boxes, s.labels, s.iscrowd) for s in sp.samples] for sp in data.splits}


def assert_same(got: SourceData, want: SourceData, atol: float, crowd: bool = True, stems: bool = True) -> None:
    """Same classes, splits and images (in order; by stem unless ``stems`` is false), and box by box the
    same boxes (within ``atol`` px), labels and (``crowd``) difficult flags."""
    assert got.names == want.names
    g, w = boxes_by_image(got), boxes_by_image(want)
    assert list(g) == list(w)
    for split in w:
        assert len(g[split]) == len(w[split]), split
        if stems:
            assert [x[0] for x in g[split]] == [x[0] for x in w[split]], split
        for (stem, gb, gl, gc), (_, wb, wl, wc) in zip(g[split], w[split]):
            assert gb.shape == wb.shape, stem
            np.testing.assert_allclose(gb, wb, rtol=0, atol=atol, err_msg=stem)
            np.testing.assert_array_equal(gl, wl, err_msg=stem)
            if crowd:
                np.testing.assert_array_equal(gc, wc, err_msg=stem)


def chain(source: SourceData, tmp: Path, formats: list[str]) -> list[Conversion]:
    """Convert ``source`` through ``formats`` in turn (images symlinked), each from the last output."""
    out, current = [], source
    for i, fmt in enumerate(formats):
        conv = convert(current, tmp / f"{i}_{fmt}", fmt, "symlink")
        out.append(conv)
        current = conv.output
    return out


def test_raccoon_round_trip_voc_coco_yolo_voc(tmp_path: Path) -> None:
    source = read_source(raccoon_yaml(tmp_path))
    assert source.kind == "voc"
    counts = source.counts()
    assert (counts["train"]["images"], counts["val"]["images"], source.total("boxes")) == (160, 40, 217)
    coco, yolo, voc = chain(source, tmp_path, ["coco", "yolo", "voc"])
    assert_same(coco.output, source, atol=0)
    assert_same(yolo.output, source, atol=YOLO_ATOL)
    assert_same(voc.output, source, atol=0)  # integer VOC pixels come back exactly after YOLO's rounding
    for conv in (coco, yolo, voc):
        assert conv.output.counts() == counts
        assert load_split_lists(conv.data) == {"train": 160, "val": 40}
    # the written files are the formats' own: COCO xywh with category 1, YOLO normalised centres
    d = json.loads((tmp_path / "0_coco/annotations/train.json").read_text())
    assert [c["name"] for c in d["categories"]] == ["raccoon"] and len(d["annotations"]) == 173
    first = d["images"][0]
    assert first["file_name"] == "raccoon-1.jpg" and (tmp_path / "0_coco/images/raccoon-1.jpg").is_symlink()
    box = source.splits[0].samples[0].boxes[0]
    ann = next(a for a in d["annotations"] if a["image_id"] == first["id"])
    assert ann["bbox"] == pytest.approx([box[0], box[1], box[2] - box[0], box[3] - box[1]])


def load_split_lists(data: Path) -> dict[str, int]:
    """Images listed per split by a written dataset (list files or COCO JSON)."""
    cfg = yaml.safe_load(data.read_text())
    out = {}
    for split in ("train", "val", "test"):
        if split in cfg:
            f = data.parent / cfg[split]
            out[split] = len(json.loads(f.read_text())["images"]) if f.suffix == ".json" else \
                len(f.read_text().split())
    return out


def test_pennfudan_round_trip_coco_voc_yolo_coco(tmp_path: Path) -> None:
    source = read_source(need_pennfudan())
    assert source.kind == "pennfudan" and source.names == ["person"]
    counts = source.counts()
    assert (counts["train"]["images"], counts["val"]["images"]) == (130, 40)
    assert (source.total("images"), source.total("boxes")) == (170, 423)
    convs = chain(source, tmp_path, ["coco", "voc", "yolo", "coco"])
    for conv in convs:
        assert_same(conv.output, source, atol=YOLO_ATOL if conv.fmt == "yolo" else 0)
        assert conv.output.counts() == counts
    # the split is the dataset's own train.txt / val.txt
    stems = [s.image.stem for s in convs[-1].output.splits[1].samples]
    assert stems == (PENNFUDAN / "val.txt").read_text().split()


def test_cli_data_report_matches_source_counts(tmp_path: Path) -> None:
    """The printed report: per split images, boxes per class, skips; totals 423/170 and 217/200; the
    output's data.yaml reads back with the same counts; a second run with the same name increments."""
    root = need_pennfudan()
    res = CliRunner().invoke(main, [str(root), "--to", "yolo", "--images", "symlink", "--project", str(tmp_path)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "images             130      40     170" in lines
    assert "boxes              320     103     423" in lines
    assert "  person           320     103     423" in lines
    assert "images skipped       0       0       0" in lines
    out = tmp_path / "pennfudan_yolo"
    assert f"train with: det-train --data {out / 'data.yaml'}" in res.output
    assert read_source(out / "data.yaml").counts() == read_source(root).counts()
    assert "Penn-Fudan pedestrians" in (out / "data.yaml").read_text()  # the authors' terms travel along
    res = CliRunner().invoke(main, [str(raccoon_yaml(tmp_path)), "--to", "coco", "--images", "symlink",
                                    "--project", str(tmp_path), "--name", "pennfudan_yolo"])
    assert res.exit_code == 0, res.output
    assert "images             160      40     200" in res.output.splitlines()
    assert "  raccoon          173      44     217" in res.output.splitlines()
    assert (tmp_path / "pennfudan_yolo2/annotations/val.json").is_file()


def test_pennfudan_boxes_read_as_voc_and_match_masks() -> None:
    """FudanPed00001's '(160, 182) - (302, 431)' (1-based inclusive) is [159, 181, 302, 431], the VOC
    reader's conversion, which is also exactly the box of its mask instance; over the whole set 407
    of 423 boxes equal their mask's box, and one (PennPed00027 object 1, 6 px) differs by over 3 px."""
    root = need_pennfudan()
    ann = parse_annotation(root / "Annotation/FudanPed00001.txt")
    assert ann.size == (559, 536) and ann.declared == 2 and not ann.malformed
    assert [(i, b) for i, _, b in ann.objects] == [(1, [159, 181, 302, 431]), (2, [419, 170, 535, 486])]
    masks = mask_boxes(np.asarray(Image.open(root / "PedMasks/FudanPed00001_mask.png")))
    assert masks == {1: [159, 181, 302, 431], 2: [419, 170, 535, 486]}
    splits = [read_pennfudan(root, s) for s in ("train", "val")]
    checks = [c for sp in splits for c in sp.checks]
    assert len(checks) == 423
    assert sum(c.diff == 0 for c in checks) == 407
    over = [c for c in checks if c.diff > 3]
    assert [(c.annotation.name, c.index, c.diff) for c in over] == [("PennPed00027.txt", 1, 6.0)]
    rows = [(Path(f).name, p) for f, p, _ in splits[0].report.issues]
    assert rows == [("PennPed00027.txt:object 1", "box differs from its mask's box by > 3 px")]
    assert not splits[1].report.issues
    strict = read_pennfudan(root, "train", mask_tol=0.0)
    assert len(strict.report.issues) == sum(c.diff > 0 for c in strict.checks) > 1


def pennfudan_copy(tmp: Path, stems: list[str], edit: dict[str, str] | None = None,
                   drop_images: tuple[str, ...] = ()) -> Path:
    """A Penn-Fudan folder in ``tmp`` with ``stems`` (all in train, the last also in val): annotation
    texts copied (``edit[stem]`` replaces one), images and masks symlinked (not ``drop_images``)."""
    root = need_pennfudan()
    dst = tmp / "pf"
    for d in ("Annotation", "PNGImages", "PedMasks"):
        (dst / d).mkdir(parents=True)
    for stem in stems:
        text = (edit or {}).get(stem) or (root / f"Annotation/{stem}.txt").read_text()
        (dst / f"Annotation/{stem}.txt").write_text(text)
        if stem not in drop_images:
            (dst / f"PNGImages/{stem}.png").symlink_to(root / f"PNGImages/{stem}.png")
        (dst / f"PedMasks/{stem}_mask.png").symlink_to(root / f"PedMasks/{stem}_mask.png")
    (dst / "train.txt").write_text("\n".join(stems[:-1]) + "\n")
    (dst / "val.txt").write_text(stems[-1] + "\n")
    return dst


def test_mask_check_reports_a_box_moved_10px(tmp_path: Path) -> None:
    root = need_pennfudan()
    text = (root / "Annotation/FudanPed00001.txt").read_text()
    moved = text.replace("(160, 182) - (302, 431)", "(170, 182) - (312, 431)")
    assert moved != text
    pf = pennfudan_copy(tmp_path, ["FudanPed00001", "FudanPed00002"], {"FudanPed00001": moved})
    sp = read_pennfudan(pf, "train")
    assert [(c.index, c.diff) for c in sp.checks] == [(1, 10.0), (2, 0.0)]
    assert sp.checks[0] == MaskCheck(pf / "Annotation/FudanPed00001.txt", 1, (169, 181, 312, 431),
                                     (159, 181, 302, 431))
    assert sp.report.issues == [(f"{pf}/Annotation/FudanPed00001.txt:object 1",
                                 "box differs from its mask's box by > 3 px", "box kept")]
    assert sp.report.n_boxes == 2  # reported, not dropped
    res = CliRunner().invoke(main, [str(pf), "--to", "coco", "--images", "symlink", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "1 by more than 3 px (max 10 px)" in res.output
    assert "FudanPed00001.txt object 1: annotation [169, 181, 312, 431] vs mask [159, 181, 302, 431]: 10 px" \
        in res.output
    loose = CliRunner().invoke(main, [str(pf), "--to", "coco", "--images", "symlink", "--mask-tol", "10",
                                      "--out", str(tmp_path / "o2")])
    assert loose.exit_code == 0 and "0 by more than 10 px" in loose.output


def test_broken_records_reported_and_rest_kept(tmp_path: Path) -> None:
    """A box line that does not parse, a box outside the image and a missing image: each reported with
    its file and record (line, object) in the printed report and convert_report.txt; the rest kept."""
    root = need_pennfudan()
    stems = ["FudanPed00001", "FudanPed00002", "FudanPed00003", "FudanPed00004"]
    a = (root / "Annotation/FudanPed00001.txt").read_text()
    broken = a.replace("(420, 171) - (535, 486)", "(420, 171) - (535")  # object 2's line, line 16
    assert broken.splitlines()[15].startswith("Bounding box for object 2")
    b = (root / "Annotation/FudanPed00002.txt").read_text()
    first = next(ln for ln in b.splitlines() if ln.startswith("Bounding box for object 1"))
    outside = b.replace(first, first.split(" : ")[0] + " : (900, 10) - (950, 100)")  # the image is 455 wide
    pf = pennfudan_copy(tmp_path, stems, {"FudanPed00001": broken, "FudanPed00002": outside},
                        drop_images=("FudanPed00003",))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, [str(pf), "--to", "yolo", "--images", "symlink", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "malformed bounding-box line" in res.output and "FudanPed00001.txt:line 16" in res.output
    assert "box entirely outside the image" in res.output and "FudanPed00002.txt:object 1" in res.output
    assert "missing image" in res.output and "FudanPed00003.png" in res.output
    report = (out / REPORT_FILE).read_text()
    for row in (f"{pf}/Annotation/FudanPed00001.txt:line 16: malformed bounding-box line: box skipped",
                f"{pf}/Annotation/FudanPed00002.txt:object 1: box entirely outside the image: box skipped",
                f"{pf}/PNGImages/FudanPed00003.png: missing image: image skipped"):
        assert row in report
    got = read_source(out / "data.yaml")
    kept = {s.image.stem: s.boxes for sp in got.splits for s in sp.samples}
    assert sorted(kept) == ["FudanPed00001", "FudanPed00002", "FudanPed00004"]
    n = {s: len(parse_annotation(root / f"Annotation/{s}.txt").objects) for s in stems}
    assert len(kept["FudanPed00001"]) == n["FudanPed00001"] - 1
    np.testing.assert_allclose(kept["FudanPed00001"][0], [159, 181, 302, 431], atol=YOLO_ATOL)
    assert len(kept["FudanPed00002"]) == n["FudanPed00002"] - 1
    assert len(kept["FudanPed00004"]) == n["FudanPed00004"]
    assert "images skipped       1       0       1" in res.output.splitlines()
    assert "boxes skipped        2       0       2" in res.output.splitlines()


def test_broken_yolo_line_reported_with_its_line(tmp_path: Path) -> None:
    """det-train's readers report a bad record in a converted source the same way: a YOLO line that
    does not parse names its file and line; the image and its other boxes stay."""
    yolo = convert(read_source(raccoon_yaml(tmp_path)), tmp_path / "yolo", "yolo", "symlink")
    label = tmp_path / "yolo/labels/raccoon-1.txt"
    label.write_text(label.read_text() + "0 0.5 oops 0.1 0.1\n")
    res = CliRunner().invoke(main, [str(yolo.data), "--to", "coco", "--images", "symlink",
                                    "--out", str(tmp_path / "coco")])
    assert res.exit_code == 0, res.output
    assert "raccoon-1.txt:line 2" in res.output
    assert "boxes skipped        1       0       1" in res.output.splitlines()
    assert "boxes              173      44     217" in res.output.splitlines()


def test_difficult_flags_and_stem_collisions(tmp_path: Path) -> None:
    """VOC difficult <-> COCO iscrowd survive; YOLO says it drops them; images of different folders
    with one stem get distinct names; a test split is kept."""
    root = tmp_path / "src"
    for split, colour in (("train", 60), ("val", 120), ("test", 180)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        Image.new("RGB", (40, 40), (colour, 0, 0)).save(root / "images" / split / "a.png")
        (root / "labels" / split / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.1 0.2\n")
    (root / "data.yaml").write_text("train: images/train\nval: images/val\ntest: images/test\nnames: [cat, dog]\n")
    voc = convert(read_source(root), tmp_path / "voc", "voc", "copy")
    assert sorted(p.name for p in (tmp_path / "voc/images").iterdir()) == ["a.png", "a_2.png", "a_3.png"]
    assert (tmp_path / "voc/test.txt").read_text() == "a_3\n"
    assert [sp.name for sp in voc.output.splits] == ["train", "val", "test"]
    assert_same(voc.output, read_source(root), atol=0, stems=False)  # whole pixels of the 40x40 images
    xml = tmp_path / "voc/annotations/a_2.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    coco = convert(read_source(tmp_path / "voc/data.yaml"), tmp_path / "coco", "coco", "symlink")
    assert coco.source.counts()["val"]["difficult"] == 1
    assert [a["iscrowd"] for a in json.loads((tmp_path / "coco/annotations/val.json").read_text())["annotations"]] \
        == [1, 0]
    back = convert(coco.output, tmp_path / "voc2", "voc", "symlink")
    assert_same(back.output, coco.source, atol=0)
    res = CliRunner().invoke(main, [str(coco.data), "--to", "yolo", "--images", "symlink",
                                    "--out", str(tmp_path / "yolo")])
    assert res.exit_code == 0, res.output
    assert "1 difficult boxes written as ordinary boxes (YOLO has no such flag)" in res.output


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    """Bad sources and flags end with one click message (exit 1 or 2), no traceback, no output folder."""
    runner = CliRunner()
    cfg = raccoon_yaml(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full/x").write_text("")
    pf = pennfudan_copy(tmp_path, ["FudanPed00001", "FudanPed00002"])
    (pf / "val.txt").unlink()
    project = ["--project", str(tmp_path / "p")]
    cases = [
        ([str(tmp_path / "nope"), "--to", "coco", *project], 1, "source not found"),
        ([str(cfg), "--to", "coco", "--mask-tol", "2", *project], 2, "--mask-tol applies to Penn-Fudan sources only"),
        ([str(cfg), "--to", "coco", "--out", str(tmp_path / "o"), "--name", "x"], 2, "give it or --project/--name"),
        ([str(cfg), "--to", "voc", "--out", str(tmp_path / "full")], 1, "exists and is not an empty folder"),
        ([str(pf), "--to", "voc", *project], 1, "split list val.txt not found"),
        ([str(cfg), "--to", "json", *project], 2, "Invalid value for '--to'"),
    ]
    for args, code, message in cases:
        res = runner.invoke(main, args)
        assert (res.exit_code, isinstance(res.exception, SystemExit)) == (code, True), (args, res.output)
        assert message in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "p").exists() and not (tmp_path / "o").exists()
    res = runner.invoke(main, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("det-convert, version ")


def test_without_torch(tmp_path: Path) -> None:
    """det-convert in a Python that cannot import torch: Penn-Fudan to VOC, counts as the source's."""
    root = need_pennfudan()
    proc = subprocess.run([sys.executable, "-c", no_torch_script("det_toolkit.train.convert"), str(root),
                           "--to", "voc", "--images", "symlink", "--out", str(tmp_path / "voc")],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "boxes              320     103     423" in proc.stdout.splitlines()
    assert read_source(tmp_path / "voc/data.yaml").total("boxes") == 423
