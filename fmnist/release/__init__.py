"""A released model as users meet it: the self-describing model record, the ONNX scoring graph, the classifier the
service and ScoreFlow answer with, and catalogue scoring. May import `fmnist.core`, `fmnist.images`, `fmnist.trust`."""
