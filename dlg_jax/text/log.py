"""The DLG paper's text log: the recovered sentence per iteration.

The paper's NLP figure prints the attacker's guess as `[iter=k] ...` lines
and the client's sentence last as `[Ground Truth] ...`.

References:
  Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, sec. 4.2.
"""

from collections.abc import Sequence


def log_line(step: int, text: str) -> str:
  """`[iter=step] text`, a line of the DLG paper's NLP figure."""
  return f'[iter={step}] {text}'


def ground_truth_line(text: str) -> str:
  """`[Ground Truth] text`, the last line of the DLG paper's NLP figure."""
  return f'[Ground Truth] {text}'


def format_log(steps: Sequence[int], texts: Sequence[str],
               reference: str) -> list[str]:
  """The DLG figure's lines: one per snapshot, then the ground truth.

  Args:
    steps: the iteration of each snapshot.
    texts: the sentence recovered at each snapshot.
    reference: the client's sentence.

  Returns:
    `len(steps) + 1` lines.

  Example:
    >>> format_log([0, 10], ['a b', 'c d'], 'C D')
    ['[iter=0] a b', '[iter=10] c d', '[Ground Truth] C D']
  """
  if len(steps) != len(texts):
    raise ValueError(f'{len(steps)} steps but {len(texts)} texts.')
  return ([log_line(s, t) for s, t in zip(steps, texts)]
          + [ground_truth_line(reference)])
