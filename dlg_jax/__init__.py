"""dlg_jax: Deep Leakage from Gradients in JAX.

Three layers of library, each importing only those above it in this list:

  core: what any gradient-leakage attack needs, whatever the data: the
    federated client (`client`), the defenses a client applies to what it
    shares (`defenses`), gradient distances and priors (`objectives`), the
    optimisers (`optim`), sharding over devices (`parallel`), safe npz
    reading (`npz`), one-line config errors (`errors`) and output files
    (`figures`).
  vision / text: the attack on images (classifiers, labels, metrics,
    matching, the defense sweep and its orbax store) and on sentences (a
    BERT masked LM, WordPiece, the text attack). Neither imports the other.
  pipelines: one `run(config, workdir)` per experiment, the only library
    code that reads ConfigDicts; `experiments/*.py` are absl mains over them.
"""
