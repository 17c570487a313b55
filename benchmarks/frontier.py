"""Accuracy against wall time for candidate shapes of the default run, measured side by side in one run.

    python benchmarks/frontier.py [--quick] [--profile default] [--only NAME ...] [--candidate NAME:KEY=VALUE,...]
                                  [--yardstick NAME] [--train-subset N] [--epochs N] [--seeds S ...] [--json PATH]

Each candidate is the profile's base trial with some hyper-parameters changed (width, depth, epochs, batch size, lr)
and a precision (`amp`: off = fp32, bf16 = bf16 autocast; channels-last is how the trainer always lays out its
batches). Candidates train on the profile's training split and are scored on its validation split only: the test
set is never read here, so what this prints can choose a profile. They run as the default run's trials do, two at a
time on one core each, so each wall time includes the contention of a neighbour, and every ratio is against a
yardstick row of the same run (the current profile unless `--yardstick` names another): a shared machine's load
moves absolute times, much less the ratios of trials trained together.

Every row prints validation accuracy of the same weights as one view (`val acc`) and flip-averaged (`+flip`: the
mean of the logits of an image and its mirror, what `flip_tta: true` makes the network do wherever it is evaluated
or served); the real phone photos' validation split as the service normalises them (`photos`: the share whose
answer, flip-averaged, is a right class: the class, or one of the family's for a longsleeve or shoes; garments
without a class left out, as are uploads normalised to nothing; `family`: the share whose answer is of the right garment
family; `no cls`: the mean top probability of the hats, shorts and skirts, which have no class); and whether the
profile's two trials finish sooner side by side on one core each or one after the other on every core.

A single trial's score moves with its seed (on validation, the default trial by up to 0.64 points across four
seeds): `--seeds 0 1 2 3` trains every candidate once per run seed, prints each seed's table, then each candidate's
mean and range over the seeds, so that a difference smaller than the seed's own can be told from one that is not.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmnist.core.config import CONFIG_DIR, HParams, Profile, expand_grid, load_profile
from fmnist.core.data import FAMILY_OF
from fmnist.core.inference import predict_logits
from fmnist.core.model import build_model
from fmnist.core.real_photos import load_real_photos
from fmnist.core.runtime import amp_dtype
from fmnist.pipeline import prepare_data, trial_seed
from fmnist.training.loop import train_model
from fmnist.training.photo_batches import photo_training_set
from fmnist.trust.calibration import expected_calibration_error, fit_temperature, softmax

log = logging.getLogger("frontier")

# name -> changes to the profile's base trial. "current" is the profile as it ships (its own precision, resolved
# as a run resolves it), the yardstick unless `--yardstick` names another row. The others name their shape and
# length in full, so that they mean the same whatever the profile's base: "w16 fp32 15ep" is the default run's trial
# before it trained in bf16 for 22 epochs.
CANDIDATES: dict[str, dict[str, Any]] = {
    "current": {},
    "w16 fp32 15ep": {"width": 16, "epochs": 15, "amp": "off"},
    "w16 bf16 15ep": {"width": 16, "epochs": 15, "amp": "bf16"},
    "w16 bf16 24ep": {"width": 16, "epochs": 24, "amp": "bf16"},
    "w20 bf16 15ep": {"width": 20, "epochs": 15, "amp": "bf16"},
    "w24 bf16 15ep": {"width": 24, "epochs": 15, "amp": "bf16"},
    "w24 bf16 12ep": {"width": 24, "epochs": 12, "amp": "bf16"},
    "w32 bf16 8ep": {"width": 32, "epochs": 8, "amp": "bf16"},
    "w16 bf16 15ep bs128": {"width": 16, "epochs": 15, "amp": "bf16", "batch_size": 128},
    # The share of real phone photos in each batch (`real_photo_share`), against the profile's own.
    "no real photos": {"real_photo_share": 0.0},
    "real photos 0.05": {"real_photo_share": 0.05},
    "real photos 0.2": {"real_photo_share": 0.2},
}
QUICK = ("current", "w16 bf16 15ep")


def parse_candidate(text: str) -> tuple[str, dict[str, Any]]:
    """'NAME:width=24,amp=bf16' -> ('NAME', {'width': 24, 'amp': 'bf16'}); values are typed by HParams."""
    name, _, body = text.partition(":")
    changes: dict[str, Any] = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        changes[key.strip()] = value.strip()
    return name, changes


def resolve(profile: Profile, changes: dict[str, Any], epochs: int | None) -> tuple[HParams, str]:
    """The trial's validated hyper-parameters and amp setting for one candidate."""
    updates = {k: v for k, v in changes.items() if k != "amp"}
    if epochs is not None:
        updates["epochs"] = epochs
    hp = HParams(**{**profile.hparams.model_dump(), **updates})
    return hp, str(changes.get("amp", profile.compute.amp))


def train_candidate(
    profile_path: str, data: dict[str, Any], hparams: dict[str, Any], amp: str, threads: int, seed: int
) -> dict[str, Any]:
    """One trial in this (worker) process on `threads` cores: wall seconds, training seconds and validation scores."""
    torch.set_num_threads(threads)
    profile = load_profile(profile_path)
    # The candidate as the profile's base trial, so the data it needs (real photos to train on) is prepared.
    update = {"data": profile.data.model_copy(update=data), "hparams": HParams(**hparams), "grid": {}}
    profile = profile.model_copy(update=update)
    splits = prepare_data(profile).splits
    device = torch.device("cpu")
    dtype = amp_dtype(device, amp)
    t0 = time.perf_counter()
    result = train_model(HParams(**hparams), splits, device, seed=seed, amp=dtype)
    wall = time.perf_counter() - t0  # training plus its per-epoch validation, as in a run's train step
    # The same weights scored as one view and flip-averaged, whichever the candidate's `flip_tta` ships (its wall
    # time includes its own per-epoch validation, which flip averaging doubles).
    single, averaged = (build_model(replace(result.model_args, flip_tta=tta)) for tta in (False, True))
    single.load_state_dict(result.state_dict)
    averaged.load_state_dict(result.state_dict)
    # The served model runs in fp32 (ONNX Runtime), so the final scores are fp32 whatever the training precision.
    labels = torch.from_numpy(splits.val_labels.astype(np.int64))
    plain = predict_logits(single, splits.val_images, device)  # (N_val, 10)
    both = predict_logits(averaged, splits.val_images, device)  # (N_val, 10)
    before, after = held_out_ece(both, splits.val_labels)
    photo_images, photo_right = photo_training_set(load_real_photos("validation"))  # (M, 28, 28), (M, 10)
    photo_probs = predict_logits(averaged, photo_images, device).softmax(1).numpy()  # (M, 10)
    has_class = photo_right.any(axis=1)  # (M,): hats, shorts and skirts have none
    answers, right = photo_probs[has_class].argmax(1), photo_right[has_class]  # (m,), (m, 10)
    family_of = np.array(FAMILY_OF)  # (10,): every taught class of a photo is of its one family
    return {
        "real_photo_accuracy": float(right[np.arange(len(answers)), answers].mean()),
        "real_photo_family_accuracy": float((family_of[answers] == family_of[right.argmax(1)]).mean()),
        "real_photos": len(answers),
        # How sure the network is of garments it has no class for (its softmax before any temperature): lower is
        # the honest direction.
        "real_no_class_top_probability": float(photo_probs[~has_class].max(1).mean()),
        "wall_seconds": wall,
        "train_seconds": result.train_seconds,
        "parameters": result.parameters,
        "val_accuracy": (plain.argmax(1) == labels).float().mean().item(),
        "val_accuracy_flip_tta": (both.argmax(1) == labels).float().mean().item(),
        "val_ece_before": before,
        "val_ece_after": after,
        "amp": str(dtype),
        "threads": threads,
        "pid": os.getpid(),
    }


def held_out_ece(logits: torch.Tensor, labels: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """ECE of flip-averaged validation logits (N, C) on one seeded half of the validation split, before and after a
    temperature fitted on the other half, as the evaluate step calibrates: a calibration figure that never scores the
    images its temperature was fitted on."""
    from photo_robustness import split_halves  # the benchmarks' one seeded split of validation into halves

    fit, held = (torch.from_numpy(part) for part in split_halves(len(labels), seed))
    y = np.asarray(labels)
    temperature = fit_temperature(logits[fit], y[fit.numpy()])
    return (
        expected_calibration_error(softmax(logits[held]), y[held.numpy()]),
        expected_calibration_error(softmax(logits[held], temperature), y[held.numpy()]),
    )


def measure_frontier(
    profile_path: Path,
    candidates: dict[str, dict[str, Any]],
    data: dict[str, Any],
    epochs: int | None,
    workers: int,
    seeds: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Every candidate trained once per run seed (`seeds`, default the profile's own), seeded as a run with that seed
    seeds its trial 0, `workers` at a time on one core each; longest (estimated) first. Rows in candidate order within
    each seed, each with its `seed`."""
    profile = load_profile(profile_path)
    seeds = seeds or [profile.seed]
    jobs = {}
    for name, changes in candidates.items():
        hp, amp = resolve(profile, changes, epochs)
        jobs[name] = (hp, amp)
    # The costliest first (a conv net's cost grows with width squared, depth and epochs), so the workers end together.
    order = sorted(jobs, key=lambda n: -(jobs[n][0].width ** 2) * (1 + jobs[n][0].depth) * jobs[n][0].epochs)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {
            (name, seed): pool.submit(
                train_candidate,
                str(profile_path),
                data,
                hp.model_dump(),
                amp,
                1,
                trial_seed(seed, 0),
            )
            for name in order
            for seed in seeds
            for hp, amp in [jobs[name]]
        }
        done = {}
        for future in as_completed(futures.values()):  # logged as they finish: a long run shows its progress
            key = next(k for k, f in futures.items() if f is future)
            name, seed = key
            done[key] = {
                "config": name,
                "seed": seed,
                "hparams": jobs[name][0].model_dump(),
                "amp_setting": jobs[name][1],
            }
            done[key].update(future.result())
            log.info(
                "%s, seed %d: %s", name, seed, {k: done[key][k] for k in ("wall_seconds", "val_accuracy", "parameters")}
            )
    return [done[name, seed] for seed in seeds for name in candidates]


def seed_means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate, in first-seen order: its scores averaged over the seeds it was trained with, and their range."""
    keys = ("val_accuracy_flip_tta", "real_photo_accuracy", "real_photo_family_accuracy", "val_ece_after")
    names = list(dict.fromkeys(r["config"] for r in rows))
    means = []
    for name in names:
        mine = [r for r in rows if r["config"] == name]
        entry: dict[str, Any] = {"config": name, "seeds": [r["seed"] for r in mine]}
        for key in keys:
            values = [r[key] for r in mine]
            entry[key] = sum(values) / len(values)
            entry[f"{key}_range"] = (min(values), max(values))
        means.append(entry)
    return means


def print_seed_means(means: list[dict[str, Any]], yardstick: str) -> None:
    base = next((m for m in means if m["config"] == yardstick), means[0])
    print(
        f"\n{'mean over seeds':20}{'seeds':>7}{'+flip':>8}{'range':>16}{'d +flip':>9}{'photos':>8}{'d photos':>9}"
        f"{'family':>8}{'ECE T':>7}"
    )
    for m in means:
        low, high = m["val_accuracy_flip_tta_range"]
        print(
            f"{m['config']:20}{len(m['seeds']):>7}{m['val_accuracy_flip_tta']:>8.4f}{f'{low:.4f}-{high:.4f}':>16}"
            f"{m['val_accuracy_flip_tta'] - base['val_accuracy_flip_tta']:>+9.4f}{m['real_photo_accuracy']:>8.4f}"
            f"{m['real_photo_accuracy'] - base['real_photo_accuracy']:>+9.4f}{m['real_photo_family_accuracy']:>8.4f}"
            f"{m['val_ece_after']:>7.2%}"
        )
    print(f"(the mean of each seed's row above; d columns against {base['config']!r})")


def measure_parallelism(profile_path: Path, data: dict[str, Any], epochs: int | None, cores: int) -> dict[str, float]:
    """Wall seconds of the profile's grid trained side by side on one core each, and one after the other on
    `cores` cores each."""
    profile = load_profile(profile_path)
    points = [hp.model_copy(update={"epochs": epochs}) if epochs else hp for hp in expand_grid(profile)]
    amp = profile.compute.amp
    ctx = multiprocessing.get_context("spawn")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=len(points), mp_context=ctx) as pool:
        futures = [
            pool.submit(train_candidate, str(profile_path), data, hp.model_dump(), amp, 1, trial_seed(profile.seed, i))
            for i, hp in enumerate(points)
        ]
        side_by_side = [f.result()["val_accuracy"] for f in futures]
    parallel = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        futures = [
            pool.submit(
                train_candidate, str(profile_path), data, hp.model_dump(), amp, cores, trial_seed(profile.seed, i)
            )
            for i, hp in enumerate(points)
        ]
        in_turn = [f.result()["val_accuracy"] for f in futures]
    sequential = time.perf_counter() - t0
    return {
        "trials": len(points),
        "parallel_one_core_each_seconds": parallel,
        "sequential_all_cores_seconds": sequential,
        "cores": cores,
        "parallel_val_accuracy": max(side_by_side),
        "sequential_val_accuracy": max(in_turn),
    }


def print_table(rows: list[dict[str, Any]], parallelism: dict[str, float] | None, yardstick: str) -> None:
    base = next((r for r in rows if r["config"] == yardstick), rows[0])
    head = f"{'params':>9}{'amp':>6}{'ep':>4}{'wall s':>9}{'val acc':>9}{'+flip':>8}{'wall x':>8}{'d val':>8}"
    head += f"{'photos':>8}{'d photos':>9}{'family':>8}{'no cls':>8}{'ECE':>7}{'ECE T':>7}"
    print(f"\n{'config':20}{head}")
    for r in rows:
        amp = "bf16" if "bfloat16" in r["amp"] else "fp32"
        print(
            f"{r['config']:20}{r['parameters']:>9}{amp:>6}{r['hparams']['epochs']:>4}{r['wall_seconds']:>9.1f}"
            f"{r['val_accuracy']:>9.4f}{r['val_accuracy_flip_tta']:>8.4f}"
            f"{r['wall_seconds'] / base['wall_seconds']:>8.2f}{r['val_accuracy'] - base['val_accuracy']:>+8.4f}"
            f"{r['real_photo_accuracy']:>8.4f}{r['real_photo_accuracy'] - base['real_photo_accuracy']:>+9.4f}"
            f"{r['real_photo_family_accuracy']:>8.4f}{r['real_no_class_top_probability']:>8.4f}"
            f"{r['val_ece_before']:>7.2%}{r['val_ece_after']:>7.2%}"
        )
    print(f"(validation split only; wall x and d val are against {base['config']!r}, measured in this run)")
    print(
        f"(photos: {base['real_photos']} real phone photos of the validation split with a right class, right as taught:"
        " the exact class where it exists, the family for longsleeves and shoes; family: the right garment family;"
        " no cls: the mean top probability of the hats, shorts and skirts, which have no class)"
    )
    print("(ECE, ECE T: flip-averaged, half the validation split, before and after a temperature fitted on the rest)")
    if parallelism:
        p = parallelism
        print(
            f"grid of {p['trials']} trials: side by side on 1 core each {p['parallel_one_core_each_seconds']:.1f}s, "
            f"one after the other on {p['cores']} cores {p['sequential_all_cores_seconds']:.1f}s "
            f"(x{p['sequential_all_cores_seconds'] / p['parallel_one_core_each_seconds']:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3000 images, 1 epoch, two candidates: checks it runs")
    parser.add_argument("--profile", default="default", help="profile whose base trial the candidates change")
    parser.add_argument("--train-subset", type=int, help="stratified training images, validation included")
    parser.add_argument("--val-size", type=int, help="validation images (default: the profile's)")
    parser.add_argument("--epochs", type=int, help="override every candidate's epochs (to rank cheaply)")
    parser.add_argument(
        "--candidate",
        action="append",
        metavar="NAME:KEY=VALUE,...",
        help="measure this too (repeatable); with it, only the built-in candidates --only names are measured",
    )
    parser.add_argument("--only", nargs="+", choices=CANDIDATES, help="built-in candidates to measure (default: all)")
    parser.add_argument("--yardstick", default="current", help="the row every ratio is against (default current)")
    parser.add_argument("--workers", type=int, default=2, help="trials at once, one core each (default 2)")
    parser.add_argument("--no-parallel-check", action="store_true", help="skip side-by-side vs in-turn timing")
    parser.add_argument("--parallel-epochs", type=int, default=1, help="epochs per trial in that check (default 1)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="run seeds to train every candidate with (default: the profile's)"
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    profile_path = CONFIG_DIR / f"{args.profile}.yaml"
    data: dict[str, Any] = {}
    if args.quick:
        data, epochs = {"train_subset": 3000, "val_size": 500}, 1
        candidates = {name: CANDIDATES[name] for name in QUICK}
    else:
        epochs = args.epochs
        if args.train_subset:
            data["train_subset"] = args.train_subset
        names = args.only or ([] if args.candidate else list(CANDIDATES))
        candidates = {name: CANDIDATES[name] for name in names}
        candidates.update(parse_candidate(c) for c in args.candidate or [])
    if args.val_size:
        data["val_size"] = args.val_size
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; torch {torch.__version__}")
    rows = measure_frontier(profile_path, candidates, data, epochs, args.workers, args.seeds)
    parallelism = None
    if not args.no_parallel_check:
        parallelism = measure_parallelism(profile_path, data, 1 if args.quick else args.parallel_epochs, args.workers)
    seeds = list(dict.fromkeys(r["seed"] for r in rows))
    for seed in seeds:
        if len(seeds) > 1:
            print(f"\nseed {seed}")
        print_table([r for r in rows if r["seed"] == seed], parallelism if seed == seeds[-1] else None, args.yardstick)
    means = seed_means(rows) if len(seeds) > 1 else None
    if means:
        print_seed_means(means, args.yardstick)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"profile": args.profile, "rows": rows, "seed_means": means, "parallelism": parallelism}, indent=2
            )
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
