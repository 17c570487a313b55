"""ScoreFlow: score a whole catalogue of images with a FashionFlow model, in shards, as the service would answer each.

python flows/score_flow.py run --input photos/                                  # the run tagged `production`
python flows/score_flow.py run --input photos.txt --run FashionFlow/<id>       # a list file, a given model run
python flows/score_flow.py run --input s3://bucket/photos/ --output s3://bucket/scores/ --format csv
python flows/score_flow.py --config config configs/score/batch.yaml run --input s3://...   # shards on AWS Batch
python flows/score_flow.py resume                                               # re-scores only the failed shards
"""

from __future__ import annotations

import logging
import time

from metaflow import Config, FlowSpec, Parameter, card, current, step
from score_cards import LiveShardCard, catalogue_card
from score_io import (
    ShardCheckpoint,
    failing_shards,
    kill_after,
    kill_now,
    list_sources,
    reader_for,
    write_table,
)
from score_runs import find_model_run, mark_used
from shared_cloud import cloud_compute
from shared_hints import card_hint

from fmnist.release.catalogue import (
    DEFAULT_SCORE_PROFILE_PATH,
    ScoreProfile,
    build_classifier,
    parse_score_profile,
    read_table,
    rows_frame,
    score_shard,
    split_shards,
    summarize,
    table_bytes,
)

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cloud_compute(config="config", step="score")
class ScoreFlow(FlowSpec):
    """Score every image of a catalogue with a FashionFlow model: one row per image, as the service answers.

    Steps:
      start  find the model run (--run, else the newest successful run tagged --model-tag, `production`), copy its
             model record into this run; list the inputs (folder, list file or s3:// prefix) and split them into
             shards
      score  one task per shard (foreach): read, normalise (`fmnist.images.normalise`) and score the shard's images in
             batches with the service's `Classifier`; unreadable files are rows with an error; rows checkpointed to
             the datastore, so a retry continues where the shard stopped; live card
      join   one table (the `table` artifact, a pandas DataFrame) in input order, its summary, the optional
             --output file; card: counts, throughput, classes against the training prior, unsure answers, drift
             signals, least confident thumbnails, unreadable files, the model run
      end    tag the model run as used and print the summary

    The profile (`configs/score/*.yaml`, Metaflow's `config`) says how many shards, how big the batches, and where
    the score step runs: the `cloud_compute` mutator puts it, and only it, on AWS Batch when `compute.batch` is set.
    """

    config = Config(
        "config",
        default=str(DEFAULT_SCORE_PROFILE_PATH),
        parser=parse_score_profile,
        help="Score profile (YAML), e.g. configs/score/batch.yaml; validated before any step runs.",
    )
    source = Parameter("input", required=True, help="A folder of images, a list file (one path a line) or s3://prefix.")
    model_run = Parameter("run", default="", help="FashionFlow/<run-id> whose model scores; default: --model-tag.")
    model_tag = Parameter("model-tag", default="production", help="Without --run: the newest successful run so tagged.")
    output = Parameter("output", default="", help="Also write the table to this folder or s3:// prefix.")
    output_format = Parameter("format", default="parquet", help="Format of --output: parquet or csv.")

    @property
    def profile(self) -> ScoreProfile:
        """The score profile, typed (already validated when Metaflow parsed `config`)."""
        return ScoreProfile(**dict(self.config))

    @step
    def start(self):
        """Find the model run and keep its record; list the inputs and split them into shards."""
        if str(self.output_format) not in ("parquet", "csv"):
            raise ValueError(f"--format must be parquet or csv, not {self.output_format!r}")
        found = find_model_run(str(self.model_run), str(self.model_tag))
        self.model_pathspec, self.model_record, self.model_facts = found.pathspec, found.record, found.facts
        self.paths = list_sources(str(self.source))
        if not self.paths:
            raise ValueError(f"no input found in {self.source!r}")
        self.shards = [
            {"index": i, "start": a, "stop": b}
            for i, (a, b) in enumerate(split_shards(len(self.paths), self.profile.shards))
        ]
        print(f"{len(self.paths)} images in {len(self.shards)} shards, scored by {self.model_pathspec}")
        self.next(self.score, foreach="shards")

    @card(type="blank", refresh_interval=5)
    @step
    def score(self):
        """Score this shard's images in batches; rows already saved by an earlier attempt are kept, not re-scored."""
        profile, shard = self.profile, dict(self.input)
        self.shard_index, paths = shard["index"], self.paths[shard["start"] : shard["stop"]]
        if self.shard_index in failing_shards():
            raise RuntimeError(f"test hook: shard {self.shard_index} fails")
        from fmnist.release.model_record import ModelRecord  # torch: imported where it runs, not at every card refresh

        record = ModelRecord.from_bytes(self.model_record)
        classifier = build_classifier(record, profile.compute.device)
        checkpoint = ShardCheckpoint(self, record.class_names, profile.compute.checkpoint_seconds, time.perf_counter)
        done = checkpoint.restore()
        live = LiveShardCard(self.shard_index, len(paths), len(done))
        on_rows = self._on_rows(checkpoint, live, kill_after(self.shard_index) if current.retry_count == 0 else None)
        self.shard_started = time.time()
        outcome = score_shard(
            classifier,
            paths,
            reader_for(paths, profile.max_file_bytes),
            batch_size=profile.batch_size,
            max_pixels=profile.max_image_pixels,
            threads=profile.compute.threads,
            done=done,
            on_rows=on_rows,
        )
        self.shard_finished = time.time()
        self.shard_table = table_bytes(rows_frame(outcome.rows, record.class_names))
        self.shard_stats = {
            "index": self.shard_index,
            "images": len(paths),
            "scored": outcome.scored,
            "restored": len(done),
            "seconds": outcome.seconds,
            "runtime": classifier.runtime,
            "attempt": current.retry_count,
        }
        self.least_confident = outcome.least_confident
        self.next(self.join)

    def _on_rows(self, checkpoint, live, kill_at):
        """The per-batch callback: checkpoint the rows, refresh the live card; the kill test hook after `kill_at`."""
        started, batches, scored = time.perf_counter(), [0], [0]

        def on_rows(rows):
            checkpoint.save(rows, force=kill_at is not None)
            batches[0] += 1
            scored[0] += len(rows)
            live.on_batch(len(rows), time.perf_counter() - started, scored[0])
            if kill_at is not None and batches[0] >= kill_at:
                kill_now()

        return on_rows

    @card(type="blank")
    @step
    def join(self, inputs):
        """One table in input order, its summary and throughput; the --output file; the catalogue card."""
        import pandas as pd

        from fmnist.release.model_record import ModelRecord

        ordered = sorted(inputs, key=lambda inp: inp.shard_index)
        record = ModelRecord.from_bytes(ordered[0].model_record)
        self.table = pd.concat([read_table(inp.shard_table) for inp in ordered], ignore_index=True)
        self.merge_artifacts(inputs, include=["model_pathspec", "model_facts", "paths"])
        self.shard_report = [inp.shard_stats for inp in ordered]
        wall = max(inp.shard_finished for inp in ordered) - min(inp.shard_started for inp in ordered)
        shard_seconds = sum(s["seconds"] for s in self.shard_report)
        scored_now = sum(s["scored"] for s in self.shard_report)
        self.throughput = {
            "shards": len(ordered),
            "wall_seconds": wall,
            "images_per_second": scored_now / wall if wall > 0 else 0.0,
            "images_per_shard_second": scored_now / shard_seconds if shard_seconds > 0 else 0.0,
        }
        self.summary = summarize(self.table, record)
        least = sorted((item for inp in ordered for item in inp.least_confident), key=lambda item: item[0])[:16]
        self.output_url = None
        if self.output:
            name = f"{current.flow_name}-{current.run_id}"
            self.output_url = write_table(self.table, str(self.output), name, str(self.output_format))
        model = {"run": self.model_pathspec, "facts": self.model_facts, "provenance": record.provenance}
        current.card.extend(catalogue_card(self.summary, self.throughput, model, least))
        self.next(self.end)

    @step
    def end(self):
        """Tag the model run as used by this run, and print the summary."""
        run = f"{current.flow_name}/{current.run_id}"
        mark_used(self.model_pathspec, run)
        s = self.summary
        family = sum(s["family_only"].values())
        print(
            f"{s['images']} images: {s['scored']} scored ({s['unsure']} unsure,"
            f" {family} confident of the family alone),"
            f" {s['unreadable']} unreadable"
        )
        print(f"model {self.model_pathspec}; {self.throughput['images_per_second']:.0f} images/s")
        if self.output_url:
            print(f"table written to {self.output_url}")
        print(f"table: Run('{run}').data.table")
        for line in card_hint("card", __file__, current.flow_name, current.run_id, "join", current.username):
            print(line)


if __name__ == "__main__":
    ScoreFlow()
