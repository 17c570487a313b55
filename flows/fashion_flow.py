"""FashionFlow: train, compare and ship a Fashion-MNIST CNN.

python flows/fashion_flow.py run                                          # configs/default.yaml
python flows/fashion_flow.py --config config configs/smoke.yaml run      # another profile
python flows/fashion_flow.py resume                                       # rerun what failed
"""

from __future__ import annotations

import logging

from fashion_cloud import cloud_compute
from flow_cards import LiveTrainingCard, dataset_card, leaderboard_card, report_card
from metaflow import Config, FlowSpec, card, current, step

from fmnist.config import DEFAULT_PROFILE_PATH, parse_profile
from fmnist.data import Splits
from fmnist.selection import leaderboard

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cloud_compute
class FashionFlow(FlowSpec):
    """Train, compare and ship a Fashion-MNIST CNN.

    Steps:
      start     validate the profile, expand the hyper-parameter grid, record seed and code/library versions
      load      the real Fashion-MNIST, verified; a seeded stratified validation split; dataset card
      train     one split per grid point (foreach): a CNN trained on the device it finds; live card per epoch
      join      pick the best split on validation accuracy; leaderboard card
      evaluate  temperature and "unsure" thresholds fitted on validation, then the chosen model on the test set,
                its first and only use, and on test garments rendered as product photos through the service's own
                normalisation; report card (accuracy interval, per-class scores, confusions, calibration,
                robustness, photos, abstention and risk-coverage, non-garments, provenance)
      end       print the summary

    The steps import `fmnist.pipeline` (and with it torch) where they run it: Metaflow imports this file again for
    every card refresh and CLI command, which should not pay for torch each time.
    """

    config = Config(
        "config",
        default=str(DEFAULT_PROFILE_PATH),
        parser=parse_profile,
        help="Run profile (YAML), e.g. configs/smoke.yaml; validated before any step runs.",
    )

    @step
    def start(self):
        from fmnist.pipeline import plan_run

        plan = plan_run(dict(self.config))
        self.profile, self.grid, self.environment = plan.profile, plan.grid, plan.environment
        self.seed = self.profile["seed"]
        self.next(self.load)

    @card(type="blank")
    @step
    def load(self):
        from fmnist.pipeline import prepare_data

        data = prepare_data(self.profile)
        self.train_images, self.train_labels = data.splits.train_images, data.splits.train_labels
        self.val_images, self.val_labels = data.splits.val_images, data.splits.val_labels
        self.data_fingerprint, self.data_summary = data.fingerprint, data.summary
        current.card.extend(dataset_card(self.data_summary, self.train_images, self.train_labels))
        self.next(self.train, foreach="grid")

    @card(type="blank", refresh_interval=5)
    @step
    def train(self):
        from fmnist.pipeline import train_split

        self.split_index, self.hparams = self.index, self.input
        splits = Splits(self.train_images, self.train_labels, self.val_images, self.val_labels)
        live = LiveTrainingCard(self.split_index, self.hparams)
        outcome = train_split(
            self.profile,
            self.hparams,
            self.split_index,
            splits,
            parallel_tasks=len(self.grid),
            on_epoch=live.on_epoch,
            run_id=current.run_id,
        )
        self.model_record, self.split_summary, self.history = outcome.record, outcome.summary, outcome.history
        live.finish(self.split_summary)
        self.next(self.join)

    @card(type="blank")
    @step
    def join(self, inputs):
        self.leaderboard = leaderboard([inp.split_summary for inp in inputs])
        best = next(inp for inp in inputs if inp.split_index == self.leaderboard[0]["index"])
        self.best_index, self.best_hparams = best.split_index, best.hparams
        self.best_val_accuracy, self.model_record = best.split_summary["val_accuracy"], best.model_record
        self.merge_artifacts(
            inputs,
            include=[
                "profile",
                "grid",
                "environment",
                "seed",
                "data_fingerprint",
                "data_summary",
                "val_images",
                "val_labels",
            ],
        )
        current.card.extend(leaderboard_card(self.leaderboard))
        self.next(self.evaluate)

    @card(type="blank")
    @step
    def evaluate(self):
        from fmnist.pipeline import evaluate_selected

        provenance = {**self.environment, "run": current.pathspec.rsplit("/", 2)[0], "profile": self.profile["name"]}
        result = evaluate_selected(
            self.model_record,
            self.profile,
            self.data_fingerprint,
            provenance,
            self.val_images,
            self.val_labels,
            run_id=current.run_id,
        )
        self.model, self.test_metrics, self.report = result.record, result.metrics, result.report
        self.test_accuracy, self.temperature = self.test_metrics["accuracy"], self.report["calibration"]["temperature"]
        current.card.extend(report_card(self.report))
        self.next(self.end)

    @step
    def end(self):
        run = f"{current.flow_name}/{current.run_id}"
        print(f"best split {self.best_index}: {self.best_hparams}")
        print(f"validation accuracy {self.best_val_accuracy:.4f}, test accuracy {self.test_accuracy:.4f}")
        cal = self.report["calibration"]
        print(
            f"temperature {cal['temperature']:.3f}: test ECE {cal['test_before']['ece']:.2%} -> "
            f"{cal['test_after']['ece']:.2%}; report card: python flows/fashion_flow.py card view {run}/evaluate"
        )
        photos, abstention = self.report["photos"], self.report["abstention"]
        print(
            f"photos: worst realistic condition {photos['worst']['condition']} at {photos['worst']['accuracy']:.1%}"
            f" ({photos['worst']['relative']:.2f} x clean {photos['clean_accuracy']:.1%})"
        )
        selective = abstention["test"]
        print(
            f"unsure: {selective['coverage']:.1%} of test answers confident, {selective['accuracy'] or 0:.2%} of those"
            f" correct; {abstention['nongarments']['overall']:.1%} of synthetic non-garments marked unsure"
        )
        print(f"run {run}; leaderboard card: python flows/fashion_flow.py card view {run}/join")


if __name__ == "__main__":
    FashionFlow()
