r"""DLG on the bundled CIFAR-100 test images: the default main job.

The DLG paper's sigmoid LeNet (random uniform(-0.5, 0.5) weights), one image
per client gradient, label read off the gradient (iDLG), accept/reject L-BFGS.

Command:
  python -m experiments.attack --config=configs/cifar100.py --workdir=runs/cifar100

Expected result (measured, 2-core CPU): all 10 of images 0-9 at PSNR >= 30 dB
with the correct label, min / median PSNR 34.3 / 40.0 dB. Full measurements
(and the benchmark): README.md, "Measured".

`--config=configs/cifar100.py:quick` attacks 2 images for 600 steps, a
smoke run of a few seconds.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The default vision DLG config; `arg='quick'` shrinks it."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # A bundled sample set (cifar100, mnist, svhn, lfw) or 'tfds:<name>'.
  config.data.source = 'cifar100'
  config.data.npz = ''          # a user's npz with x (uint8) and y (int)
  config.data.data_dir = ''     # tfds data_dir, for 'tfds:' sources
  config.data.split = 'test'
  # Attack the first `count` images. Unset (a typed None): every image of
  # `npz`, or the first 10 of bundled or TFDS data
  # (dlg_jax.pipelines.common.DEFAULT_COUNT).
  config.data.count = ml_collections.config_dict.placeholder(int)
  # Images behind one shared gradient; targets are consecutive groups of
  # `batch_size` of the first `count` images (count must be a multiple).
  config.data.batch_size = 1

  config.model = ml_collections.ConfigDict()
  config.model.name = 'lenet'   # lenet, convnet, resnet, resnet18, resnet20
  # An activation name (sigmoid, relu, ...); unset keeps the model's own.
  config.model.activation = ml_collections.config_dict.placeholder(str)
  # Normalisation of the convnet and resnet: none, batch (BatchNorm with the
  # batch's statistics; the model then has state) or group; unset: none.
  config.model.norm = ml_collections.config_dict.placeholder(str)
  config.model.num_classes = 100
  config.model.init_seed = 0
  # Adam steps on the images not attacked before the attack (0: attack the
  # randomly initialised model, as the DLG paper).
  config.model.pretrain_steps = 0
  config.model.pretrain_lr = 1e-3
  # A training workdir of experiments/train.py (configs/train.py): attack
  # its trained weights (and BatchNorm statistics) instead of init_seed's.
  # Its model, num_classes and image shape must be this config's.
  config.model.checkpoint = ml_collections.config_dict.placeholder(str)

  # The attack's sections take their fields from here by name
  # (dlg_jax.vision.attack: Labels, Objective, Optimization, Start;
  # dlg_jax.pipelines.common.make_attack), beside the restarts and the
  # prior's data.
  config.attack = ml_collections.ConfigDict()
  # Labels.
  config.attack.label_mode = 'analytic'   # analytic (iDLG), joint (DLG), known
  # How 'analytic' reads labels: auto (idlg for batch 1, else count), idlg,
  # yin (distinct labels), count (repeated labels too).
  config.attack.label_method = 'auto'
  # Objective.
  config.attack.distance = 'l2'           # l2 (DLG), cosine (Geiping et al.)
  config.attack.tv_weight = 0.0
  # Annealing of the TV weight (dlg_jax.vision.attack.tv_weight_at): a cosine from
  # tv_weight to tv_final_weight over tv_decay_steps (0: num_steps), in
  # tv_stages constant stages (0: every step). Unset tv_final_weight keeps
  # the weight at tv_weight.
  config.attack.tv_final_weight = ml_collections.config_dict.placeholder(
      float)
  config.attack.tv_decay_steps = 0
  config.attack.tv_stages = 0
  # A stationary Gaussian image prior (dlg_jax.core.objectives.fit_gaussian_prior),
  # weight * 0.5 (x - mean)^T Sigma^-1 (x - mean) per image; 0 is off. Fitted
  # on prior_images: 'unattacked' (the images after the first data.count, or
  # all when none are left) or indices such as '0-7,16-19'. prior_floor
  # regularises its spectrum (relative to the pixel variance).
  config.attack.prior_weight = 0.0
  config.attack.prior_images = 'unattacked'
  config.attack.prior_floor = 1e-3
  # Optimization.
  config.attack.optimizer = 'lbfgs'       # lbfgs, lbfgs_linesearch, adam
  config.attack.learning_rate = 0.1       # adam only
  config.attack.memory_size = 100
  config.attack.num_steps = 6000
  config.attack.tol = 2e-8
  # Start.
  config.attack.init = 'grey'             # grey, uniform, randn
  config.attack.init_scale = 0.05
  # Random starts per target (the lowest distance wins), and the steps the
  # reconstruction figure shows.
  config.attack.restarts = 1
  config.attack.snapshot_steps = (0, 10, 20, 50, 100, 200, 500, 1000)
  # How a batch's reconstructions are paired with its originals for the
  # records (dlg_jax.vision.matching): psnr or lpips; unset is psnr.
  config.attack.pair_by = ml_collections.config_dict.placeholder(str)

  config.success_psnr = 30.0

  # How the jobs run (dlg_jax.core.runner), not what they compute: steps
  # per compiled chunk (early stopping is checked between chunks) and the
  # most jobs run at once (unset: every target at once; a memory bound).
  config.runner = ml_collections.ConfigDict()
  config.runner.chunk_size = 250
  config.runner.max_parallel = ml_collections.config_dict.placeholder(int)

  # What the client shares (dlg_jax.core.client.Client): local_steps 1 is
  # FedSGD (its gradient); more is FedAvg (the weight difference after that
  # many local SGD steps).
  config.client = ml_collections.ConfigDict()
  config.client.local_steps = 1
  config.client.learning_rate = 0.1     # local SGD learning rate (FedAvg)
  config.client.local_batch_size = 0    # 0: the whole batch every step

  if arg == 'quick':
    config.data.count = 2
    config.attack.num_steps = 600
    config.runner.chunk_size = 200
    config.attack.snapshot_steps = (0, 10, 20, 50, 100, 200)
  elif arg:
    raise ValueError(f'Unknown config argument {arg!r}; use "quick" or none.')
  return config
