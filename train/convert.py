"""``det-convert``: convert a dataset between COCO JSON, Pascal VOC and YOLO, or from Penn-Fudan.

Reading is det-train's (:func:`det_toolkit.train.data.formats.read_split` on anything ``--data``
accepts: a data YAML or a dataset folder), or the Penn-Fudan reader
(:mod:`det_toolkit.train.data.pennfudan`); writing is det-label's
(:func:`det_toolkit.train.data.writers.write_splits`). One reader and one writer per format, so a
converted dataset reads back exactly as its source did.

What carries over: every split the source defines (``train``, ``val``, ``test``) with its images in
order, the class names in order, every box the readers keep, and the difficult/crowd flag (VOC
``difficult`` <-> COCO ``iscrowd``; YOLO has no such field: those boxes become ordinary boxes, and the
report says how many). Images are copied (``--images copy``) or symlinked to the source files
(``symlink``) under ``images/``, named by their stem (``_2``, ``_3``, ... appended where stems from
different folders collide) with the suffix in lower case.

Precision of the written boxes: VOC holds integer pixels (a fractional source coordinate moves to the
nearest pixel edge, at most 0.5 px); COCO 2 decimals (0.005 px); YOLO 6 decimals of the image size
(at most 0.75e-6 times the image side: 0.0015 px at 2000 px). A source with integer pixel boxes
(VOC, Penn-Fudan) survives any chain of conversions exactly, up to that YOLO rounding.

Problems in the source are those the readers report (an image missing or unreadable: left out; a
label line that does not parse: that box left out; a box past the border: clipped, or left out when
nothing is left); they are printed with their file (and record where the reader names it) and
written, every one, to ``convert_report.txt`` in the output folder. After writing, the output is read
back with det-train's readers and its counts (images, boxes per class, difficult boxes, per split)
are compared with the source's; any difference is an error.

torch-free (base install).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from det_toolkit import __version__
from det_toolkit.runtime.files import increment_path
from det_toolkit.runtime.predictor import Detections
from det_toolkit.train.config import ConfigError, load_data_config
from det_toolkit.train.data.formats import FORMATS, detect_format, read_split
from det_toolkit.train.data.pennfudan import CITATION, CLASS_NAMES, MASK_TOL, MaskCheck, is_pennfudan, read_pennfudan
from det_toolkit.train.data.pennfudan import SPLITS as PENNFUDAN_SPLITS
from det_toolkit.train.data.samples import DataReport, Sample
from det_toolkit.train.data.writers import IMAGES_DIR, SPLITS, LabelledFrame, write_splits

#: ``--from``: ``data`` is anything ``det-train --data`` reads; ``auto`` also detects Penn-Fudan
SOURCE_KINDS = ("auto", "data", "pennfudan")
#: ``--images``: how the images get into the output folder
IMAGE_MODES = ("copy", "symlink")
#: written into the output folder: the data report and every problem found in the source
REPORT_FILE = "convert_report.txt"


class ConvertError(ValueError):
    """A conversion cannot be done or its output does not read back as its source (message says why)."""


@dataclass
class SplitData:
    """One split as read: its usable samples and the reader's report (problems with their files)."""

    name: str
    samples: list[Sample]
    report: DataReport


@dataclass
class SourceData:
    """A whole dataset as det-train's readers (or the Penn-Fudan reader) see it.

    Attributes:
        kind: ``coco``, ``voc``, ``yolo`` or ``pennfudan``.
        description: where it came from, for messages (path and layout).
        names: class names; label ``i`` of every sample is ``names[i]``.
        splits: the splits in ``train``, ``val``, ``test`` order (those the source defines).
        mask_checks: Penn-Fudan: every box compared with its mask (:class:`MaskCheck`); else empty.
        mask_tol: Penn-Fudan: the cross-check tolerance in pixels; else ``None``.
    """

    kind: str
    description: str
    names: list[str]
    splits: list[SplitData]
    mask_checks: list[MaskCheck] = field(default_factory=list)
    mask_tol: float | None = None

    def counts(self) -> dict[str, dict[str, int]]:
        """Per split: ``images``, ``boxes``, ``difficult`` and one ``boxes per class`` entry per class
        name (keyed ``class:<name>``), and what the reader skipped (``images skipped``, ``boxes skipped``)."""
        out = {}
        for sp in self.splits:
            labels = np.concatenate([s.labels for s in sp.samples]) if sp.samples else np.zeros(0, np.int64)
            per_class = np.bincount(labels, minlength=len(self.names)) if len(labels) else [0] * len(self.names)
            actions = [a for _, _, a in sp.report.issues]
            out[sp.name] = {
                "images": len(sp.samples), "boxes": len(labels),
                **{f"class:{n}": int(k) for n, k in zip(self.names, per_class)},
                "difficult": int(sum(int(s.iscrowd.sum()) for s in sp.samples)),
                "images skipped": actions.count("image skipped"), "boxes skipped": actions.count("box skipped")}
        return out

    def total(self, key: str) -> int:
        """A :meth:`counts` entry summed over the splits."""
        return sum(c[key] for c in self.counts().values())


def read_source(src: Path, kind: str = "auto", mask_tol: float = MASK_TOL) -> SourceData:
    """Read every split of a dataset.

    Args:
        src: a data YAML or a dataset folder (anything ``det-train --data`` accepts), or a Penn-Fudan
            folder.
        kind: ``pennfudan``; ``data`` (det-train's readers); ``auto``: ``pennfudan`` for a folder
            with Penn-Fudan's ``Annotation/``, ``PNGImages/`` and ``PedMasks/``, else ``data``.
        mask_tol: Penn-Fudan's box/mask cross-check tolerance in pixels.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ConfigError: an unusable data YAML or folder layout, a missing split list.
        DatasetError: an unreadable COCO file.
        ConvertError: splits whose class lists differ (COCO files with other categories).
    """
    if kind not in SOURCE_KINDS:
        raise ConvertError(f"source kind '{kind}' is not one of {', '.join(SOURCE_KINDS)}")
    if not src.exists():
        raise FileNotFoundError(f"source not found: {src}")
    src = src.resolve()
    if kind == "pennfudan" or (kind == "auto" and src.is_dir() and is_pennfudan(src)):
        if not is_pennfudan(src):
            raise ConfigError(f"{src}: not a Penn-Fudan folder (needs Annotation/, PNGImages/ and PedMasks/)")
        splits, checks = [], []
        for name in PENNFUDAN_SPLITS:
            sp = read_pennfudan(src, name, mask_tol)
            splits.append(SplitData(name, sp.samples, sp.report))
            checks += sp.checks
        return SourceData("pennfudan", f"{src} (Penn-Fudan)", list(CLASS_NAMES), splits, checks, mask_tol)
    cfg = load_data_config(src)
    fmt = detect_format(cfg)
    splits, names = [], None
    for name in SPLITS:
        if not getattr(cfg, name):
            continue
        samples, split_names, _, report = read_split(cfg, name)
        if names is not None and split_names != names:
            raise ConvertError(f"{cfg.source}: split '{name}' has the classes {split_names}, the first split "
                               f"{names}: list the classes under 'names:' in a data YAML")
        names = split_names
        splits.append(SplitData(name, samples, report))
    return SourceData(fmt, f"{cfg.source} ({fmt})", list(names or cfg.names), splits)


def _stems(source: SourceData) -> dict[Path, str]:
    """A unique output stem per source image (``x``, ``x_2``, ... by first appearance)."""
    out: dict[Path, str] = {}
    used: set[str] = set()
    for sp in source.splits:
        for s in sp.samples:
            if s.image in out:
                continue
            stem, n = s.image.stem, 2
            while stem.lower() in used:  # lower case: case-insensitive file systems
                stem, n = f"{s.image.stem}_{n}", n + 1
            used.add(stem.lower())
            out[s.image] = stem
    return out


def write_converted(source: SourceData, out: Path, fmt: str, images: str = "copy", header: str = "") -> Path:
    """Write ``source`` as a ``fmt`` dataset under ``out`` (images, labels, split lists, ``data.yaml``).

    Args:
        source: what :func:`read_source` read.
        out: the dataset folder; created if absent, must be empty.
        fmt: ``coco``, ``voc`` or ``yolo``.
        images: ``copy`` the image files or ``symlink`` them (absolute links to the resolved source).
        header: comment lines for the top of ``data.yaml``.

    Returns:
        The ``data.yaml`` path.

    Raises:
        ConvertError: bad ``fmt``/``images``, ``out`` not an empty folder.
        OSError: a file cannot be copied, linked or written.
    """
    if fmt not in FORMATS:
        raise ConvertError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")
    if images not in IMAGE_MODES:
        raise ConvertError(f"images mode '{images}' is not one of {', '.join(IMAGE_MODES)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConvertError(f"output {out} exists and is not an empty folder")
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    stems = _stems(source)
    frames: dict[Path, LabelledFrame] = {}
    for sp in source.splits:
        for s in sp.samples:
            if s.image in frames:
                continue
            f = LabelledFrame(stems[s.image], len(frames), s.width, s.height,
                              Detections(s.boxes, np.ones(len(s.boxes), np.float32), s.labels),
                              suffix=s.image.suffix.lower(), difficult=s.iscrowd)
            dst = out / IMAGES_DIR / f.file_name
            if images == "symlink":
                dst.symlink_to(s.image.resolve())
            else:
                shutil.copy2(s.image, dst)
            frames[s.image] = f
    splits = {sp.name: [frames[s.image] for s in sp.samples] for sp in source.splits}
    return write_splits(out, fmt, splits, source.names, header,
                        description=f"converted by det-convert from {source.description}")


def _compare(source: SourceData, output: SourceData, fmt: str) -> list[str]:
    """The count differences between a source and its converted output (empty: none)."""
    if output.names != source.names:
        return [f"classes {output.names}, source {source.names}"]
    src, got = source.counts(), output.counts()
    if list(got) != list(src):
        return [f"splits {list(got)}, source {list(src)}"]
    diffs = []
    for split, want in src.items():
        for key in ("images", "boxes", *(k for k in want if k.startswith("class:")), "difficult"):
            expect = 0 if key == "difficult" and fmt == "yolo" else want[key]
            if got[split][key] != expect:
                diffs.append(f"{split}: {key.removeprefix('class:')} {got[split][key]}, source {expect}")
    return diffs


@dataclass
class Conversion:
    """The result of :func:`convert`: the source as read, the output as read back, its data YAML."""

    source: SourceData
    output: SourceData
    data: Path
    fmt: str
    images: str

    def table(self) -> str:
        """The data report (several lines): counts per split, the source's problems (a few example files
        per problem), the Penn-Fudan mask cross-check, and what was written."""
        return "\n".join([f"source: {self.source.description}", counts_table(self.source),
                          *problem_lines(self.source), *mask_lines(self.source),
                          f"written: {self.data.parent} ({self.fmt}, images "
                          f"{'symlinked' if self.images == 'symlink' else 'copied'}); read back with det-train's "
                          "readers: same images, boxes per class and splits"
                          + (f"; {self.source.total('difficult')} difficult boxes written as ordinary "
                             "boxes (YOLO has no such flag)" if self.fmt == "yolo"
                             and self.source.total("difficult") else "")])


def counts_table(source: SourceData) -> str:
    """Images, boxes (per class), difficult boxes and what the reader skipped, per split and in total."""
    counts = source.counts()
    splits = list(counts)
    keys = list(next(iter(counts.values()), {}))
    label = {k: f"  {k.removeprefix('class:')}" if k.startswith("class:") else k for k in keys}
    width = max([len(v) for v in label.values()] + [8])
    lines = [f"{'':<{width}}" + "".join(f"{s:>8}" for s in [*splits, "total"])]
    for k in keys:
        row = [counts[s][k] for s in splits]
        lines.append(f"{label[k]:<{width}}" + "".join(f"{v:>8}" for v in [*row, sum(row)]))
    return "\n".join(lines)


def problem_lines(source: SourceData) -> list[str]:
    """Per split with problems: the reader's summary table (:meth:`DataReport.table`)."""
    return [sp.report.table() for sp in source.splits if sp.report.issues]


def mask_lines(source: SourceData) -> list[str]:
    """Penn-Fudan: the cross-check summary and every box over the tolerance (file, object index)."""
    if source.mask_tol is None:
        return []
    checks = source.mask_checks
    diffs = [c.diff for c in checks]
    over = [c for c in checks if c.diff > source.mask_tol]
    lines = [f"mask cross-check: {len(checks)} boxes compared with the box of their instance mask: "
             f"{sum(d == 0 for d in diffs)} identical, {sum(d > 0 for d in diffs)} differ, {len(over)} by more "
             f"than {source.mask_tol:g} px (max {max(diffs, default=0):g} px)"]
    return lines + [f"  {c.describe()}" for c in over]


def full_report(conversion: Conversion) -> str:
    """:meth:`Conversion.table` followed by every problem of the source (file, problem, action) and,
    for Penn-Fudan, every box that differs from its mask at all: the text of ``convert_report.txt``."""
    lines = [conversion.table(), "", "Every problem found in the source (file / problem / action):"]
    for sp in conversion.source.splits:
        lines += [f"[{sp.name}] {file}: {problem}: {action}" for file, problem, action in sp.report.issues]
    if not any(sp.report.issues for sp in conversion.source.splits):
        lines.append("none")
    if conversion.source.mask_tol is not None:
        lines += ["", "Every box that differs from its mask's box:"]
        lines += [c.describe() for c in conversion.source.mask_checks if c.diff > 0] or ["none"]
    return "\n".join(lines) + "\n"


def convert(source: SourceData, out: Path, fmt: str, images: str = "copy") -> Conversion:
    """Write ``source`` as a ``fmt`` dataset under ``out``, read it back and check its counts.

    Args:
        source: what :func:`read_source` read.
        out: the dataset folder; created if absent, must be empty.
        fmt: ``coco``, ``voc`` or ``yolo``.
        images: ``copy`` or ``symlink`` the images.

    Returns:
        :class:`Conversion`; ``out`` holds the dataset, its ``data.yaml`` and ``convert_report.txt``.

    Raises:
        ConvertError: bad arguments, ``out`` not empty, or the output reads back with other counts
            (images, boxes per class, difficult boxes per split) or classes than the source.
        OSError: a file cannot be copied, linked or written.
    """
    header = (f"Converted by det-convert {__version__} from {source.description}.\n"
              f"Splits, class order and boxes as det-train's readers read them; the source's problems: "
              f"{REPORT_FILE}.")
    if source.kind == "pennfudan":
        header += "\n" + CITATION
    data = write_converted(source, out, fmt, images, header)
    output = read_source(data, "data")
    diffs = _compare(source, output, fmt)
    if diffs:
        raise ConvertError(f"{data}: the output does not read back as its source: {'; '.join(diffs)}")
    conversion = Conversion(source, output, data, fmt, images)
    (out / REPORT_FILE).write_text(full_report(conversion), encoding="utf-8")
    return conversion


# --- CLI ------------------------------------------------------------------------------------------


def _given(ctx: click.Context, *params: str) -> list[str]:
    """The ``--flags`` among ``params`` typed on the command line."""
    return [f"--{p.replace('_', '-')}" for p in params
            if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, "--version", prog_name="det-convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--to", "fmt", required=True, type=click.Choice(FORMATS),
              help="Output format: COCO JSON, Pascal VOC XML (labelImg) or YOLO txt.")
@click.option("--from", "kind", default="auto", type=click.Choice(SOURCE_KINDS),
              help="Source: 'data' is anything det-train --data reads (a data YAML or a dataset folder); "
              "'auto' also recognises a Penn-Fudan folder (Annotation/, PNGImages/, PedMasks/).")
@click.option("--project", default="runs/convert", type=click.Path(path_type=Path),
              help="Parent folder of the output dataset folder.")
@click.option("--name", default=None, show_default="SRC's name + _FORMAT",
              help="Output folder name; an existing one gets a number appended, never reused.")
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path), show_default="PROJECT/NAME",
              help="Exact output folder instead of PROJECT/NAME (not incremented; must be empty or absent).")
@click.option("--images", default="copy", type=click.Choice(IMAGE_MODES),
              help="Copy the images into the output, or symlink them to the source files (fast, no extra "
              "disk; the output then needs the source).")
@click.option("--mask-tol", default=MASK_TOL, type=click.FloatRange(0),
              help="Penn-Fudan: report boxes whose coordinates differ from their instance mask's box by "
              "more than this many pixels.")
def main(src: Path, fmt: str, kind: str, project: Path, name: str | None, out: Path | None, images: str,
         mask_tol: float) -> None:
    """Convert the dataset SRC (a data YAML, a dataset folder, or a Penn-Fudan folder) to COCO JSON,
    Pascal VOC or YOLO, keeping its splits, class order and boxes, and print its data report.

    \b
    det-convert configs/raccoon.yaml --to coco
    det-convert ../shared/datasets/pennfudan --to yolo --images symlink --name pennfudan
    det-convert roboflow_export/ --to voc --out data/voc
    """
    ctx = click.get_current_context()
    if out is not None and _given(ctx, "project", "name"):
        raise click.UsageError("--out is the exact output folder: give it or --project/--name, not both")
    created = None
    try:
        source = read_source(src, kind, mask_tol)
        if source.kind != "pennfudan" and _given(ctx, "mask_tol"):
            raise click.UsageError(f"--mask-tol applies to Penn-Fudan sources only, not {source.description}")
        if out is None:
            stem = src.resolve().stem if src.is_file() else src.resolve().name
            out = created = increment_path(project / (name or f"{stem}_{fmt}"))
        conversion = convert(source, out, fmt, images)
    except (ValueError, OSError) as e:
        if created is not None and created.is_dir() and not any(created.iterdir()):
            created.rmdir()
        raise click.ClickException(str(e)) from e
    click.echo(conversion.table())
    click.echo(f"report: {out / REPORT_FILE}; train with: det-train --data {conversion.data}")


if __name__ == "__main__":
    main()
