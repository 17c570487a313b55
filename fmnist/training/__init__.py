"""Making a model: the device-resident training loop, its checkpoints, and the leaderboard of trials. May import
`fmnist.core`, `fmnist.images`, `fmnist.trust`, `fmnist.release`; never `fmnist.evaluation`."""
