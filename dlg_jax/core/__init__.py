"""The core: what a gradient-leakage attack needs whatever the data.

Modules:
  client: what a federated client computes and shares (FedSGD, FedAvg).
  defenses: what a client does to its gradient before sharing it.
  objectives: gradient distances, per-layer weights and image priors.
  optim: the attack's optimisers, as optax transformations.
  parallel: meshes, sharding of independent jobs, multi-process set-up.
  npz: reading a user's npz archive without pickle.
  checkpoint: one orbax checkpoint of parameters, state and a description.
  errors: `ConfigError`, a bad value named in one line.
  figures: JSON, reconstruction grids and line plots.

Nothing here imports `dlg_jax.vision`, `dlg_jax.text` or the pipelines.
"""
