"""Pipelines: one `run(config, workdir)` per experiment.

As flax examples' `train.train_and_evaluate(config, workdir)`: the only
library code that reads ConfigDicts. Each `experiments/<name>.py` launcher
parses its absl flags and a config file, then calls the `run` of its
pipeline here; a test or a notebook calls that same `run` on a shrunk
config. What several pipelines share (data loading from `config.data`,
model building and validation from `config.model`, the workdir check, the
defense grid, quiet orbax logs) is in `common`.

Modules:
  common: shared by the pipelines below.
  attack: the vision attack (DLG / iDLG), `experiments/attack.py`.
  sweep: the attack over defenses and strengths, `experiments/sweep.py`.
  utility: accuracy trained under each defense, `experiments/utility.py`.
  batch_study: iterations per batch size, `experiments/batch_study.py`.
  victim_study: victims x weights x attacks, `experiments/victim_study.py`.
  noise_bound: the linearised noise bound, `experiments/noise_bound.py`.
  text_attack: DLG on a BERT masked LM, `experiments/attack_text.py`.
  train: a victim trained and checkpointed, `experiments/train.py`.
  benchmark: attack speed, `experiments/benchmark.py`.
  scale_benchmark: sweep throughput and memory,
    `experiments/scale_benchmark.py`.
"""
