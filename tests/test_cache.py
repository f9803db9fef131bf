"""The training image cache holds only what fits its RAM budget; the rest is read from disk, and
both give the same training items."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from det_toolkit.train.config import DataConfig  # noqa: E402
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
