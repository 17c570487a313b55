"""Time-to-accuracy: the project's trainer against the DataLoader baseline a typical user writes, in one run.

    python benchmarks/train_speed.py [--quick] [--profiles default gpu] [--json PATH]

Both train on the default profile's training split of the real training images and are scored on its validation
split after every epoch (the test set chooses nothing, not even a profile's length). Only optimisation time counts
as training time; evaluation is timed and reported separately. Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from fmnist.core.config import CONFIG_DIR, load_profile
from fmnist.core.data import PIXEL_MEAN, PIXEL_STD, Splits, load_dataset, make_splits
from fmnist.core.runtime import amp_dtype, describe_device, pick_device
from fmnist.pipeline import with_real_photos
from fmnist.training.loop import train_model

THRESHOLDS = (0.91, 0.92, 0.93, 0.94, 0.95)


class BaselineCNN(nn.Module):
    """The usual tutorial network: two convolutions (32, 64), max-pool, dropout, a 128-unit dense layer."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Flatten(),
            nn.Linear(64 * 12 * 12, 128),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def benchmark_splits(limit: int | None) -> Splits:
    """The default profile's training and validation splits (its size and seed), cut to `limit` for --quick, with
    the real photographs a profile may train on (`real_photo_share`; the baseline never does)."""
    profile = load_profile(CONFIG_DIR / "default.yaml")
    splits = with_real_photos(make_splits(load_dataset(), profile.data.val_size, profile.seed))
    if not limit:
        return splits
    return Splits(
        splits.train_images[:limit],
        splits.train_labels[:limit],
        splits.val_images[: limit // 3],
        splits.val_labels[: limit // 3],
        splits.photo_images,
        splits.photo_right,
    )


class PerImageDataset(torch.utils.data.Dataset):
    """What torchvision's `FashionMNIST` dataset does for each item: a PIL image through the transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform  # (N, 28, 28) uint8, (N,) uint8

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def run_baseline(device: torch.device, epochs: int, splits: Splits) -> dict:
    """Per-image ToTensor/Normalize (as torchvision's dataset) + DataLoader(64, shuffle) + Adam 1e-3, fp32."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    torch.manual_seed(0)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((PIXEL_MEAN,), (PIXEL_STD,))])
    train = PerImageDataset(splits.train_images, splits.train_labels, tf)
    val = PerImageDataset(splits.val_images, splits.val_labels, tf)
    loader = DataLoader(train, batch_size=64, shuffle=True)
    val_loader = DataLoader(val, batch_size=1000)
    model = BaselineCNN().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        history.append(
            {
                "epoch": epoch,
                "epoch_seconds": train_s,
                "images_per_second": len(train) / train_s,
                "val_accuracy": correct / len(val),
                "eval_seconds": time.perf_counter() - t1,
            }
        )
        logging.info("baseline epoch %d: %.1fs, validation %.4f", epoch, train_s, history[-1]["val_accuracy"])
    return summarise("baseline (DataLoader, Adam, fp32)", history)


def run_profile(name: str, device: torch.device, splits: Splits, epochs: int | None) -> dict:
    """The project's trainer with a shipped profile's base hyper-parameters, the validation split as its check."""
    profile = load_profile(CONFIG_DIR / f"{name}.yaml")
    hp = profile.hparams if epochs is None else profile.hparams.model_copy(update={"epochs": epochs})
    # The same splits as the baseline: the same training images, scored on the same validation images each epoch.
    t0 = time.perf_counter()
    result = train_model(hp, splits, device, seed=profile.seed, amp=amp_dtype(device, profile.compute.amp))
    total = time.perf_counter() - t0
    history = [
        {
            "epoch": h["epoch"],
            "epoch_seconds": h["epoch_seconds"],
            "images_per_second": h["images_per_second"],
            "val_accuracy": h["val_accuracy"],
        }
        for h in result.history
    ]
    out = summarise(f"fmnist {name} profile", history)
    out["eval_seconds_total"] = total - result.train_seconds
    out["parameters"] = result.parameters
    return out


def summarise(label: str, history: list[dict]) -> dict:
    """Per-epoch figures plus time-to-accuracy at each threshold (cumulative training seconds)."""
    elapsed, tta = 0.0, {}
    for h in history:
        elapsed += h["epoch_seconds"]
        h["train_seconds"] = elapsed
        for t in THRESHOLDS:
            if h["val_accuracy"] >= t and f"{t:.2f}" not in tta:
                tta[f"{t:.2f}"] = elapsed
    return {
        "label": label,
        "history": history,
        "images_per_second": float(np.mean([h["images_per_second"] for h in history])),
        "epoch_seconds": float(np.mean([h["epoch_seconds"] for h in history])),
        "final_val_accuracy": history[-1]["val_accuracy"],
        "best_val_accuracy": max(h["val_accuracy"] for h in history),
        "time_to_accuracy": tta,
    }


def print_table(results: list[dict]) -> None:
    base = results[0]
    cols = "".join(f"{'t->' + t[2:] + '%':>9}" for t in (f"{x:.2f}" for x in THRESHOLDS))
    print(f"\n{'trainer':38}{'img/s':>9}{'s/epoch':>9}{'best val':>9}{cols}{'img/s x':>9}")
    for r in results:
        tta = "".join(
            f"{r['time_to_accuracy'][t]:>9.1f}" if t in r["time_to_accuracy"] else f"{'-':>9}"
            for t in (f"{x:.2f}" for x in THRESHOLDS)
        )
        ratio = r["images_per_second"] / base["images_per_second"]
        print(
            f"{r['label']:38}{r['images_per_second']:>9.0f}{r['epoch_seconds']:>9.1f}"
            f"{r['best_val_accuracy']:>9.4f}{tta}{ratio:>9.2f}"
        )
    for r in results[1:]:
        for t, s in r["time_to_accuracy"].items():
            if t in base["time_to_accuracy"]:
                print(f"{r['label']}: time to {float(t):.0%} is {base['time_to_accuracy'][t] / s:.1f}x faster")
    print("per-epoch validation accuracy:")
    for r in results:
        print(f"  {r['label']}: " + " ".join(f"{h['val_accuracy']:.4f}" for h in r["history"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3000 images, 1 epoch each: checks the benchmark runs")
    parser.add_argument(
        "--profiles",
        nargs="+",
        help="profiles to time (default: default and fast on CPU, default and gpu on CUDA; --quick: default)",
    )
    parser.add_argument("--baseline-epochs", type=int, default=6, help="baseline epochs (default 6)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    device = pick_device("auto")
    shipped = ["default", "gpu"] if device.type == "cuda" else ["default", "fast"]
    profiles = args.profiles or (shipped[:1] if args.quick else shipped)
    limit = 3000 if args.quick else None
    print(f"device: {describe_device(device)}; torch {torch.__version__}")
    splits = benchmark_splits(limit)
    print(f"training split {len(splits.train_labels)} images, validation split {len(splits.val_labels)}")
    results = [run_baseline(device, 1 if args.quick else args.baseline_epochs, splits)]
    results += [run_profile(p, device, splits, 1 if args.quick else None) for p in profiles]
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": describe_device(device), "results": results}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
