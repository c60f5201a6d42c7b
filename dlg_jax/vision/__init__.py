"""Gradient leakage of images: DLG / iDLG on classifiers.

Modules:
  models: the DLG LeNet, a ConvNet, a small ResNet.
  data: bundled real samples, a user's npz or image files, tfds.
  labels: labels read off the last layer's gradient (iDLG, counts).
  attack: the attack for one job and `reconstruct`, the vmapped runner.
  matching: pairing a batch's reconstructions with the originals.
  metrics: MSE, PSNR, SSIM, label accuracy.
  train: training the shared model first.
  sweep: the attack over defenses and strengths, sharded and resumable.
  utility: accuracy of models trained under each defense.
  identifiability: the linearised noise bound.

Imports `dlg_jax.core`, never `dlg_jax.text` or the pipelines.
"""
