"""How far an answer can be believed: temperature calibration, the "unsure" policy (`abstention`) and its fitting on
validation (`abstention_fit`), drift signals. May import `fmnist.core` only."""
