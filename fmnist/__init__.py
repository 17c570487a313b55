"""FashionFlow's library, in rooms by concern (docs/architecture.md has the map and the import rules):

    core        the run profile, verified data, the network, the machine, provenance, batched inference
    images      uploads to a Fashion-MNIST-style 28x28: checks, decoding, the one normalisation
    trust       calibration, the "unsure" policy and its fitting, drift signals
    release     the model record, the ONNX scoring graph, the classifier, catalogue scoring
    training    the training loop, checkpoints, the leaderboard
    evaluation  metrics, the evaluation report and its suites, plots

`pipeline`, `tracking` and `promotion` are the faces the flows call. The library knows nothing of Metaflow or
FastAPI: the flows and the service are thin shells around it; `make lint` checks these rules (import-linter).
"""

__version__ = "0.1.0"
