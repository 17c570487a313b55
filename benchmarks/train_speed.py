"""Time-to-accuracy: the project's trainer against the DataLoader baseline a typical user writes, in one run.

    python benchmarks/train_speed.py [--quick] [--profiles default gpu] [--json PATH]

Both train on the real 60000 training images and are scored on the 10000 test images after every epoch. Only
optimisation time counts as training time; evaluation is timed and reported separately. Prints a table and
writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fmnist.core.config import CONFIG_DIR, load_profile
from fmnist.core.data import FILES, PIXEL_MEAN, PIXEL_STD, Splits, find_data_dir, load_dataset
from fmnist.core.runtime import amp_dtype, describe_device, pick_device
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


def torchvision_root() -> Path:
    """A directory laid out as torchvision's FashionMNIST expects, holding the verified files decompressed."""
    load_dataset(download=True)  # verifies the files first
    src = find_data_dir()
    root = Path(tempfile.gettempdir()) / "fashionflow-torchvision"
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for spec in FILES.values():
        target = raw / spec.stem
        if not target.exists():
            gz = src / (spec.stem + ".gz")
            target.write_bytes(gzip.decompress(gz.read_bytes()) if gz.exists() else (src / spec.stem).read_bytes())
    return root


def run_baseline(device: torch.device, epochs: int, limit: int | None) -> dict:
    """torchvision dataset + ToTensor/Normalize + DataLoader(64, shuffle) + Adam 1e-3, fp32."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((PIXEL_MEAN,), (PIXEL_STD,))])
    root = torchvision_root()
    train = datasets.FashionMNIST(root, train=True, transform=tf, download=False)
    test = datasets.FashionMNIST(root, train=False, transform=tf, download=False)
    if limit:
        train, test = Subset(train, range(limit)), Subset(test, range(limit // 3))
    loader = DataLoader(train, batch_size=64, shuffle=True)
    test_loader = DataLoader(test, batch_size=1000)
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
            for x, y in test_loader:
                correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        history.append(
            {
                "epoch": epoch,
                "epoch_seconds": train_s,
                "images_per_second": len(train) / train_s,
                "test_accuracy": correct / len(test),
                "eval_seconds": time.perf_counter() - t1,
            }
        )
        logging.info("baseline epoch %d: %.1fs, test %.4f", epoch, train_s, history[-1]["test_accuracy"])
    return summarise("baseline (DataLoader, Adam, fp32)", history)


def run_profile(name: str, device: torch.device, limit: int | None, epochs: int | None) -> dict:
    """The project's trainer with a shipped profile's base hyper-parameters, the test set as its per-epoch check."""
    profile = load_profile(CONFIG_DIR / f"{name}.yaml")
    hp = profile.hparams if epochs is None else profile.hparams.model_copy(update={"epochs": epochs})
    data = load_dataset()
    n = limit or len(data.train_labels)
    # Train on all training images and score the test set each epoch: the same protocol as the baseline.
    splits = Splits(
        data.train_images[:n],
        data.train_labels[:n],
        data.test_images[: n // 3 if limit else None],
        data.test_labels[: n // 3 if limit else None],
    )
    t0 = time.perf_counter()
    result = train_model(hp, splits, device, seed=profile.seed, amp=amp_dtype(device, profile.compute.amp))
    total = time.perf_counter() - t0
    history = [
        {
            "epoch": h["epoch"],
            "epoch_seconds": h["epoch_seconds"],
            "images_per_second": h["images_per_second"],
            "test_accuracy": h["val_accuracy"],
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
            if h["test_accuracy"] >= t and f"{t:.2f}" not in tta:
                tta[f"{t:.2f}"] = elapsed
    return {
        "label": label,
        "history": history,
        "images_per_second": float(np.mean([h["images_per_second"] for h in history])),
        "epoch_seconds": float(np.mean([h["epoch_seconds"] for h in history])),
        "final_test_accuracy": history[-1]["test_accuracy"],
        "best_test_accuracy": max(h["test_accuracy"] for h in history),
        "time_to_accuracy": tta,
    }


def print_table(results: list[dict]) -> None:
    base = results[0]
    cols = "".join(f"{'t->' + t[2:] + '%':>9}" for t in (f"{x:.2f}" for x in THRESHOLDS))
    print(f"\n{'trainer':38}{'img/s':>9}{'s/epoch':>9}{'best acc':>9}{cols}{'img/s x':>9}")
    for r in results:
        tta = "".join(
            f"{r['time_to_accuracy'][t]:>9.1f}" if t in r["time_to_accuracy"] else f"{'-':>9}"
            for t in (f"{x:.2f}" for x in THRESHOLDS)
        )
        ratio = r["images_per_second"] / base["images_per_second"]
        print(
            f"{r['label']:38}{r['images_per_second']:>9.0f}{r['epoch_seconds']:>9.1f}"
            f"{r['best_test_accuracy']:>9.4f}{tta}{ratio:>9.2f}"
        )
    for r in results[1:]:
        for t, s in r["time_to_accuracy"].items():
            if t in base["time_to_accuracy"]:
                print(f"{r['label']}: time to {float(t):.0%} is {base['time_to_accuracy'][t] / s:.1f}x faster")
    print("per-epoch test accuracy:")
    for r in results:
        print(f"  {r['label']}: " + " ".join(f"{h['test_accuracy']:.4f}" for h in r["history"]))


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
    results = [run_baseline(device, 1 if args.quick else args.baseline_epochs, limit)]
    results += [run_profile(p, device, limit, 1 if args.quick else None) for p in profiles]
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": describe_device(device), "results": results}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
