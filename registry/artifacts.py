"""The names of the artifacts a FashionFlow run stores that other programs read, so a rename is one edit.

The flow itself assigns them as attributes (`self.calibrated_model = ...`); everything that reads a run through the
Client API names them from here.
"""

MODEL_FLOW = "FashionFlow"

# The calibrated model record (safetensors bytes, `fmnist.release.model_record`), on the evaluate and end steps.
MODEL = "calibrated_model"
# Its name in runs made before the rename.
LEGACY_MODEL = "model"
# The run profile, as Metaflow's Config stored it; `profile` in runs made before profiles became a Config.
CONFIG = "config"
LEGACY_PROFILE = "profile"
# The evaluation report (`fmnist.evaluation.report_schema.EvaluationReport.to_artifact()`).
REPORT = "report"
TEST_ACCURACY = "test_accuracy"
TEST_METRICS = "test_metrics"
BEST_HPARAMS = "best_hparams"
DATA_FINGERPRINT = "data_fingerprint"
