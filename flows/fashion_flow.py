"""FashionFlow: train, compare and ship a Fashion-MNIST CNN.

python flows/fashion_flow.py run                                          # configs/default.yaml
python flows/fashion_flow.py --config config configs/smoke.yaml run      # another profile
python flows/fashion_flow.py resume                                       # rerun what failed
"""

from __future__ import annotations

import logging

from fashion_cards import LiveTrainingCard, dataset_card, leaderboard_card, report_card
from fashion_checkpoints import datastore_checkpoints
from metaflow import Config, FlowSpec, card, current, step
from shared_cloud import cloud_compute
from shared_hints import card_hint

from fmnist.core.config import DEFAULT_PROFILE_PATH, Profile, load_profile, parse_profile
from fmnist.core.data import Splits
from fmnist.evaluation.report_schema import EvaluationReport
from fmnist.training.selection import leaderboard

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cloud_compute
class FashionFlow(FlowSpec):
    """Train, compare and ship a Fashion-MNIST CNN.

    Steps:
      start     expand the profile's hyper-parameter grid into trials; record code and library versions
      load      the real Fashion-MNIST, verified; a seeded stratified validation split; dataset card
      train     one trial per grid point (foreach): a CNN trained on the device it finds; live card per epoch
      join      pick the best trial on validation accuracy; leaderboard card
      evaluate  temperature and "unsure" thresholds fitted on validation, then the chosen model on the test set,
                its first and only use, and on test garments rendered as product photos through the service's own
                normalisation; report card (accuracy interval, per-class scores, confusions, calibration,
                robustness, photos, abstention and risk-coverage, non-garments, provenance)
      end       print the summary

    The profile is Metaflow's `config` (validated by `fmnist.core.config.parse_profile` before any step runs, stored by
    Metaflow with every task: `Run(...).data.config` in the Client API); steps read it through `self.profile`.
    Steps import `fmnist.pipeline` (and with it torch) where they run it: Metaflow imports this file again for
    every card refresh and CLI command, which should not pay for torch each time.
    """

    config = Config(
        "config",
        default=str(DEFAULT_PROFILE_PATH),
        parser=parse_profile,
        help="Run profile (YAML), e.g. configs/smoke.yaml; validated before any step runs.",
    )

    @property
    def profile(self) -> Profile:
        """The run profile, typed (already validated when Metaflow parsed `config`)."""
        return load_profile(dict(self.config))

    @step
    def start(self):
        """Expand the profile's grid into one trial per point and record the code and library versions."""
        from fmnist.pipeline import plan_run

        plan = plan_run(self.profile)
        self.grid, self.environment, self.seed = plan.grid, plan.environment, self.profile.seed
        self.next(self.load)

    @card(type="blank")
    @step
    def load(self):
        """Load and verify the real Fashion-MNIST and split a seeded, stratified validation set off the training set;
        the test set is verified here but first read in evaluate."""
        from fmnist.pipeline import prepare_data

        data = prepare_data(self.profile)
        self.train_images, self.train_labels = data.splits.train_images, data.splits.train_labels
        self.val_images, self.val_labels = data.splits.val_images, data.splits.val_labels
        self.photo_images, self.photo_right = data.splits.photo_images, data.splits.photo_right
        self.data_fingerprint, self.data_summary = data.fingerprint, data.summary
        current.card.extend(dataset_card(self.data_summary, self.train_images, self.train_labels))
        self.next(self.train, foreach="grid")

    @card(type="blank", refresh_interval=5)
    @step
    def train(self):
        """Train one trial (this foreach branch's grid point) on the device this task finds; live card per epoch.

        The trial's full state is checkpointed to the datastore every `compute.checkpoint_every` epochs; a retried
        task (spot reclamation on Batch, `compute.retries` locally) continues from the last one.
        """
        from fmnist.pipeline import train_trial

        self.trial_index, self.hparams = self.index, self.input
        splits = Splits(
            self.train_images, self.train_labels, self.val_images, self.val_labels, self.photo_images, self.photo_right
        )
        live = LiveTrainingCard(self.trial_index, self.hparams)
        checkpoints = datastore_checkpoints(self, self.profile.compute.checkpoint_every, on_resume=live.resumed)
        outcome = train_trial(
            self.profile,
            self.hparams,
            self.trial_index,
            splits,
            parallel_tasks=len(self.grid),
            on_epoch=live.on_epoch,
            run_id=current.run_id,
            checkpoints=checkpoints,
            attempt=current.retry_count,
        )
        self.trained_model, self.trial_summary, self.history = outcome.model, outcome.summary, outcome.history
        live.finish(self.trial_summary)
        self.next(self.join)

    @card(type="blank")
    @step
    def join(self, inputs):
        """Rank the trials on validation accuracy (never the test set) and keep the best one's trained model."""
        self.leaderboard = leaderboard([inp.trial_summary for inp in inputs])
        best = next(inp for inp in inputs if inp.trial_index == self.leaderboard[0]["index"])
        self.best_trial, self.best_hparams = best.trial_index, best.hparams
        self.best_val_accuracy, self.trained_model = best.trial_summary["val_accuracy"], best.trained_model
        self.merge_artifacts(
            inputs,
            include=["grid", "environment", "seed", "data_fingerprint", "data_summary", "val_images", "val_labels"],
        )
        current.card.extend(leaderboard_card(self.leaderboard))
        self.next(self.evaluate)

    @card(type="blank")
    @step
    def evaluate(self):
        """Calibrate the chosen model and fit its "unsure" thresholds on validation, then evaluate it on the test set
        and on rendered product photos; the calibrated model record is what the service loads."""
        from fmnist.pipeline import evaluate_selected

        provenance = {**self.environment, "run": current.pathspec.rsplit("/", 2)[0], "profile": self.profile.name}
        result = evaluate_selected(
            self.trained_model,
            self.profile,
            self.data_fingerprint,
            provenance,
            self.val_images,
            self.val_labels,
            run_id=current.run_id,
        )
        report = result.report
        self.calibrated_model, self.report = result.model, report.to_artifact()
        self.test_metrics = self.report["test"]
        self.test_accuracy, self.temperature = report.test.accuracy, report.calibration.temperature
        current.card.extend(report_card(report))
        self.next(self.end)

    @step
    def end(self):
        """Print the chosen trial, its accuracy, calibration, photo robustness and abstention, and how to get the
        cards."""
        print(f"best trial {self.best_trial}: {self.best_hparams}")
        print(f"validation accuracy {self.best_val_accuracy:.4f}, test accuracy {self.test_accuracy:.4f}")
        for line in EvaluationReport.model_validate(self.report).summary_lines():
            print(line)
        print(f"run {current.flow_name}/{current.run_id}")
        for label, card_step in (("report card", "evaluate"), ("leaderboard card", "join")):
            for line in card_hint(label, __file__, current.flow_name, current.run_id, card_step, current.username):
                print(line)


if __name__ == "__main__":
    FashionFlow()
