"""Pictures from outside, bytes to a Fashion-MNIST-style 28x28: upload checks and decoding (`uploads`), then the one
normalisation every outside picture goes through (`normalise`). May import `fmnist.core` only."""
