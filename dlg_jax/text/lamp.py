"""The LAMP protocol: pair a batch's reconstructions with its references.

A batch attack returns its sentences in no particular order (and may find
fewer than `B`), so each reference is scored against the reconstruction a
Hungarian assignment on ROUGE-1 gives it, as LAMP does; a reference left
without a reconstruction scores against the empty sentence (0).

References:
  Balunovic, Dimitrov, Jovanovic and Vechev, "LAMP: Extracting Text from
  Gradients with Language Model Priors", NeurIPS 2022, sec. 5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.optimize

from dlg_jax.text import data


def pair_by_rouge1(recovered: Sequence[str], references: Sequence[str]
                   ) -> list[int | None]:
  """For each reference, the index of its reconstruction (or None).

  Maximises the summed ROUGE-1 F-measure over one-to-one pairs
  (`scipy.optimize.linear_sum_assignment`).

  Args:
    recovered: the reconstructions, any order.
    references: the batch's sentences.

  Returns:
    `len(references)` indices into `recovered`, None where none is left.

  Example:
    >>> pair_by_rouge1(['b c', 'a b'], ['a b', 'b c', 'x'])
    [1, 0, None]
  """
  pairs: list[int | None] = [None] * len(references)
  if not recovered or not references:
    return pairs
  gain = np.array([[data.rouge_n(r, t, 1) for r in recovered]
                   for t in references])
  rows, cols = scipy.optimize.linear_sum_assignment(-gain)
  for t, r in zip(rows, cols):
    pairs[int(t)] = int(r)
  return pairs
