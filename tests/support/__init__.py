"""Helpers shared by the tests, imported as `from tests.support.<module> import ...`.

- `flows`: the repository's paths and the flow run through Metaflow's Runner API (`run_flow`, `resume_flow`).
- `images`: real Fashion-MNIST test images, encoded as files, and a crafted decompression bomb.
- `releases`: a second smoke run, a private datastore, the service as a process under load, for the promotion and
  live-reload tests; `fashion_flow_stand_in.py` a small flow that leaves broken candidates (a corrupt record, none).
- `aws`: the local AWS stand-in (moto's server on loopback, a bucket, a Batch queue) as pytest fixtures, registered
  by `tests/conftest.py` through `pytest_plugins`.
"""
