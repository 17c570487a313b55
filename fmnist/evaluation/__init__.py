"""Judging a model: metrics, the evaluation report and its schema, plots, and the suites it runs (perturbations,
rendered photos in the studio and in the wild, non-garments). May import every room below it (core, images, trust,
release, training)."""
