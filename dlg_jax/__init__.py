"""dlg_jax: Deep Leakage from Gradients in JAX."""
