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
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  notes = []

  def report(message):
    notes.append(message)
    convert.print_note(message)

  try:
    model = layouts.check_supported(args.format, args.model)
    state_dict = files.load_state_dict_file(args.checkpoint, report)
    variables = convert.from_torch(
      state_dict,
      format=args.format,
      model=model,
      num_classes=args.num_classes,
      report=report,
    )
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
