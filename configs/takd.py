r"""TAKD: teacher -> teacher assistant -> student (Mirzadeh et al., AAAI 2020).

  python -m kdjax.main --config=configs/takd.py:demo --workdir=/tmp/kdjax/takd_demo
  python -m kdjax.main --config=configs/takd.py:cifar100_resnet110_resnet20_resnet8 --workdir=DIR

One command runs the whole chain as a plan of runs (kdjax/train/plan.py):
the teacher (pre-trained in-process, or --config.teacher.distill_from.
checkpoint_dir=DIR), then the assistant distilled from it with Hinton KD,
then the student distilled from the assistant with the same KD settings.
Each link's finished checkpoint feeds the next, in nested workdirs
(DIR/teachers/0_<assistant>/teachers/0_<teacher>), and each resumes like any
run. The student's config.teacher is the assistant; its ``distill_from`` is
the teacher.

Presets:
  demo                                 resnet20 -> resnet14 -> resnet8 on
                                       the embedded MNIST-5k digits
  cifar100_resnet110_resnet20_resnet8  RepDistiller's recipe for every link
                                       (docs/recipes.md); KD as configs/kd.py
                                       (T 4, KD 0.9). No number is targeted:
                                       the TAKD paper's recipe differs, and
                                       the EKD paper's TAKD figure (88.01 % on
                                       CIFAR-10) is for its own student.
  cifar10_ekd                          the same chain on CIFAR-10: the EKD
                                       paper's TAKD baseline, 88.01 % for a
                                       ResNet-8 student (its chain and recipe
                                       are not stated; ours, as configs/ekd.py)
"""

from kdjax import config_defaults as defaults

PRESETS = (
  'demo',
  'cifar100_resnet110_resnet20_resnet8',
  'cifar10_ekd',
)


def get_config(preset: str = 'demo'):
  if preset not in PRESETS:
    raise ValueError(f'Unknown takd preset {preset!r}; choose one of {PRESETS}')
  config = defaults.base_config('kd')
  config.kd = defaults.kd_section()
  if preset == 'demo':
    defaults.demo_recipe(config, epochs=3)
    teacher, assistant, student = 'resnet20', 'resnet14', 'resnet8'
    teacher_epochs = assistant_epochs = 2
  else:
    defaults.set_dataset(config, 'cifar100')
    defaults.repdistiller_recipe(config)
    teacher, assistant, student = ('resnet110', 'resnet20', 'resnet8')
    if preset == 'cifar10_ekd':
      defaults.set_dataset(config, 'cifar10')
    teacher_epochs = assistant_epochs = config.num_epochs
  config.model = defaults.model(student, 'conv')
  config.teacher = defaults.model(
    assistant, 'conv', pretrain_epochs=assistant_epochs
  )
  config.teacher.distill_from = defaults.model(
    teacher, 'conv', pretrain_epochs=teacher_epochs
  )
  return config
