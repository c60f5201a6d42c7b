"""How many iterations DLG needs per batch size: `experiments/batch_study.py`.

`run(config, workdir)` runs the vision attack (`pipelines.attack`) once per
batch size in `config.study.batch_sizes` (each in `workdir/batch_<B>`), on
the same first `config.data.count` images, and writes `study.json`,
`study.md` and `study.png` (iterations to `config.success_psnr` against the
batch size); with `config.study.label_sets`, `labels.json` and `labels.md`
(batch label recovery without optimisation); with
`config.study.joint_steps > 0`, `label_comparison.json` and `.md` (DLG's
joint labels against those read off the gradient).
"""

import os
import statistics
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.core import client
from dlg_jax.core import errors
from dlg_jax.core import figures
from dlg_jax.pipelines import attack as attack_pipeline
from dlg_jax.pipelines import common
from dlg_jax.vision import data
from dlg_jax.vision import labels
from dlg_jax.vision import models

# Zhu, Liu and Han 2019, the table beside their batch figure: iterations to
# restore CIFAR batches. Their iteration is a PyTorch L-BFGS step of up to 20
# evaluations; ours is one evaluation.
PAPER_ITERATIONS = {1: 270, 2: 602, 4: 1173, 8: 2711}


def _mean(values: list[float | None]) -> float | None:
  values = [v for v in values if v is not None]
  return statistics.mean(values) if values else None


def _stdev(values: list[float | None]) -> float | None:
  values = [v for v in values if v is not None]
  return statistics.stdev(values) if len(values) > 1 else None


def summarize_batch_size(results: dict[str, Any], success_psnr: float
                         ) -> dict[str, Any]:
  """One row of the study from one `results.json`."""
  batches: dict[int, list[dict[str, Any]]] = {}
  for r in results['records']:
    batches.setdefault(r['batch'], []).append(r)
  steps = [b[0]['success_step'] for b in batches.values()]
  reached = [s for s in steps if s >= 0]
  records = results['records']
  return {
      'batches': len(batches),
      'batches_reached': len(reached),
      # Iterations until every image of the batch is at success_psnr.
      'iterations': steps,
      'median_iterations': (statistics.median(reached)
                            if len(reached) == len(steps) else None),
      'max_iterations': max(reached) if len(reached) == len(steps) else None,
      'mean_psnr': statistics.mean(r['psnr'] for r in records),
      # Sample standard deviation over images; None for a single image.
      'std_psnr': _stdev([r['psnr'] for r in records]),
      'min_psnr': min(r['psnr'] for r in records),
      # LPIPS (AlexNet) over the images that have it: None where none has
      # (results written before LPIPS, or where it failed).
      'mean_lpips': _mean([r.get('lpips') for r in records]),
      'std_lpips': _stdev([r.get('lpips') for r in records]),
      'images_at_25db': sum(r['psnr'] >= 25.0 for r in records),
      'images_at_success_psnr': sum(r['psnr'] >= success_psnr
                                    for r in records),
      'images': len(records),
      'label_accuracy': statistics.mean(r['label_correct'] for r in records),
      'median_seconds': statistics.median(b[0]['seconds']
                                          for b in batches.values()),
  }


def _cell(value: float | None, spec: str) -> str:
  return '-' if value is None else format(value, spec)


def markdown_table(rows: dict[int, dict[str, Any]],
                   success_psnr: float) -> str:
  """The study as a Markdown table, one row per batch size."""
  lines = [
      f'| batch | batches at {success_psnr:g} dB | median iterations to '
      f'{success_psnr:g} dB | DLG paper | images >= 25 dB | mean / min PSNR '
      '(dB) | label accuracy | median seconds per batch | mean LPIPS |',
      '|---|---|---|---|---|---|---|---|---|']
  for b, row in sorted(rows.items()):
    its = row['median_iterations']
    lines.append(
        f'| {b} | {row["batches_reached"]}/{row["batches"]} | '
        f'{"not reached" if its is None else f"{its:g}"} | '
        f'{PAPER_ITERATIONS.get(b, "")} | '
        f'{row["images_at_25db"]}/{row["images"]} | '
        f'{row["mean_psnr"]:.1f} / {row["min_psnr"]:.1f} | '
        f'{row["label_accuracy"]:.0%} | {row["median_seconds"]:.1f} | '
        f'{_cell(row.get("mean_lpips"), ".3f")} |')
  return '\n'.join(lines) + '\n'


def label_groups(ds: data.Dataset, batch: int, rng: np.random.Generator,
                  random_batches: int) -> list[np.ndarray]:
  """Consecutive groups, random subsets, and random draws with repeats."""
  n = len(ds.x)
  groups = [np.arange(s, s + batch) for s in range(0, n - batch + 1, batch)]
  if batch <= n:
    groups += [rng.choice(n, batch, replace=False)
               for _ in range(random_batches)]
  # Draws with replacement repeat labels even in sets of distinct labels.
  groups += [rng.choice(n, batch, replace=True)
             for _ in range(random_batches // 4)]
  return groups


def label_study(sources: dict[str, int], batch_sizes, *, model_seed: int,
                random_batches: int, seed: int) -> dict[str, Any]:
  """Exact-recovery rates of each batch label method on the bundled sets.

  Args:
    sources: bundled set name -> its model's number of classes.
    batch_sizes: the batch sizes to test.
    model_seed: the DLG LeNet's initialisation seed.
    random_batches: random subsets per batch size (plus a quarter as many
      draws with replacement).
    seed: seed of the draws.

  Returns:
    `{source: {batch: {method: rate, 'batches': n, 'repeated': n,
    'count_margin': largest |real count - true count|}}}`.
  """
  out: dict[str, Any] = {}
  # Every set is read before anything is compiled, so a bad name stops the
  # study at once.
  loaded = {source: errors.under('config.study.label_sets', data.load_dataset,
                                 source) for source in sources}
  for source, num_classes in sources.items():
    ds = loaded[source]
    model = models.get_model('lenet', num_classes=num_classes)
    params = models.init_params(model, jax.random.PRNGKey(model_seed),
                                ds.x.shape[1:])
    apply_fn = models.make_apply_fn(model)
    rng = np.random.default_rng(seed)
    out[source] = {}
    for b in batch_sizes:
      methods = ['count'] + (['yin'] if b <= num_classes else []) + (
          ['idlg'] if b == 1 else [])

      @jax.jit
      def recover(x, y, b=b, methods=tuple(methods)):
        grads = client.gradient(apply_fn, params, x,
                                jax.nn.one_hot(y, num_classes))
        got = {m: labels.batch_labels(grads, num_classes, b, method=m,
                                      params=params) for m in methods}
        # The real-valued counts before rounding, to see the margin.
        real = labels.estimate_counts(grads, num_classes, b, params)
        true = jnp.sum(jax.nn.one_hot(y, num_classes), axis=0)
        return got, jnp.max(jnp.abs(real - true))

      hits = {m: 0 for m in methods}
      groups = label_groups(ds, b, rng, random_batches)
      margin, repeated = 0.0, 0
      for g in groups:
        y = ds.y[g]
        got, err = recover(jnp.asarray(ds.x[g]), jnp.asarray(y))
        for m in methods:
          hits[m] += bool(np.array_equal(np.asarray(got[m]), np.sort(y)))
        margin = max(margin, float(err))
        repeated += len(set(y.tolist())) < b
      out[source][b] = {m: hits[m] / len(groups) for m in methods}
      out[source][b].update(batches=len(groups), repeated=repeated,
                            count_margin=margin)
      logging.info('labels %s B=%d: %s', source, b, out[source][b])
  return out


def label_table(study: dict[str, Any]) -> str:
  """The label study as a Markdown table."""
  lines = ['| data | batch | batches (with repeated labels) | count | yin | '
           'idlg | largest count error |', '|---|---|---|---|---|---|---|']
  for source, rows in study.items():
    for b, row in rows.items():
      cell = lambda m, row=row: f'{row[m]:.0%}' if m in row else '-'
      lines.append(
          f'| {source} | {b} | {row["batches"]} ({row["repeated"]}) | '
          f'{cell("count")} | {cell("yin")} | {cell("idlg")} | '
          f'{row["count_margin"]:.3f} |')
  return '\n'.join(lines) + '\n'


def check_comparison(config) -> None:
  """Errors naming the key, before any work."""
  if config.client.local_steps != 1:
    raise errors.ConfigError(
        'config.study.joint_steps > 0 compares labels read off a gradient; '
        'set config.client.local_steps=1 or config.study.joint_steps=0.')
  for b in config.study.batch_sizes:
    if config.study.joint_count % b:
      raise errors.ConfigError(
          f'config.study.joint_count ({config.study.joint_count}) must be a '
          f'multiple of every batch size in config.study.batch_sizes, not of '
          f'{b}.')


def analytic_labels(setup: attack_pipeline.Setup, b: int
                    ) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
  """Each batch's labels read off its gradient, beside its true labels.

  Returns:
    `{method: [(predicted, true), ...]}`, 'count' (and 'idlg' for batch 1),
    one pair per batch of `setup.ds`.
  """
  ds, params, attack = setup.ds, setup.params, setup.attack
  methods = ('count', 'idlg') if b == 1 else ('count',)

  @jax.jit
  def recover(x, y):
    num_classes = attack.threat.num_classes
    grads = client.gradient(attack.threat.apply_fn, params, x,
                            jax.nn.one_hot(y, num_classes))
    return {m: labels.batch_labels(grads, num_classes, b, method=m,
                                   params=params) for m in methods}

  got = {m: [] for m in methods}
  for s in range(0, len(ds.x), b):
    y = ds.y[s:s + b]
    pred = recover(jnp.asarray(ds.x[s:s + b]), jnp.asarray(y))
    for m in methods:
      got[m].append((np.asarray(pred[m]), y))
  return got


def compare_labels(config, b: int, workdir: str) -> dict[str, Any]:
  """One row of `label_comparison`: batch size `b`, in `workdir/joint_<b>`."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.data.batch_size = b
    cfg.data.count = config.study.joint_count
    cfg.attack.label_mode = 'joint'
    cfg.attack.num_steps = config.study.joint_steps
  joint_dir = os.path.join(workdir, f'joint_{b}')
  setup = attack_pipeline.prepare(cfg, joint_dir)
  results = attack_pipeline.run_prepared(cfg, joint_dir, setup)
  batches: dict[int, list[dict[str, Any]]] = {}
  for r in results['records']:
    batches.setdefault(r['batch'], []).append(r)
  got = {'joint': [([r['predicted_label'] for r in rs],
                    [r['label'] for r in rs]) for rs in batches.values()]}
  # The same model and batches as the attack: labels read off their
  # gradients.
  got.update(analytic_labels(setup, b))
  row = {m: {'accuracy': sum(labels.multiset_overlap(p, t) for p, t in pairs)
                         / (b * len(pairs)),
             'exact': statistics.mean(float(labels.multiset_overlap(p, t) == b)
                                      for p, t in pairs)}
         for m, pairs in got.items()}
  row.update(batches=len(batches), joint_mean_psnr=statistics.mean(
      r['psnr'] for r in results['records']))
  return row


def label_comparison(config, workdir: str) -> dict[int, dict[str, Any]]:
  """Batch labels by joint optimisation (DLG) against reading them off.

  For each batch size in `config.study.batch_sizes`, runs the attack with
  `label_mode='joint'` (dummy label logits optimised with the images, as the
  DLG paper) for `config.study.joint_steps` steps on the first
  `config.study.joint_count` images (in `workdir/joint_<B>`), and reads the
  labels of the same batches off the same gradients with 'count' (and
  'idlg' for batch 1). FedSGD only: the analytic methods read a gradient.

  Returns:
    `{batch: {method: {'accuracy': share of labels right (as multisets),
    'exact': share of batches with every label right}, 'batches': n,
    'joint_mean_psnr': dB}}`.
  """
  check_comparison(config)
  out = {}
  for b in config.study.batch_sizes:
    out[b] = compare_labels(config, b, workdir)
    logging.info('label comparison B=%d: %s', b, out[b])
  return out


def comparison_table(rows: dict[int, dict[str, Any]]) -> str:
  """The label comparison as a Markdown table."""
  cell = lambda row, m: (f'{row[m]["accuracy"]:.0%} / {row[m]["exact"]:.0%}'
                         if m in row else '-')
  lines = ['| batch | batches | joint (DLG) labels / batches exact | count | '
           'idlg | joint mean PSNR (dB) |', '|---|---|---|---|---|---|']
  for b, row in sorted(rows.items()):
    lines.append(f'| {b} | {row["batches"]} | {cell(row, "joint")} | '
                 f'{cell(row, "count")} | {cell(row, "idlg")} | '
                 f'{row["joint_mean_psnr"]:.1f} |')
  return '\n'.join(lines) + '\n'


def check_study(config, workdir: str) -> None:
  """The workdir and `config.study`, checked before any work.

  Raises:
    ConfigError: naming the key at fault.
  """
  common.check_workdir(workdir)
  # The same targets as the vision attack: config.data.count, or its
  # default when unset.
  count = common.target_count(config, len(common.load_data(config).x))
  for b in config.study.batch_sizes:
    if b < 1 or count % b:
      raise errors.ConfigError(
          f'config.study.batch_sizes: {b} does not divide config.data.count '
          f'({count}).')
  if config.study.joint_steps:
    check_comparison(config)


def _write_table(path: str, table: str) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    f.write(table)
  logging.info('\n%s', table)


def run_label_studies(config, workdir: str) -> None:
  """`labels.*` and `label_comparison.*`, as `config.study` asks."""
  if config.study.label_sets:
    sources = errors.under('config.study.label_sets', dict,
                           config.study.label_sets)
    study = label_study(
        sources, range(1, config.study.label_max_batch + 1),
        model_seed=config.model.init_seed,
        random_batches=config.study.label_random_batches, seed=config.seed)
    figures.save_json(os.path.join(workdir, 'labels.json'), study)
    _write_table(os.path.join(workdir, 'labels.md'), label_table(study))
  if config.study.joint_steps:
    comparison = label_comparison(config, workdir)
    figures.save_json(os.path.join(workdir, 'label_comparison.json'),
                      {str(b): row for b, row in comparison.items()})
    _write_table(os.path.join(workdir, 'label_comparison.md'),
                 comparison_table(comparison))


def write_study(workdir: str, rows: dict[int, dict[str, Any]],
                success_psnr: float) -> None:
  """`study.json`, `study.md` and `study.png` (with the paper's numbers)."""
  figures.save_json(os.path.join(workdir, 'study.json'),
                    {str(b): row for b, row in rows.items()})
  table = markdown_table(rows, success_psnr)
  with open(os.path.join(workdir, 'study.md'), 'w', encoding='utf-8') as f:
    f.write(table)
  missed = [b for b in rows if rows[b]['median_iterations'] is None]
  name = 'this attack (median)' + (
      f'; not reached for batch {", ".join(map(str, missed))}'
      if missed else '')
  series = {name: (list(rows), [rows[b]['median_iterations'] for b in rows])}
  paper = [b for b in rows if b in PAPER_ITERATIONS]
  if paper:
    series['DLG paper (L-BFGS steps of <= 20 evaluations)'] = (
        paper, [PAPER_ITERATIONS[b] for b in paper])
  figures.save_line_plot(
      os.path.join(workdir, 'study.png'), series, xlabel='batch size',
      ylabel=f'iterations to {success_psnr:g} dB',
      title='DLG on CIFAR-100, LeNet: iterations per batch size')
  logging.info('\n%s', table)


def run(config, workdir: str) -> dict[int, dict[str, Any]]:
  """Runs the study and writes its outputs; returns the rows by batch size.

  Args:
    config: a `configs/batch.py`-style config.
    workdir: where the outputs go, each attack in its own subdirectory.

  Raises:
    ConfigError: a bad config value or workdir, named, before any work.
  """
  check_study(config, workdir)
  common.make_workdir(workdir)
  run_label_studies(config, workdir)
  rows = {}
  for b in config.study.batch_sizes:
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
      cfg.data.batch_size = b
    logging.info('batch size %d', b)
    results = attack_pipeline.run(cfg, os.path.join(workdir, f'batch_{b}'))
    rows[b] = summarize_batch_size(results, config.success_psnr)
  write_study(workdir, rows, config.success_psnr)
  return rows
