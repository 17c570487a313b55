"""The ground floor: the run profile, the verified data, the network, the machine it runs on, provenance, and batched
inference. Every other room builds on it; it imports no other room."""
