"""The run registry: the one place that finds a FashionFlow run (by pathspec, id or tag) and reads its model.

The service (`serving`), ScoreFlow and PromoteFlow all ask it; the artifact names a FashionFlow run stores are
constants in `registry.artifacts`. It imports Metaflow's Client API and nothing of training or evaluation.
"""
