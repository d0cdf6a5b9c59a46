"""Loads a config as ``python -m kdjax.main`` does, without training.

  python -m kdjax.check_config --config=configs/pkkd.py:demo --config.num_epochs=2

Reads the file, its preset and every ``--config.KEY=VALUE`` override with
ml_collections' config flag (the trainer's own parser, so the semantics are
the same), then the trainer's value checks where the trainer can be imported.
On success it prints a short summary of the resolved config and exits 0; on a
config error it prints one paragraph (`describe_config_error`) and exits 2.
launch/tpu_pod.sh and launch/gpu_host.sh run it before any remote or long
command. ``--traceback`` shows the full trace of an error.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Optional, Sequence

from kdjax import console

EXIT_OK = 0
EXIT_CONFIG_ERROR = 2
EXIT_NO_CONFIG_STACK = 3  # absl or ml_collections is not importable.

_USAGE = (
  'usage: python -m kdjax.check_config --config=FILE[:PRESET] '
  '[--config.KEY=VALUE ...] [--traceback]'
)


def _override_flags(argv: Sequence[str]) -> list:
  """The ``--config.KEY=VALUE`` arguments of a command line, in order."""
  return [a for a in argv if a.startswith('--config.')]


def _config_file(argv: Sequence[str]) -> Optional[str]:
  for arg in argv:
    if arg.startswith('--config='):
      return arg[len('--config=') :].split(':', 1)[0]
  return None


def _last_line(text: str) -> str:
  """The last non-empty line: the exception line at the end of a traceback."""
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  return lines[-1] if lines else text.strip()


def _describe_unknown_key(message: str, argv: Sequence[str]) -> str:
  # ml_collections raises KeyError("'key'\nDid you mean \"keys\" instead of
  # \"key\"?") (absl wraps it in AttributeError): take it apart.
  first, _, rest = message.partition('\n')
  key = first.strip().strip('\'"')
  suggestion = re.search(r'Did you mean "([^"]+)"', rest)
  flag, path = None, [key]
  for arg in _override_flags(argv):
    parts = arg.split('=', 1)[0][len('--config.') :].split('.')
    if key in parts:
      flag, path = arg, parts[: parts.index(key) + 1]
      break
  dotted = '.'.join(path)
  text = f"Unknown config key '{dotted}'"
  if suggestion:
    text += f"; did you mean '{'.'.join(path[:-1] + [suggestion.group(1)])}'?"
  else:
    text += '.'
  where = _config_file(argv)
  text += (
    ' An override can only set a key that the config already has'
    + (f' (see get_config in {where})' if where else '')
    + '.'
  )
  return f'{flag}: {text}' if flag else text


_TYPES = {'int': ('an integer', '3'), 'float': ('a number', '0.1')}


def _describe_bad_value(flag: str, message: str) -> str:
  name, _, value = flag.partition('=')
  literal = re.match(
    r"invalid literal for (int|float)\(\)(?: with base 10)?: '(.*)'", message
  ) or re.match(r"could not convert string to (float): '(.*)'", message)
  if literal:
    want, example = _TYPES[literal.group(1)]
    return (
      f'{flag}: {value!r} is not {want}; this key takes {want}, e.g. '
      f'{name}={example}.'
    )
  if 'Non-boolean argument' in message:
    return f'{flag}: {value!r} is not a boolean; use {name}=true or false.'
  return f'{flag}: {message}'


def describe_config_error(
  exc: BaseException, argv: Optional[Sequence[str]] = None
) -> str:
  """One paragraph for the user about an error from loading --config.

  `exc` is what parsing the flags raised (absl's IllegalFlagValueError or
  UnrecognizedFlagError, ml_collections' KeyError / AttributeError for an
  unknown key, OSError for a missing file, or a config file's own
  ValueError for an unknown preset); `argv` (default sys.argv) names the
  override that failed. Says what is wrong and how to fix it, without a
  traceback.
  """
  argv = list(sys.argv if argv is None else argv)
  message = str(exc.args[0]) if exc.args else str(exc)
  if isinstance(exc, (KeyError, AttributeError)):
    inner = exc.args[0] if exc.args else exc
    if isinstance(inner, KeyError):
      message = str(inner.args[0]) if inner.args else str(inner)
    return _describe_unknown_key(message, argv)

  flag_message = re.match(r'flag (--\S+?): (.*)', message, re.S)
  if flag_message:
    flag, detail = flag_message.groups()
    if 'Error whilst parsing config file' in detail:
      # A config file's get_config raised (e.g. an unknown preset): its
      # message is the last line of the traceback that ml_collections kept.
      cause = _last_line(detail)
      cause = re.sub(r'^[A-Za-z_.]*(Error|Exception): ', '', cause)
      return f'Cannot load {flag}: {cause}'
    if flag.startswith('--config.'):
      return _describe_bad_value(flag, detail.strip())
    if 'must have a value other than None' in detail:
      return (
        f'{flag.split("=")[0]} is required, e.g. --config=configs/pkkd.py:demo.'
      )
    return f'{flag}: {detail.strip()}'

  if isinstance(exc, IndexError) or message.startswith('Could not parse '):
    path = re.match(r"Could not parse '([^']*)'", message)
    flag = next(
      (
        a
        for a in _override_flags(argv)
        if (path.group(1) in a if path else '[' in a.split('=', 1)[0])
      ),
      None,
    )
    return (
      f'{flag or "A --config override"}: not a key path of the config. Keys '
      'are joined with dots and list items are indexed with brackets within '
      "the list's length, e.g. --config.teachers[0].name=resnet20."
    )
  if isinstance(exc, OSError) and 'Failed loading config file' in message:
    errno_line = re.search(r'\[Errno \d+\] (.*)', message)
    where = _config_file(argv) or 'the config file'
    reason = errno_line.group(1) if errno_line else _last_line(message)
    return (
      f'Cannot load the config file {where}: {reason}. Give a file of '
      'configs/ (e.g. --config=configs/pkkd.py:demo), relative to the '
      'directory you run in, or an absolute path.'
    )
  if type(exc).__name__ == 'UnrecognizedFlagError':
    return (
      f'{message}. Config overrides need --config=FILE[:PRESET] before them; '
      f'{_USAGE}'
    )
  return f'{type(exc).__name__}: {_last_line(message)}'


def _summary(config, base, argv: Sequence[str]) -> str:
  """A few lines: what the config trains, and what each override changed.

  Keys a config file lacks show as '?': the trainer, not this summary, says
  which ones it needs.
  """

  def model(path):
    return f'{_get(config, path + ".name")}/{_get(config, path + ".conv_type")}'

  spec = next(a for a in argv if a.startswith('--config='))[len('--config=') :]
  lines = [f'{spec}: method {_get(config, "method")}']
  epochs = _get(config, 'num_epochs')
  parts = [
    f'dataset {_get(config, "dataset.name")}',
    f'batch {_get(config, "batch_size")}',
    f'{epochs} epoch' + ('' if epochs == 1 else 's'),
  ]
  max_steps = _get(config, 'max_steps', -1)
  if isinstance(max_steps, int) and max_steps > 0:
    parts.append(f'stop at step {max_steps}')
  parts.append(f'seed {_get(config, "seed")}')
  lines.append('  ' + ', '.join(parts))
  lines.append(f'  model {model("model")}')
  if 'teacher' in config:
    lines.append(f'  teacher {model("teacher")}')
  for k in range(len(_get(config, 'teachers', ()) or ())):
    lines.append(f'  teacher {k + 1} {model(f"teachers.{k}")}')
  lines.append(
    f'  optimizer {_get(config, "optimizer.name")}, learning rate '
    f'{_get(config, "optimizer.learning_rate")}, weight decay '
    f'{_get(config, "optimizer.weight_decay")}, '
    f'{_get(config, "optimizer.schedule")} schedule'
  )
  for flag in _override_flags(argv):
    path = flag.split('=', 1)[0][len('--config.') :]
    old, new = _get(base, path), _get(config, path)
    lines.append(f'  override {path}: {old!r} -> {new!r}')
  return '\n'.join(lines)


def _get(config, path: str, default: Any = '?') -> Any:
  """The value at a key path ('optimizer.learning_rate', 'teachers[0].name')."""
  value = config
  try:
    for key in re.findall(r'[^.\[\]]+', path):
      value = (
        value[int(key)] if isinstance(value, (list, tuple)) else value[key]
      )
  except (KeyError, AttributeError, IndexError, TypeError, ValueError):
    return default
  return value


def _value_checks(config) -> Optional[str]:
  """The trainer's config validation (kdjax.validation); a note if skipped."""
  try:
    # pylint: disable=g-import-not-at-top
    from kdjax import errors
    from kdjax import validation
  except ImportError as e:  # e.g. no jax on this machine
    return f'value checks skipped: the trainer cannot be imported here ({e})'
  try:
    validation.validate(config)
  except errors.KdjaxError as e:
    raise _UserError(str(e)) from e
  return None


def check(argv: Sequence[str]) -> int:
  """Loads the config of ``argv`` (flags only, no program name); the exit code."""
  console.quiet_startup()
  try:
    # pylint: disable=g-import-not-at-top
    from absl import flags
    from ml_collections import config_flags
  except ImportError as e:
    print(
      f'kdjax.check_config: this Python cannot load configs: {e}',
      file=sys.stderr,
    )
    return EXIT_NO_CONFIG_STACK

  argv = list(argv)
  show_traceback = '--traceback' in argv
  argv = [a for a in argv if a != '--traceback']
  specs = [a for a in argv if a.startswith('--config=')]
  extra = [a for a in argv if not a.startswith(('--config=', '--config.'))]
  if len(specs) != 1 or extra:
    problem = (
      f'unexpected arguments {extra}'
      if extra
      else '--config=FILE[:PRESET] is needed once'
    )
    print(f'kdjax.check_config: {problem}. {_USAGE}', file=sys.stderr)
    return EXIT_CONFIG_ERROR

  def parse(args):
    command_line = ['kdjax.check_config', *args]
    flag_values = flags.FlagValues()
    flag = config_flags.DEFINE_config_file(
      'config',
      None,
      'Config file[:preset].',
      flag_values=flag_values,
      lock_config=True,
      sys_argv=command_line,  # Overrides from here, not from sys.argv.
    )
    flag_values(command_line)
    # A file that cannot be read raises only when the config is first used.
    flag.value.keys()
    return flag.value

  try:
    try:
      # The file and preset alone first: a KeyError there is a bug in the
      # config file (kept with its traceback), in an override a typo.
      base = parse(specs)
    except (flags.Error, OSError) as e:
      raise _UserError(describe_config_error(e, argv)) from e
    try:
      config = parse(argv)
    except (flags.Error, KeyError, AttributeError, IndexError, ValueError) as e:
      raise _UserError(describe_config_error(e, argv)) from e
    note = _value_checks(config)
  except _UserError as e:
    if show_traceback:
      raise
    print(f'kdjax.check_config: {e}', file=sys.stderr)
    return EXIT_CONFIG_ERROR
  print(_summary(config, base, argv))
  if note:
    print(f'kdjax.check_config: {note}', file=sys.stderr)
  return EXIT_OK


class _UserError(Exception):
  """A config error, already described for the user."""


def main() -> None:
  sys.exit(check(sys.argv[1:]))


if __name__ == '__main__':
  main()
