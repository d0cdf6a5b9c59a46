"""What a plan costs, and whether its data is there: steps and device-hours.

Steps come from the config: epochs x (training examples x train_fraction //
batch), capped by max_steps. Device-hours multiply them by seconds per
training step: the table's own ``step_seconds`` where it gives a model, else
STEP_SECONDS below. Those are ASSUMPTIONS, not measurements: rough figures
for one H100-class GPU in float32 at the presets' batch sizes, scaled from
the models' multiply-accumulates; an adder network counts ADDER_FACTOR times
its CNN. A frozen teacher's forward pass counts a third of its step, a
co-trained teacher (PKKD) a whole one. Evaluation, compilation and start-up
are not counted. Treat the totals as an order of magnitude.

Data: a tfds dataset is there when its data dir (dataset.data_dir, else
$TFDS_DATA_DIR, else ~/tensorflow_datasets) holds its dataset_info.json;
nothing is downloaded, and a missing one is named with the ``tfds build``
command that prepares it. mnist5k prepares itself from the package; remote
(gs://) data dirs are not checked.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Dict, List, Optional, Tuple

TRAIN_EXAMPLES = {
  'cifar10': 50_000,
  'cifar100': 50_000,
  'imagenet2012': 1_281_167,
  'mnist5k': 4_000,
}
STEP_SECONDS_SOURCE = (
  'assumed seconds per training step on one H100-class GPU, float32, at the '
  "preset's batch (kdjax/reproduce/estimate.py), not measured"
)
STEP_SECONDS = {
  # CIFAR models at batch 64-256.
  'resnet8': 0.006,
  'resnet14': 0.008,
  'resnet20': 0.012,
  'resnet32': 0.018,
  'resnet44': 0.024,
  'resnet56': 0.03,
  'resnet110': 0.055,
  'resnet8x4': 0.015,
  'resnet32x4': 0.045,
  'resnet50_cifar': 0.06,
  'wrn16_1': 0.006,
  'wrn16_2': 0.01,
  'wrn16_4': 0.02,
  'wrn28_2': 0.02,
  'wrn28_4': 0.04,
  'wrn40_1': 0.012,
  'wrn40_2': 0.025,
  'vgg8': 0.008,
  'vgg11': 0.01,
  'vgg13': 0.012,
  'vgg16': 0.015,
  'vgg19': 0.018,
  'vgg_small': 0.015,
  'mobilenet_v2': 0.02,
  'shufflenet_v1': 0.025,
  'shufflenet_v2': 0.025,
  'pyramidnet110_84': 0.06,
  'pyramidnet200_240': 0.3,
  'ekd_student': 0.03,
  # ImageNet models at batch 256.
  'resnet18': 0.12,
  'resnet34': 0.2,
  'resnet50': 0.35,
  'resnet101': 0.55,
  'resnet152': 0.8,
  'mobilenet_v1': 0.15,
}
DEFAULT_STEP_SECONDS = 0.05
ADDER_FACTOR = 4.0


def train_examples(config) -> int:
  dataset = config.dataset
  if dataset.name == 'synthetic':
    synthetic = dataset.get('synthetic') or {}
    if synthetic.get('train_examples'):
      return int(synthetic['train_examples'])
    from kdjax.data import synthetic as synth  # pylint: disable=g-import-not-at-top

    return synth.DEFAULT_TRAIN_BATCHES * config.batch_size
  return TRAIN_EXAMPLES.get(dataset.name, 50_000)


def steps(config) -> int:
  """Training steps of a run of ``config``."""
  fraction = config.dataset.get('train_fraction', 1.0) or 1.0
  per_epoch = max(
    1, int(train_examples(config) * fraction) // config.batch_size
  )
  total = int(config.num_epochs * per_epoch)
  if config.get('max_steps', -1) > 0:
    total = min(total, config.max_steps)
  return total


def _model_seconds(entry, table) -> float:
  name, conv = entry.get('name'), entry.get('conv_type', 'conv')
  own = dict(getattr(table, 'step_seconds', {}) or {})
  key = f'{name}/adder' if conv == 'adder' else name
  if key in own:
    return own[key]
  seconds = own.get(name, STEP_SECONDS.get(name, DEFAULT_STEP_SECONDS))
  return seconds * (ADDER_FACTOR if conv == 'adder' else 1.0)


def step_seconds(config, table=None) -> float:
  """Assumed seconds of one training step of ``config`` (module docstring)."""
  seconds = _model_seconds(config.model, table)
  frozen = list(config.get('teachers') or [])
  if config.get('teacher') is not None:
    cotrained = (
      config.method == 'pkkd'
      and config.get('pkkd', {}).get('teacher_mode') == 'cotrained'
    )
    if cotrained:
      seconds += _model_seconds(config.teacher, table)
    else:
      frozen.append(config.teacher)
  for peer in config.get('peers') or []:
    seconds += _model_seconds(peer, table)
  return seconds + sum(_model_seconds(t, table) / 3 for t in frozen)


def data_dir(config) -> str:
  return (
    config.dataset.get('data_dir')
    or os.environ.get('TFDS_DATA_DIR')
    or os.path.join(os.path.expanduser('~'), 'tensorflow_datasets')
  )


def data_status(config) -> Optional[Tuple[str, str, str]]:
  """(dataset, data dir, what to do) when the data is missing, else None."""
  name = config.dataset.name
  if name in ('synthetic', 'mnist5k') or config.dataset.get('image_folder'):
    return None
  root = data_dir(config)
  if '://' in root:
    return None
  base = name.split(':')[0]
  if glob.glob(
    os.path.join(root, base, '**', 'dataset_info.json'), recursive=True
  ):
    return None
  manual = ''
  if base == 'imagenet2012':
    manual = ' --manual_dir=DIR_WITH_ILSVRC2012_img_train.tar_AND_ILSVRC2012_img_val.tar'
  return name, root, f'tfds build {base} --data_dir={root}{manual}'


def missing_data(configs) -> List[Tuple[str, str, str]]:
  """The distinct missing datasets of ``configs``, in order."""
  seen: Dict[Tuple[str, str], Tuple[str, str, str]] = {}
  for config in configs:
    status = data_status(config)
    if status is not None:
      seen.setdefault(status[:2], status)
  return list(seen.values())


def hours(seconds: float) -> str:
  return f'{seconds / 3600:,.1f}' if seconds >= 360 else f'{seconds / 3600:.2f}'


def totals(jobs) -> Dict[str, Any]:
  return {
    'runs': len(jobs),
    'steps': sum(j.steps for j in jobs),
    'device_hours': sum(j.estimate_s for j in jobs) / 3600,
  }
