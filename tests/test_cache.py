"""The training image cache holds only what fits its RAM budget; the rest is read from disk, and
both give the same training items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from det_toolkit.train.config import DataConfig, load_data_config  # noqa: E402
from det_toolkit.train.data.dataset import DetectionDataset, cache_fits, cache_mib_needed, cached_bytes  # noqa: E402
from det_toolkit.train.data.formats import read_split  # noqa: E402
from tests.conftest import need_raccoon  # noqa: E402


def test_cache_budget_on_real_images() -> None:
    root = need_raccoon()
    cfg = DataConfig(path=str(root), format="voc", train="train.txt", val="val.txt", images="images",
                     labels="annotations", names=["raccoon"])
    samples = read_split(cfg, "val")[0][:12]
    need = cache_mib_needed(samples, 256)
    # the estimate is the real size of what the dataset caches
    full = DetectionDataset(samples, 256, cache=True)
    assert full.cached == len(samples)
    real = sum(item[0].nbytes for item in full._cache if item is not None) / 2**20
    assert real == pytest.approx(need, rel=1e-6)
    assert [cached_bytes(s, 256) for s in samples] == [item[0].nbytes for item in full._cache]
    # half the budget: the leading images that fit are cached, the rest come from disk, same pixels
    half = DetectionDataset(samples, 256, cache=True, cache_mib=need / 2)
    assert 0 < half.cached == cache_fits(samples, 256, need / 2) < len(samples)
    for i in range(len(samples)):
        a, b = full[i], half[i]
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
        np.testing.assert_array_equal(a[1]["boxes"].numpy(), b[1]["boxes"].numpy())
    assert DetectionDataset(samples, 256, cache=True, cache_mib=0).cached == 0
    assert DetectionDataset(samples, 256, cache=False).cached == 0


def test_trainer_cache_budget_takes_training_images_first(synthetic: Path) -> None:
    """det-train's --cache-mib: the training images first, the val images with what is left, one line
    saying what is in RAM; 0 or --no-cache: no cache; auto: half the available memory."""
    from det_toolkit.train.config import TrainConfig
    from det_toolkit.train.data.dataset import available_mib
    from det_toolkit.train.run_data import load_data, make_loaders

    def loaders(**kw: object) -> tuple[DetectionDataset, DetectionDataset, str]:
        cfg = TrainConfig(data=str(synthetic), imgsz=128, workers=0, **kw)  # type: ignore[arg-type]
        dcfg, data = load_data(cfg, say=lambda *a: None)
        lines: list[str] = []
        run = make_loaders(cfg, dcfg, data, lines.append)
        assert len(lines) == 1
        return run.train_loader.dataset, run.val_dataset, lines[0]

    one = cache_mib_needed(read_split(load_data_config(synthetic), "train")[0][:1], 128)
    assert one == pytest.approx(128 * 128 * 3 / 2**20)  # 128 x 128 synthetic images at imgsz 128
    train, val, line = loaders(cache_mib=str(9.5 * one))  # 8 training images, then 1 of the 4 val images
    assert (train.cached, val.cached) == (8, 1)
    assert line.startswith("cache: 8/8 train + 1/4 val images in RAM (0.42 MiB of a 0.45 MiB budget, ")
    assert line.endswith("s), the rest read from disk")
    for kw, says in (({"cache_mib": "0"}, "--cache-mib 0"), ({"cache": False}, "--no-cache")):
        train, val, line = loaders(**kw)
        assert (train.cached, val.cached) == (0, 0)
        assert line == f"cache: off ({says}): images are decoded from disk every epoch"
    train, val, line = loaders()  # auto
    assert (train.cached, val.cached) == (8, 4) and "the rest" not in line
    budget = float(line.split("of a ")[1].split(" MiB")[0])
    assert budget == pytest.approx(available_mib() / 2, rel=0.2)
