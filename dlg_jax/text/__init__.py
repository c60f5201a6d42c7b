"""Gradient leakage of text: DLG on a BERT masked language model.

Modules, each importing only those above it:
  bert: the BERT masked LM in Flax and its pretrained weights.
  data: WordPiece, the bundled sentences and ROUGE.
  client: the client's masked-LM step and the gradient it shares.
  leakage: what that gradient gives away directly: length, input tokens
    with their positions, and the masked tokens.
  relaxed: the attack, DLG over soft tokens restricted by the leak.
  batch: the client's masked-LM step on a batch of sentences.
  spans: the batch attack, from the spans of the weight gradients (DAGER):
    bag, rows, (token, position) pairs, lengths, sentences, labels.
  lamp: the LAMP protocol's pairing of reconstructions with references.
  recover: end to end, the client's step then the attack (one sentence, or
    a batch).
  log: the DLG paper's per-iteration text log.

Imports `dlg_jax.core`, never `dlg_jax.vision` or the pipelines.
"""
