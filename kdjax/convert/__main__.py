r"""python -m kdjax.convert: a PyTorch checkpoint as a kdjax teacher directory.

  python -m kdjax.convert --format=repdistiller --model=resnet32x4 \
      --checkpoint=resnet32x4_vanilla/ckpt_epoch_240.pth --num-classes=100 \
      --out=teachers/resnet32x4

Then --config.teacher.checkpoint_dir=teachers/resnet32x4 (kd, ofd, pkkd
frozen, ekd teachers) or --mode=eval with configs/supervised.py uses it.
Formats, models and layouts: docs/interop.md. Exit status 2 on a checkpoint
that does not convert, with the reason.
"""

import argparse
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from kdjax.convert import checkpoint, convert, files, layouts  # noqa: E402

INPUT_DATASETS = ('cifar10', 'cifar100', 'imagenet2012')


def parse_args(argv):
  parser = argparse.ArgumentParser(
    prog='python -m kdjax.convert',
    description='Convert a PyTorch checkpoint into a kdjax teacher checkpoint.',
  )
  parser.add_argument('--format', required=True, choices=layouts.FORMATS)
  parser.add_argument(
    '--model', required=True, help='kdjax zoo name, e.g. resnet32x4, wrn40_2'
  )
  parser.add_argument(
    '--checkpoint',
    required=True,
    help='.pth/.pt (read with torch.load(weights_only=True)) or .safetensors',
  )
  parser.add_argument('--num-classes', required=True, type=int)
  parser.add_argument(
    '--out', required=True, help='new teacher directory (a kdjax workdir)'
  )
  parser.add_argument(
    '--dataset',
    choices=INPUT_DATASETS,
    default=None,
    help='the kdjax dataset the teacher will see (its input normalization); '
    'default: cifar100 for CIFAR models, imagenet2012 for ImageNet models',
  )
  parser.add_argument(
    '--keep-input-scale',
    action='store_true',
    help="do not adapt the stem to kdjax's input std (docs/interop.md)",
  )
  return parser.parse_args(argv)


def input_normalization(format, model, dataset, report):
  """(trained std, fed std) for from_torch; reports a mean offset left as is."""
  from kdjax.data import specs  # pylint: disable=g-import-not-at-top

  trained_mean, trained_std = layouts.training_normalization(format, model)
  if dataset is None:
    dataset = (
      'imagenet2012' if checkpoint.image_shape(model)[0] > 32 else 'cifar100'
    )
  fed = specs.DATASETS[dataset]
  offset = [
    round((m - t) / s, 4)
    for m, t, s in zip(fed.mean, trained_mean, trained_std)
  ]
  if max(abs(o) for o in offset) > 1e-3:
    report(
      f'kdjax normalizes {dataset} with mean {list(fed.mean)}, the {format} '
      f'scripts with {list(trained_mean)}: the teacher sees its inputs offset '
      f'by {offset} (in its normalized units); not folded (docs/interop.md)'
    )
  return trained_std, fed.std


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  notes = []

  def report(message):
    notes.append(message)
    convert.print_note(message)

  try:
    model = layouts.check_supported(args.format, args.model)
    checkpoint.check_new_teacher_dir(args.out)  # Before reading the file.
    state_dict = files.load_state_dict_file(args.checkpoint, report)
    input_std, normalization_notes = None, []
    if not args.keep_input_scale:
      input_std = input_normalization(
        args.format, model, args.dataset, normalization_notes.append
      )
    variables = convert.from_torch(
      state_dict,
      format=args.format,
      model=model,
      num_classes=args.num_classes,
      input_std=input_std,
      report=report,
    )
    for note in normalization_notes:  # Once the checkpoint has converted.
      report(note)
    conv_type = layouts.CONV_TYPE[args.format]
    directory = checkpoint.write_teacher(
      args.out,
      variables,
      model=model,
      conv_type=conv_type,
      num_classes=args.num_classes,
      source={
        'tool': 'kdjax.convert',
        'format': args.format,
        'checkpoint': os.path.abspath(args.checkpoint),
        'notes': notes,
      },
    )
  except (convert.ConversionError, layouts.LayoutError) as e:
    print(f'kdjax.convert: error: {e}', file=sys.stderr)
    return 2
  print(
    f'Wrote {directory}: kdjax {model} (conv_type={conv_type}, '
    f'{args.num_classes} classes) from {args.format} {args.checkpoint}.\n'
    f'Use it as a teacher with --config.teacher.name={model} '
    f'--config.teacher.conv_type={conv_type} '
    f'--config.teacher.checkpoint_dir={args.out}'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
