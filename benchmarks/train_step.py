"""Training-step and inference time of the default model with torchvision's COCO proposal/RoI
budgets versus the toolkit's CPU defaults, measured in one run.

    python -m det_toolkit.benchmarks.train_step [--imgsz 416] [--batch 4] [--steps 5]

Prints seconds per SGD step (batch of ``--batch`` images) and ms per image at inference, median of
``--steps`` after one warm-up step. The two settings differ only in ``rpn_post_nms_top_n_train``
(2000 vs 1000), ``box_batch_size_per_image`` (512 vs 128 sampled RoIs per image) and
``rpn_post_nms_top_n_test`` (1000 vs 300 proposals): the 12544->1024 box head runs once per RoI,
which makes it the dominant cost on a CPU.
"""

from __future__ import annotations

import statistics
import time

import click
import torch

from det_toolkit.train.models import build_model

SETTINGS = {
    "torchvision COCO budgets": {"rpn_post_nms_top_n_train": 2000, "box_batch_size_per_image": 512,
                                 "rpn_post_nms_top_n_test": 1000},
    "det-toolkit defaults": {},
}


def _time(fn, steps: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


@click.command()
@click.option("--imgsz", default=416, show_default=True, help="longest side in pixels")
@click.option("--batch", default=4, show_default=True, help="images per step")
@click.option("--steps", default=5, show_default=True, help="timed steps per setting")
def main(imgsz: int, batch: int, steps: int) -> None:
    """Print s/step (training) and ms/image (inference) for each setting."""
    torch.manual_seed(0)
    h = imgsz * 3 // 4
    imgs = [torch.rand(3, h, imgsz) for _ in range(batch)]
    tg = [{"boxes": torch.tensor([[50.0, 40.0, imgsz * 0.7, h * 0.9]]), "labels": torch.tensor([0])}
          for _ in range(batch)]
    print(f"fasterrcnn_mobilenet_v2_fpn, {batch} x {imgsz}x{h}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for label, kw in SETTINGS.items():
        model = build_model("fasterrcnn_mobilenet_v2_fpn", 1, **kw)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(model: torch.nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            model.train()
            loss = sum(model(imgs, tg).values())
            opt.zero_grad()
            loss.backward()
            opt.step()

        def infer(model: torch.nn.Module = model) -> None:
            model.eval()
            with torch.inference_mode():
                model(imgs[:1])

        s_step = _time(step, steps)
        ms_inf = _time(infer, steps) * 1000
        print(f"{label:<28} train {s_step:6.2f} s/step ({batch / s_step:5.2f} img/s)   "
              f"inference {ms_inf:7.1f} ms/img")


if __name__ == "__main__":
    main()
