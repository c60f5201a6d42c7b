"""Gradient leakage of text: DLG on a BERT masked language model.

Modules:
  bert: the BERT masked LM in Flax and its pretrained weights.
  data: WordPiece, the bundled sentences and ROUGE.
  attack: the client's MLM gradient, what it leaks, and the relaxed attack.

Imports `dlg_jax.core`, never `dlg_jax.vision` or the pipelines.
"""
