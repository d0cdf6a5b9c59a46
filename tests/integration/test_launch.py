"""launch/: the TPU pod and GPU host scripts (in --dry-run mode), their retry loop and
config check, the TensorBoard scalars the notebook reads, and the Colab notebook.

Nothing here reaches a cloud: the scripts only print their commands under --dry-run,
or call a stand-in gcloud.
"""

import ast
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from kdjax import config_defaults

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
LAUNCH = os.path.join(ROOT, 'launch')
TPU_POD = os.path.join(LAUNCH, 'tpu_pod.sh')
GPU_HOST = os.path.join(LAUNCH, 'gpu_host.sh')
NOTEBOOK = os.path.join(LAUNCH, 'colab_demo.ipynb')
COMMON = os.path.join(LAUNCH, 'common.sh')
SCRIPTS = [TPU_POD, GPU_HOST]


def _jax_spec():
  """The jax version specifier of requirements.txt, e.g. '>=0.10.2,<0.11'."""
  with open(os.path.join(ROOT, 'requirements.txt')) as f:
    match = re.search(
      r'^jax(?:\[[^\]]*\])?\s*([<>=!~][^;#\s]*)', f.read(), re.M
    )
  assert match, 'requirements.txt pins no jax version'
  return match.group(1)


def _run(script, *args, env=None, check=True, timeout=30):
  """Runs a launch script with --dry-run; returns the CompletedProcess."""
  full_env = {
    k: v
    for k, v in os.environ.items()
    if k
    not in (
      'TPU_NAME',
      'ZONE',
      'PROJECT',
      'ACCELERATOR',
      'WORKDIR',
      'DRY_RUN',
      'TFDS_DATA_DIR',
      'TPU_VERSION',
    )
    and not k.startswith('KDJAX_')
  }
  # The config check gets its own tests (below); elsewhere a stand-in that
  # accepts every config keeps each call fast.
  full_env['KDJAX_CHECK_PYTHON'] = 'true'
  full_env.update(env or {})
  result = subprocess.run(
    ['bash', script, *args],
    capture_output=True,
    text=True,
    env=full_env,
    cwd=ROOT,
    timeout=timeout,
  )
  if check:
    assert result.returncode == 0, result.stderr
  return result


def _tpu(*args, check=True):
  return _run(
    TPU_POD,
    *args,
    '--dry-run',
    env={'TPU_NAME': 'kd-test', 'ZONE': 'us-central2-b'},
    check=check,
  )


def _commands(result):
  """The printed commands (dry-run lines start with '+ ')."""
  lines = [l[2:] for l in result.stdout.splitlines() if l.startswith('+ ')]
  assert lines, result.stdout + result.stderr
  return lines


def _remote_train_argv(ssh):
  """The kdjax.main command line that a printed `tpu-vm ssh --command=...` runs remotely."""
  (command,) = [
    a[len('--command=') :]
    for a in shlex.split(ssh)
    if a.startswith('--command=')
  ]
  activate = ' && . .venv/bin/activate && '
  assert activate in command
  return shlex.split(command.split(activate, 1)[1])


# --- Shell syntax ---------------------------------------------------------------------


@pytest.mark.parametrize('script', SCRIPTS, ids=os.path.basename)
def test_bash_syntax(script):
  subprocess.run(['bash', '-n', script], check=True)
  with open(script) as f:
    text = f.read()
  assert text.startswith('#!/usr/bin/env bash\n')
  assert 'set -euo pipefail' in text
  assert os.access(script, os.X_OK), f'{script} is not executable'


@pytest.mark.parametrize('script', SCRIPTS, ids=os.path.basename)
def test_shellcheck(script):
  if shutil.which('shellcheck') is None:
    pytest.skip('shellcheck is not installed')
  result = subprocess.run(
    ['shellcheck', script], capture_output=True, text=True
  )
  assert result.returncode == 0, result.stdout


def test_shellcheck_shared_helpers():
  if shutil.which('shellcheck') is None:
    pytest.skip('shellcheck is not installed')
  common = os.path.join(os.path.dirname(SCRIPTS[0]), 'common.sh')
  result = subprocess.run(
    ['shellcheck', '-s', 'bash', common], capture_output=True, text=True
  )
  assert result.returncode == 0, result.stdout


@pytest.mark.parametrize('script', SCRIPTS, ids=os.path.basename)
def test_help(script):
  result = _run(script, '--help')
  assert result.stdout.startswith('Usage: ')
  assert '--dry-run' in result.stdout


# --- tpu_pod.sh ---------------------------------------------------------------------------


def test_tpu_create():
  (create,) = _commands(
    _tpu('create', '--accelerator=v4-32', '--project=my-proj', '--spot')
  )
  assert create.startswith('gcloud compute tpus tpu-vm create kd-test ')
  for piece in (
    '--zone=us-central2-b',
    '--project=my-proj',
    '--accelerator-type=v4-32',
    '--version=tpu-ubuntu2204-base',
    '--spot',
  ):
    assert piece in create.split()


def test_tpu_options_from_environment():
  result = _run(
    TPU_POD,
    'create',
    env={
      'TPU_NAME': 'env-tpu',
      'ZONE': 'europe-west4-a',
      'PROJECT': 'p1',
      'ACCELERATOR': 'v5litepod-16',
      'TPU_VERSION': 'v2-alpha-tpuv5-lite',
      'DRY_RUN': '1',
    },
  )
  (create,) = _commands(result)
  for piece in (
    'env-tpu',
    '--zone=europe-west4-a',
    '--project=p1',
    '--accelerator-type=v5litepod-16',
    '--version=v2-alpha-tpuv5-lite',
  ):
    assert piece in create.split()


def test_tpu_install_from_source_pins_jax_tpu():
  commands = _commands(_tpu('install'))
  tar, scp, ssh = commands
  assert (
    tar.startswith('env COPYFILE_DISABLE=1 tar -czf ') and f'-C {ROOT} ' in tar
  )
  assert (
    scp.startswith('gcloud compute tpus tpu-vm scp ') and '--worker=all' in scp
  )
  assert 'kd-test:/tmp/kdjax-src.tgz' in scp
  assert ssh.startswith('gcloud compute tpus tpu-vm ssh kd-test ')
  assert '--worker=all' in ssh and '--zone=us-central2-b' in ssh
  assert 'tar -xzf /tmp/kdjax-src.tgz -C kdjax' in ssh
  assert 'python3.11 -m venv .venv' in ssh
  assert 'pip install -q -r requirements.txt -e .' in ssh
  jax_tpu = f'jax[tpu]{_jax_spec()}'
  assert jax_tpu in ssh
  # jax[tpu] goes in after the requirements (which bring jax[cpu]).
  assert ssh.index('requirements.txt -e .') < ssh.index(jax_tpu)


def test_tpu_install_from_repo():
  (ssh,) = _commands(
    _tpu('install', '--repo=https://example.com/kdjax.git', '--branch=v1')
  )
  assert '--worker=all' in ssh
  assert 'git clone --branch v1 https://example.com/kdjax.git kdjax' in ssh
  assert f'jax[tpu]{_jax_spec()}' in ssh


def test_tpu_install_needs_one_source():
  result = _tpu(
    'install',
    '--repo=https://example.com/k.git',
    f'--source={ROOT}',
    check=False,
  )
  assert result.returncode == 2 and 'not both' in result.stderr


def test_tpu_run_passes_config_workdir_and_overrides():
  (ssh,) = _commands(
    _tpu(
      'run',
      '--config=pkkd:cifar100_resnet20',
      '--workdir=gs://bucket/runs/c100',
      '--data-dir=gs://bucket/tensorflow_datasets',
      '--config.num_epochs=10',
      '--',
      '--config.optimizer.learning_rate=0.2',
    )
  )
  assert ssh.startswith('gcloud compute tpus tpu-vm ssh kd-test ')
  assert '--worker=all' in ssh
  train = (
    'python -m kdjax.main --config=configs/pkkd.py:cifar100_resnet20 '
    '--workdir=gs://bucket/runs/c100 '
    '--config.dataset.data_dir=gs://bucket/tensorflow_datasets '
    '--config.num_epochs=10 --config.optimizer.learning_rate=0.2'
  )
  assert train in ssh
  assert 'cd kdjax && . .venv/bin/activate' in ssh
  # Multi-host: the workers learn their peers from the TPU VM metadata.
  assert 'export TPU_WORKER_HOSTNAMES TPU_WORKER_ID' in ssh
  assert _remote_train_argv(ssh)[:3] == ['python', '-m', 'kdjax.main']


def test_tpu_run_detach_and_eval():
  (ssh,) = _commands(
    _tpu(
      'run',
      '--config=configs/kd.py:demo',
      '--workdir=gs://b/r',
      '--detach',
      '--mode=eval',
    )
  )
  assert '--worker=all' in ssh
  assert (
    'nohup python -m kdjax.main --config=configs/kd.py:demo --workdir=gs://b/r '
    '--mode=eval > kdjax_run.log'
  ) in ssh


def test_tpu_dry_run_after_double_dash_is_not_passed_on():
  result = _run(
    TPU_POD,
    'run',
    '--config=pkkd:demo',
    '--workdir=gs://b/r',
    '--',
    '--config.seed=3',
    '--dry-run',
    env={'TPU_NAME': 'kd', 'ZONE': 'z'},
  )
  (ssh,) = _commands(result)
  assert _remote_train_argv(ssh)[-2:] == [
    '--workdir=gs://b/r',
    '--config.seed=3',
  ]


def test_tpu_run_quotes_overrides():
  (ssh,) = _commands(
    _tpu(
      'run',
      '--config=pkkd:demo',
      '--workdir=gs://b/my run',
      "--config.model.name=it's $odd",
    )
  )
  assert _remote_train_argv(ssh) == [
    'python',
    '-m',
    'kdjax.main',
    '--config=configs/pkkd.py:demo',
    '--workdir=gs://b/my run',
    "--config.model.name=it's $odd",
  ]


def test_tpu_copy_back_from_bucket():
  mkdir, rsync = _commands(_tpu('copy-back', '--workdir=gs://b/runs/c100/'))
  assert mkdir == 'mkdir -p runs/c100'
  assert rsync.startswith('gcloud storage rsync --recursive ')
  assert "'--exclude=(^|.*/)checkpoints/.*'" in rsync
  assert rsync.endswith(' gs://b/runs/c100 runs/c100')
  _, rsync = _commands(
    _tpu('copy-back', '--workdir=gs://b/r', '--dest=out', '--with-checkpoints')
  )
  assert 'exclude' not in rsync and rsync.endswith(' gs://b/r out')


def test_tpu_copy_back_from_worker_0():
  mkdir, ssh, scp, untar, rm = _commands(
    _tpu('copy-back', '--workdir=/data/run1', '--dest=out')
  )
  assert mkdir == 'mkdir -p out'
  assert '--worker=0' in ssh and 'tar -czf /tmp/kdjax-copy-back.tgz' in ssh
  assert '--exclude=checkpoints -C /data/run1 .' in ssh
  assert scp.startswith(
    'gcloud compute tpus tpu-vm scp kd-test:/tmp/kdjax-copy-back.tgz out/ '
  )
  assert '--worker=0' in scp
  assert untar == 'tar -xzf out/kdjax-copy-back.tgz -C out'


def test_tpu_logs_stop_delete():
  (logs,) = _commands(_tpu('logs', '--worker=3'))
  assert '--worker=3' in logs and 'tail -n 50 kdjax_run.log' in logs
  (stop,) = _commands(_tpu('stop'))
  assert '--worker=all' in stop and 'kill -TERM' in stop
  (delete,) = _commands(_tpu('delete'))
  assert (
    delete == 'gcloud compute tpus tpu-vm delete kd-test --zone=us-central2-b'
  )
  (delete,) = _commands(_tpu('delete', '--yes'))
  assert delete.endswith(' --quiet')


_FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Records its arguments; keeps the archives it is asked to copy; fakes a bucket rsync.
printf '%s\n' "$*" >> "$FAKE_GCLOUD_LOG"
for arg in "$@"; do
  case "$arg" in *.tgz) if [ -f "$arg" ]; then cp "$arg" "$FAKE_GCLOUD_CAPTURE/"; fi ;; esac
done
if [ "$1 $2" = "storage rsync" ]; then
  echo '{"eval_accuracy": {"student": 0.5}}' > "${@: -1}/summary.json"
fi
"""


def _fake_gcloud(tmp_path):
  """A PATH and environment whose `gcloud` only records what it is asked to do."""
  bin_dir, capture, tmp = (
    tmp_path / 'bin',
    tmp_path / 'capture',
    tmp_path / 'tmp',
  )
  for d in (bin_dir, capture, tmp):
    d.mkdir()
  gcloud = bin_dir / 'gcloud'
  gcloud.write_text(_FAKE_GCLOUD)
  gcloud.chmod(0o755)
  log = tmp_path / 'gcloud.log'
  env = {
    'PATH': f'{bin_dir}:{os.environ["PATH"]}',
    'TMPDIR': str(tmp),
    'TPU_NAME': 'kd-test',
    'ZONE': 'us-central2-b',
    'FAKE_GCLOUD_LOG': str(log),
    'FAKE_GCLOUD_CAPTURE': str(capture),
  }
  return env, log, capture, tmp


def test_tpu_install_uploads_the_checkout(tmp_path):
  """Without --dry-run (gcloud faked): the archive holds the code, not the venv or .git."""
  env, log, capture, tmp = _fake_gcloud(tmp_path)
  _run(TPU_POD, 'install', env=env)
  scp, ssh = log.read_text().splitlines()
  assert scp.startswith('compute tpus tpu-vm scp ') and scp.endswith(
    '--worker=all'
  )
  assert ssh.startswith(
    'compute tpus tpu-vm ssh kd-test --zone=us-central2-b --worker=all '
  )
  assert f'jax[tpu]{_jax_spec()}' in ssh
  (archive,) = capture.iterdir()
  with tarfile.open(archive) as tar:
    names = {os.path.normpath(n) for n in tar.getnames()}
  for path in (
    'pyproject.toml',
    'requirements.txt',
    'kdjax/main.py',
    'configs/pkkd.py',
  ):
    assert path in names
  assert not any(n.split(os.sep)[0] in ('.git', '.venv') for n in names)
  assert not any('__pycache__' in n for n in names)
  assert list(tmp.iterdir()) == []  # the local archive is removed


def test_tpu_copy_back_runs_and_prints_summary(tmp_path):
  env, log, _, _ = _fake_gcloud(tmp_path)
  dest = tmp_path / 'dest'
  result = _run(
    TPU_POD, 'copy-back', '--workdir=gs://b/r', f'--dest={dest}', env=env
  )
  assert log.read_text().startswith('storage rsync --recursive')
  assert json.loads(result.stdout) == {'eval_accuracy': {'student': 0.5}}


@pytest.mark.parametrize(
  'args, message',
  [
    (['run', '--workdir=gs://b/r'], 'needs --config'),
    (['run', '--config=pkkd:demo'], 'needs --workdir'),
    (['launch'], 'unknown command'),
    (['create', '--frobnicate'], 'unknown option'),
    (['create', '--zone='], 'needs a value'),
  ],
)
def test_tpu_usage_errors(args, message):
  result = _tpu(*args, check=False)
  assert result.returncode == 2
  assert message in result.stderr


def test_tpu_name_and_zone_are_required():
  result = _run(TPU_POD, 'create', '--dry-run', check=False)
  assert result.returncode == 2 and 'name is required' in result.stderr
  result = _run(
    TPU_POD, 'create', '--dry-run', env={'TPU_NAME': 'kd'}, check=False
  )
  assert result.returncode == 2 and 'zone is required' in result.stderr


# --- gpu_host.sh --------------------------------------------------------------------------


def test_gpu_host_installs_jax_cuda_and_runs(tmp_path):
  venv = tmp_path / 'venv'
  commands = _commands(
    _run(
      GPU_HOST,
      '--dry-run',
      f'--venv={venv}',
      '--python=python3.12',
      'pkkd:cifar100_resnet20',
      'runs/c100',
      '--config.num_epochs=2',
    )
  )
  assert commands[0] == f'python3.12 -m venv {venv}'
  install_reqs = next(c for c in commands if '-r ' in c)
  assert install_reqs == (
    f'{venv}/bin/python -m pip install -q -r {ROOT}/requirements.txt -e {ROOT}'
  )
  jax_cuda = f"{venv}/bin/python -m pip install -q 'jax[cuda12]{_jax_spec()}'"
  assert jax_cuda in commands
  assert commands.index(install_reqs) < commands.index(jax_cuda)
  assert any('jax.default_backend() == "gpu"' in c for c in commands)
  workdir = os.path.join(
    ROOT, 'runs', 'c100'
  )  # relative to the caller (cwd=ROOT here)
  assert f'cd {ROOT}' in commands
  assert (
    f'{venv}/bin/python -m kdjax.main --config=configs/pkkd.py:cifar100_resnet20 '
    f'--workdir={workdir} --config.num_epochs=2'
  ) in commands
  assert commands[-1] == f'cat {workdir}/summary.json'


def test_gpu_host_cuda13_data_dir_skip_install():
  commands = _commands(
    _run(
      GPU_HOST,
      '--cuda=13',
      '--dry-run',
      '--skip-install',
      '--data-dir=/data/tfds',
      'configs/kd.py:demo',
      '/tmp/w',
    )
  )
  assert not any('pip install' in c for c in commands)
  assert any(
    c.endswith(
      '-m kdjax.main --config=configs/kd.py:demo --workdir=/tmp/w '
      '--config.dataset.data_dir=/data/tfds'
    )
    for c in commands
  )
  commands = _commands(
    _run(
      GPU_HOST,
      '--cuda=13',
      '--dry-run',
      '--venv=/nonexistent/venv',
      'kd:demo',
      '/tmp/w',
    )
  )
  assert (
    f"/nonexistent/venv/bin/python -m pip install -q 'jax[cuda13]{_jax_spec()}'"
    in commands
  )


def test_gpu_host_eval_prints_no_summary():
  commands = _commands(
    _run(
      GPU_HOST,
      '--dry-run',
      '--skip-install',
      '--mode=eval',
      'pkkd:demo',
      '/tmp/w',
    )
  )
  assert commands[-1].endswith('--workdir=/tmp/w --mode=eval')


def _fake_venv_python(tmp_path, first_line, last_line=''):
  """<tmp_path>/venv/bin/python: runs `first_line`, writes summary.json, `last_line`."""
  fake_python = tmp_path / 'venv' / 'bin' / 'python'
  fake_python.parent.mkdir(parents=True)
  fake_python.write_text(
    '#!/usr/bin/env bash\n'
    f'{first_line}\n'
    'for a in "$@"; do case "$a" in --workdir=*) w="${a#--workdir=}" ;; esac; done\n'
    'mkdir -p "$w" && echo \'{"method": "pkkd", "steps": 3}\' > "$w/summary.json"\n'
    f'{last_line}\n'
  )
  fake_python.chmod(0o755)


def test_gpu_host_runs_and_prints_summary(tmp_path):
  """Without --dry-run, with a stand-in venv python that writes summary.json."""
  _fake_venv_python(tmp_path, 'echo "$PWD $*" > "$FAKE_PYTHON_LOG"')
  log = tmp_path / 'python.log'
  workdir = tmp_path / 'w'
  result = _run(
    GPU_HOST,
    '--skip-install',
    f'--venv={tmp_path / "venv"}',
    'pkkd:demo',
    str(workdir),
    '--config.num_epochs=1',
    env={'FAKE_PYTHON_LOG': str(log)},
  )
  assert log.read_text().split() == [
    ROOT,
    '-m',
    'kdjax.main',
    '--config=configs/pkkd.py:demo',
    f'--workdir={workdir}',
    '--config.num_epochs=1',
  ]
  assert json.loads(result.stdout) == {'method': 'pkkd', 'steps': 3}


@pytest.mark.parametrize(
  'args, message',
  [
    (['pkkd:demo'], 'Usage'),
    (['nosuchmethod:demo', '/tmp/w'], 'no config file configs/nosuchmethod.py'),
    (['--cuda=11', 'pkkd:demo', '/tmp/w'], '--cuda must be 12 or 13'),
  ],
)
def test_gpu_host_usage_errors(args, message):
  result = _run(GPU_HOST, '--dry-run', *args, check=False)
  assert result.returncode == 2
  assert message in result.stderr


# --- The Colab notebook ---------------------------------------------------------------------


def _notebook():
  with open(NOTEBOOK) as f:
    return json.load(f)


def _code_cells(notebook):
  return [
    ''.join(c['source']) for c in notebook['cells'] if c['cell_type'] == 'code'
  ]


def test_notebook_is_valid_nbformat4():
  notebook = _notebook()
  assert notebook['nbformat'] == 4
  assert notebook['metadata']['kernelspec']['name'] == 'python3'
  for cell in notebook['cells']:
    assert cell['cell_type'] in ('code', 'markdown')
    assert isinstance(cell['source'], list)
    if cell['cell_type'] == 'code':
      assert cell['outputs'] == [] and cell['execution_count'] is None
  try:
    import nbformat  # pylint: disable=g-import-not-at-top
  except ImportError:
    return  # The structural checks above stand in for the schema.
  nbformat.validate(nbformat.reads(json.dumps(notebook), as_version=4))


def test_notebook_cells():
  cells = _code_cells(_notebook())
  text = '\n'.join(cells)
  assert (
    'python -m kdjax.main --config=configs/pkkd.py:demo --workdir=/content/kdjax_demo'
    in text
  )
  assert 'KDJAX_GIT_URL' in text and 'pip install' in text
  assert 'jax.devices()' in text
  assert (
    '%load_ext tensorboard' in text
    and '%tensorboard --logdir /content/kdjax_demo' in text
  )
  assert 'EventAccumulator' in text
  assert 'summary.json' in text
  for tag in ('loss/total', 'eval_accuracy/student', 'eval_accuracy/teacher'):
    assert tag in text
  # Every cell is Python once the shell (!) and magic (%) lines are set aside.
  for cell in cells:
    ast.parse(
      '\n'.join(
        l for l in cell.splitlines() if not l.lstrip().startswith(('!', '%'))
      )
    )


def _plotting_namespace():
  """Executes the notebook cell that defines plot_training_curves; returns its namespace."""
  (cell,) = [
    c for c in _code_cells(_notebook()) if 'def plot_training_curves' in c
  ]
  tree = ast.parse(cell)
  # Only imports, constants and functions: nothing runs but the definitions.
  for node in tree.body:
    assert isinstance(
      node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.Assign)
    ), node
  namespace = {}
  exec(compile(tree, NOTEBOOK, 'exec'), namespace)  # pylint: disable=exec-used
  return namespace


def test_notebook_plots_training_curves(tmp_path):
  """The curves of event files as kdjax writes them (scalar summaries)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  from kdjax.train import reporting  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path / 'run')
  writer = reporting.EventFileWriter(workdir, just_logging=False)
  for step in range(1, 21):
    writer.write_scalars(step, {'loss/total': 4.0 / step, 'learning_rate': 0.1})
  writer.write_scalars(
    10, {'eval_accuracy/student': 0.25, 'eval_accuracy/teacher': 0.5}
  )
  writer.write_scalars(
    20, {'eval_accuracy/student': 0.5, 'eval_accuracy/teacher': 0.75}
  )
  writer.close()
  # A resumed run: a second event file that logs steps 20.. again and goes on.
  writer = reporting.EventFileWriter(workdir, just_logging=False)
  writer.write_scalars(20, {'loss/total': 0.2})
  writer.write_scalars(
    30,
    {
      'loss/total': 0.1,
      'eval_accuracy/student': 0.75,
      'eval_accuracy/teacher': 0.875,
    },
  )
  writer.close()

  namespace = _plotting_namespace()
  scalars = namespace['load_scalars'](workdir)
  steps, values = scalars['loss/total']
  assert list(steps) == list(range(1, 21)) + [30]
  assert values[0] == pytest.approx(4.0) and values[-2:] == pytest.approx(
    [0.2, 0.1]
  )
  assert list(scalars['eval_accuracy/teacher'][0]) == [10, 20, 30]

  fig = namespace['plot_training_curves'](workdir)
  assert isinstance(fig, matplotlib.figure.Figure)
  lines = {line.get_label(): line for ax in fig.axes for line in ax.lines}
  assert set(lines) == {
    'loss/total',
    'eval_accuracy/student',
    'eval_accuracy/teacher',
  }
  assert list(lines['loss/total'].get_xdata()) == list(range(1, 21)) + [30]
  assert list(lines['eval_accuracy/student'].get_xdata()) == [10, 20, 30]
  assert lines['eval_accuracy/student'].get_ydata() == pytest.approx(
    [25, 50, 75], rel=1e-5
  )
  assert lines['eval_accuracy/teacher'].get_ydata() == pytest.approx(
    [50, 75, 87.5], rel=1e-5
  )
  loss_ax = lines['loss/total'].axes
  assert lines['eval_accuracy/student'].axes is not loss_ax
  fig.savefig(tmp_path / 'curves.png')
  matplotlib.pyplot.close(fig)


def test_notebook_plot_reports_missing_series(tmp_path, capsys):
  """Event files of older kdjax runs (clu: tensor summaries) plot too."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  from clu import metric_writers  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path / 'supervised')
  writer = metric_writers.create_default_writer(workdir, asynchronous=False)
  writer.write_scalars(5, {'loss/total': 1.0, 'eval_accuracy/student': 0.5})
  writer.close()
  fig = _plotting_namespace()['plot_training_curves'](workdir)
  assert "['eval_accuracy/teacher']" in capsys.readouterr().out
  assert sorted(line.get_label() for ax in fig.axes for line in ax.lines) == [
    'eval_accuracy/student',
    'loss/total',
  ]
  matplotlib.pyplot.close(fig)


# --- The retry loop: run_until_done in launch/common.sh ----------------------------------

_FAKE_RUN = r"""#!/usr/bin/env bash
# Exits with the next code of $CODES (one a line), counting its runs in $RUNS.
echo run >> "$RUNS"
exit "$(sed -n "$(grep -c '^run$' "$RUNS")p" "$CODES")"
"""


def _loop_script(command, setup=''):
  """A bash program that sources common.sh and runs `command` in the retry loop."""
  return (
    f'set -euo pipefail; PROG=loop; REPO_ROOT={shlex.quote(ROOT)}; '
    f'source {shlex.quote(COMMON)}; {setup}\n'
    f'run_until_done {command}; echo "loop returned 0"'
  )


def _retry_loop(tmp_path, codes, setup='', env=None):
  """(exit code, lines of $RUNS, stderr) of the loop over a fake run."""
  fake = tmp_path / 'fake_run'
  fake.write_text(_FAKE_RUN)
  fake.chmod(0o755)
  (tmp_path / 'codes').write_text(''.join(f'{c}\n' for c in codes))
  runs = tmp_path / 'runs'
  result = subprocess.run(
    ['bash', '-c', _loop_script(shlex.quote(str(fake)), setup)],
    capture_output=True,
    text=True,
    timeout=30,
    env={
      **os.environ,
      'CODES': str(tmp_path / 'codes'),
      'RUNS': str(runs),
      **(env or {}),
    },
  )
  lines = runs.read_text().splitlines() if runs.exists() else []
  return result.returncode, lines, result.stderr


@pytest.mark.parametrize(
  'codes, exit_code, runs',
  [
    ([75, 75, 0], 0, 3),  # preempted twice, then finished
    ([75, 1], 1, 2),  # preempted, then a real failure: no third run
    ([2], 2, 1),  # a user error: never retried
    ([0], 0, 1),
    ([137], 137, 1),  # killed (e.g. out of memory): not a preemption
  ],
)
def test_retry_loop_reruns_only_preempted_runs(
  tmp_path, codes, exit_code, runs
):
  code, lines, stderr = _retry_loop(tmp_path, codes)
  assert (code, lines) == (exit_code, ['run'] * runs), stderr
  assert stderr.count('was preempted (exit code 75); resuming') == runs - 1
  if exit_code not in (0, 75):
    assert f'failed with exit code {exit_code}; not retrying' in stderr


def test_retry_loop_gives_up_after_the_cap(tmp_path):
  dirs = [tmp_path / name for name in ('two', 'zero', 'bad')]
  for d in dirs:
    d.mkdir()
  code, lines, stderr = _retry_loop(
    dirs[0], [75] * 6, env={'KDJAX_MAX_RETRIES': '2'}
  )
  assert (code, len(lines)) == (75, 3)
  assert 'preempted 3 times; giving up after 2 retries' in stderr
  code, lines, _ = _retry_loop(dirs[1], [75, 0], env={'KDJAX_MAX_RETRIES': '0'})
  assert (code, len(lines)) == (75, 1)
  code, lines, stderr = _retry_loop(
    dirs[2], [0], env={'KDJAX_MAX_RETRIES': 'many'}
  )
  assert (code, lines) == (
    2,
    [],
  ) and 'KDJAX_MAX_RETRIES must be a number' in stderr


def test_retry_loop_calls_the_hook_before_each_retry(tmp_path):
  hook = 'hook() { echo "hook $1" >> "$RUNS"; }; RETRY_HOOK=hook'
  code, lines, _ = _retry_loop(tmp_path, [75, 75, 0], setup=hook)
  assert code == 0
  assert lines == ['run', 'hook 1', 'run', 'hook 2', 'run']
  # A hook that fails (e.g. the VM cannot be recreated) ends the loop.
  (tmp_path / 'runs').unlink()
  code, lines, _ = _retry_loop(
    tmp_path, [75, 0], setup='hook() { return 7; }; RETRY_HOOK=hook'
  )
  assert (code, lines) == (7, ['run'])


_SLOW_RUN = r"""#!/usr/bin/env bash
# Runs until SIGTERM, then exits 75 as kdjax does after saving a checkpoint.
trap 'echo term >> "$RUNS"; exit 75' TERM
echo run >> "$RUNS"
while :; do sleep 0.05; done
"""


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=str)
def test_retry_loop_a_stop_is_not_retried(tmp_path, sig):
  """A signal to the loop reaches the run (as SIGTERM) and ends the loop."""
  slow = tmp_path / 'slow_run'
  slow.write_text(_SLOW_RUN)
  slow.chmod(0o755)
  runs = tmp_path / 'runs'
  # The loop starts with SIGINT at its default, as under a terminal's Ctrl-C.
  # A shell cannot trap a signal that was ignored when it started, and a test
  # runner started in the background by a non-interactive shell (nohup, `&`)
  # passes SIGINT on ignored: the loop would then never see it and hang.
  with_default_sigint = (
    'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); '
    'os.execvp("bash", ["bash", "-c", sys.argv[1]])'
  )
  loop = subprocess.Popen(
    [sys.executable, '-c', with_default_sigint]
    + [_loop_script(shlex.quote(str(slow)))],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, 'RUNS': str(runs)},
  )
  deadline = time.time() + 20
  while not (runs.exists() and 'run' in runs.read_text()):
    assert time.time() < deadline and loop.poll() is None
    time.sleep(0.05)
  loop.send_signal(sig)
  _, stderr = loop.communicate(timeout=20)
  assert loop.returncode == 75, stderr
  assert runs.read_text().splitlines() == ['run', 'term']
  assert 'stopped by a signal' in stderr and 'resuming' not in stderr


# tpu_pod.sh run --retry, with a gcloud that plays a Spot TPU: each kdjax.main run
# exits with the next code of $FAKE_CODES; 255 (ssh lost) also marks the VM PREEMPTED.
_FAKE_TPU_GCLOUD = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >> "$FAKE_GCLOUD_LOG"
case "$*" in
  *" describe "*) cat "$FAKE_STATE" ;;
  *kdjax.main*)
    code="$(sed -n "$(grep -c kdjax.main "$FAKE_GCLOUD_LOG")p" "$FAKE_CODES")"
    if [ "$code" = 255 ]; then echo PREEMPTED > "$FAKE_STATE"; fi
    exit "$code" ;;
  *" delete "*) : > "$FAKE_STATE" ;;
  *" create "*) echo READY > "$FAKE_STATE" ;;
esac
exit 0
"""


def _tpu_retry(tmp_path, codes, state='READY'):
  """(exit code, the gcloud subcommands in order) of `run --retry --spot`."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  gcloud = bin_dir / 'gcloud'
  gcloud.write_text(_FAKE_TPU_GCLOUD)
  gcloud.chmod(0o755)
  (tmp_path / 'codes').write_text(''.join(f'{c}\n' for c in codes))
  (tmp_path / 'state').write_text(state + '\n')
  (tmp_path / 'tmp').mkdir()
  log = tmp_path / 'gcloud.log'
  result = _run(
    TPU_POD,
    'run',
    '--retry',
    '--spot',
    '--config=pkkd:demo',
    '--workdir=gs://b/r',
    env={
      'PATH': f'{bin_dir}:{os.environ["PATH"]}',
      'TMPDIR': str(tmp_path / 'tmp'),
      'TPU_NAME': 'kd-spot',
      'ZONE': 'us-central2-b',
      'FAKE_GCLOUD_LOG': str(log),
      'FAKE_CODES': str(tmp_path / 'codes'),
      'FAKE_STATE': str(tmp_path / 'state'),
    },
    check=False,
  )
  steps = []
  for line in log.read_text().splitlines():
    words = line.split()
    step = words[3]  # compute tpus tpu-vm <subcommand>
    if step == 'ssh':
      step = 'train' if 'kdjax.main' in line else 'install'
    elif step == 'create':
      assert '--spot' in words
    steps.append(step)
  return result.returncode, steps, result.stderr


def test_tpu_run_retry_resumes_on_75(tmp_path):
  code, steps, stderr = _tpu_retry(tmp_path, [75, 0])
  assert code == 0, stderr
  assert steps == ['train', 'describe', 'train']


def test_tpu_run_retry_recreates_a_preempted_vm(tmp_path):
  """The ssh session dies with the VM (255): a PREEMPTED VM counts as preempted."""
  code, steps, stderr = _tpu_retry(tmp_path, [255, 0])
  assert code == 0, stderr
  assert steps == [
    'train',
    'describe',  # after the failure: PREEMPTED, so a preemption
    'describe',  # before the retry: recreate
    'delete',
    'create',
    'scp',
    'install',
    'train',
  ]
  assert 'kd-spot was preempted' in stderr


def test_tpu_run_retry_stops_on_a_real_failure(tmp_path):
  code, steps, stderr = _tpu_retry(tmp_path, [1, 0])
  assert code == 1
  assert steps == ['train', 'describe']  # READY: the failure is the run's
  assert 'not retrying' in stderr


def test_tpu_run_retry_needs_the_foreground():
  result = _tpu(
    'run',
    '--retry',
    '--detach',
    '--config=pkkd:demo',
    '--workdir=gs://b/r',
    check=False,
  )
  assert result.returncode == 2 and 'drop --detach' in result.stderr


def test_gpu_host_retry_resumes(tmp_path):
  """gpu_host.sh --retry: the stand-in training exits 75 once, then finishes."""
  _fake_venv_python(
    tmp_path,
    'echo run >> "$RUNS"',
    '[ "$(grep -c run "$RUNS")" -ge 2 ] || exit 75',
  )
  result = _run(
    GPU_HOST,
    '--skip-install',
    '--retry',
    f'--venv={tmp_path / "venv"}',
    'pkkd:demo',
    str(tmp_path / 'w'),
    env={'RUNS': str(tmp_path / 'runs')},
  )
  assert (tmp_path / 'runs').read_text().splitlines() == ['run', 'run']
  assert json.loads(result.stdout) == {'method': 'pkkd', 'steps': 3}


# --- The local config check: kdjax.check_config, through both scripts --------------------

_BAD_CONFIGS = [
  pytest.param(
    'pkkd:cifar100_resnet200',
    [],
    "Unknown pkkd preset 'cifar100_resnet200'; choose one of",
    id='preset',
  ),
  pytest.param(
    'pkkd:demo',
    ['--config.num_epoch=3'],
    "Unknown config key 'num_epoch'; did you mean 'num_epochs'?",
    id='key-typo',
  ),
  pytest.param(
    'pkkd:demo',
    ['--config.num_epochs=abc'],
    "--config.num_epochs=abc: 'abc' is not an integer; this key takes an integer",
    id='value-type',
  ),
]


def _checked(script, config, overrides):
  """A launch script's --dry-run with the real config check."""
  env = {'KDJAX_CHECK_PYTHON': sys.executable}
  if script == TPU_POD:
    return _run(
      TPU_POD,
      'run',
      '--dry-run',
      f'--config={config}',
      '--workdir=gs://b/r',
      *overrides,
      env={**env, 'TPU_NAME': 'kd', 'ZONE': 'z'},
      check=False,
      timeout=300,  # Loading the trainer (tensorflow) on a busy machine.
    )
  return _run(
    GPU_HOST,
    '--dry-run',
    '--skip-install',
    config,
    '/tmp/w',
    *overrides,
    env=env,
    check=False,
    timeout=300,
  )


def _one_paragraph(stderr):
  (line,) = [
    l for l in stderr.splitlines() if l.startswith('kdjax.check_config')
  ]
  assert (
    'Traceback' not in stderr
    and '\\n' not in line
    and 'Did you mean "' not in line
  )
  return line


@pytest.mark.parametrize('script', SCRIPTS, ids=os.path.basename)
@pytest.mark.parametrize('config, overrides, message', _BAD_CONFIGS)
def test_launch_stops_on_a_config_error(script, config, overrides, message):
  result = _checked(script, config, overrides)
  assert result.returncode == 2, result.stderr
  assert message in _one_paragraph(result.stderr)
  assert 'nothing was started' in result.stderr
  assert not [l for l in result.stdout.splitlines() if l.startswith('+ ')]


@pytest.mark.parametrize('script', SCRIPTS, ids=os.path.basename)
def test_launch_checks_a_good_config_then_runs(script):
  result = _checked(script, 'pkkd:demo', ['--config.num_epochs=2'])
  assert result.returncode == 0, result.stderr
  assert 'config: configs/pkkd.py:demo: method pkkd' in result.stderr
  # The preset's own epoch count, read from the config file itself.
  demo_epochs = (
    config_defaults.load_config_module(os.path.join(ROOT, 'configs', 'pkkd.py'))
    .get_config('demo')
    .num_epochs
  )
  assert f'override num_epochs: {demo_epochs} -> 2' in result.stderr
  assert any(
    'kdjax.main --config=configs/pkkd.py:demo' in c for c in _commands(result)
  )


def test_launch_without_a_python_that_loads_configs(tmp_path):
  no_python = {'KDJAX_CHECK_PYTHON': str(tmp_path / 'no' / 'python')}
  args = ['run', '--dry-run', '--config=pkkd:demo', '--workdir=gs://b/r']
  env = {**no_python, 'TPU_NAME': 'kd', 'ZONE': 'z'}
  result = _run(TPU_POD, *args, env=env, check=False)
  assert result.returncode == 2
  assert 'cannot load the config here' in result.stderr
  assert '--skip-config-check' in result.stderr
  assert _commands(_run(TPU_POD, *args, '--skip-config-check', env=env))
  # gpu_host.sh installs the venv first, then checks with it.
  result = _run(GPU_HOST, '--dry-run', 'pkkd:demo', '/tmp/w', env=no_python)
  assert 'the config is checked after the install' in result.stderr
  result = _run(
    GPU_HOST,
    '--dry-run',
    '--skip-install',
    'pkkd:demo',
    '/tmp/w',
    env=no_python,
    check=False,
  )
  assert result.returncode == 2 and 'cannot load the config' in result.stderr


def test_launch_checks_the_overrides_the_run_gets():
  """The check sees the file, --data-dir and every --config.* (also after --)."""
  env = {'TPU_NAME': 'kd', 'ZONE': 'z', 'KDJAX_CHECK_PYTHON': 'echo'}
  result = _run(
    TPU_POD,
    'run',
    '--dry-run',
    '--config=pkkd:demo',
    '--workdir=gs://b/r',
    '--data-dir=gs://b/tfds',
    '--config.seed=1',
    '--',
    '--config.num_epochs=2',
    '--mode=eval',
    env=env,
  )
  (echoed,) = [
    l for l in result.stderr.splitlines() if 'kdjax.check_config' in l
  ]
  assert echoed.split() == [
    'config:',
    '-m',
    'kdjax.check_config',
    '--config=configs/pkkd.py:demo',
    '--config.dataset.data_dir=gs://b/tfds',
    '--config.seed=1',
    '--config.num_epochs=2',
  ]


@pytest.mark.parametrize('config, overrides, message', _BAD_CONFIGS)
def test_check_config_entry_point_errors(
  capsys, monkeypatch, config, overrides, message
):
  from kdjax import check_config  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(ROOT)
  method, preset = config.split(':')
  code = check_config.check(
    [f'--config=configs/{method}.py:{preset}', *overrides]
  )
  assert code == 2
  assert message in _one_paragraph(capsys.readouterr().err)


@pytest.mark.parametrize(
  'argv, message',
  [
    (
      ['--config=configs/nope.py:demo'],
      'Cannot load the config file configs/nope.py: No such file or directory',
    ),
    (
      ['--config=configs/pkkd.py:demo', '--config.pkkd.temprature=1'],
      "Unknown config key 'pkkd.temprature'; did you mean 'pkkd.temperature'?",
    ),
    (
      ['--config=configs/ekd.py:demo', '--config.pkkd.alpha=1'],
      "--config.pkkd.alpha=1: Unknown config key 'pkkd'. An override can only "
      'set a key that the config already has (see get_config in configs/ekd.py)',
    ),
    (
      ['--config=configs/pkkd.py:demo', '--config.pkkd.kd_t_squared=maybe'],
      "'maybe' is not a boolean",
    ),
    (
      ['--config=configs/ekd.py:demo', '--config.teachers.0.name=resnet32'],
      '--config.teachers.0.name=resnet32: not a key path of the config',
    ),
    (
      ['--config=configs/ekd.py:demo', '--config.teachers[3].name=resnet32'],
      '--config.teachers[3].name=resnet32: not a key path of the config',
    ),
    (['--config.num_epochs=2'], '--config=FILE[:PRESET] is needed once'),
    # Values that parse but cannot train: the trainer's own checks.
    (
      ['--config=configs/pkkd.py:demo', '--config.optimizer.learning_rate=nan'],
      '--config.optimizer.learning_rate=nan',
    ),
    (
      ['--config=configs/pkkd.py:demo', '--config.batch_size=0'],
      '--config.batch_size=0',
    ),
  ],
)
def test_check_config_more_errors(capsys, monkeypatch, argv, message):
  from kdjax import check_config  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(ROOT)
  assert check_config.check(argv) == 2
  assert message in capsys.readouterr().err


def test_check_config_entry_point_summary(capsys, monkeypatch):
  from kdjax import check_config  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(ROOT)
  code = check_config.check(
    [
      '--config=configs/kd.py:demo',
      '--config.teacher.name=resnet32',
      '--config.optimizer.learning_rate=0.05',
    ]
  )
  out = capsys.readouterr().out.splitlines()
  assert code == 0
  assert out[0] == 'configs/kd.py:demo: method kd'
  assert '  model resnet8/conv' in out and '  teacher resnet32/conv' in out
  assert "  override teacher.name: 'resnet20' -> 'resnet32'" in out
  assert '  override optimizer.learning_rate: 0.1 -> 0.05' in out
  code = check_config.check(
    ['--config=configs/ekd.py:demo', '--config.teachers[1].name=resnet32']
  )
  out = capsys.readouterr().out.splitlines()
  assert code == 0
  assert out[3:6] == [
    '  teacher 1 resnet20/conv',
    '  teacher 2 resnet32/conv',
    '  teacher 3 resnet8/conv',
  ]
  assert "  override teachers[1].name: 'wrn16_2' -> 'resnet32'" in out


# --- Start-up console: kdjax.console ------------------------------------------------------

_IMPORT_TF = (
  'from kdjax import console; console.quiet_startup(); '
  'import tensorflow as tf; print(float(tf.constant(1.0) + 1))'
)


def _tf_startup(env):
  clean = {k: v for k, v in os.environ.items() if not k.startswith('TF_')}
  return subprocess.run(
    [sys.executable, '-c', _IMPORT_TF],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=120,
    env={**clean, **env},
  )


def test_quiet_startup_silences_tensorflow():
  from kdjax import console  # pylint: disable=g-import-not-at-top

  assert console.quiet_env({}) == {
    'TF_CPP_MIN_LOG_LEVEL': '3',
    'TF_ENABLE_ONEDNN_OPTS': '0',
  }
  assert console.quiet_env({'TF_ENABLE_ONEDNN_OPTS': '1'}) == {
    'TF_CPP_MIN_LOG_LEVEL': '3'
  }
  # (test_main_quiets_tensorflow_before_importing_it: no lines by default.)
  # With oneDNN on (the default on CPUs with AVX-512 VNNI or AMX; the user's
  # setting wins) TensorFlow announces it although TF_CPP_MIN_LOG_LEVEL=3.
  loud = _tf_startup({'TF_ENABLE_ONEDNN_OPTS': '1'})
  assert loud.returncode == 0 and loud.stdout == '2.0\n'
  assert 'oneDNN custom operations are on' in loud.stderr


_ENV_AT_TF_IMPORT = """
import os, sys
seen = []
class Spy:  # Notes the variables when tensorflow is first imported.
  def find_spec(self, name, path=None, target=None):
    if name == 'tensorflow' and not seen:
      seen.append([os.environ.get(k) for k in ('TF_ENABLE_ONEDNN_OPTS', 'TF_CPP_MIN_LOG_LEVEL')])
sys.meta_path.insert(0, Spy())
import kdjax.main
import tensorflow
print(*seen[0])
"""


def test_main_quiets_tensorflow_before_importing_it():
  """kdjax.main sets the variables while its own imports run, before tensorflow."""
  clean = {k: v for k, v in os.environ.items() if not k.startswith('TF_')}
  result = subprocess.run(
    [sys.executable, '-c', _ENV_AT_TF_IMPORT],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=120,
    env=clean,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['0', '3']
  assert result.stderr == ''


# --- TensorBoard scalars ----------------------------------------------------------------


def test_reporter_scalars_are_tensorboard_scalars(tmp_path):
  """What the Reporter writes, EventAccumulator.Scalars() reads back."""
  pytest.importorskip('tensorboard')
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top

  from kdjax.train import reporting  # pylint: disable=g-import-not-at-top

  reporter = reporting.Reporter(str(tmp_path))
  reporter.scalars(10, {'loss/total': 2.5, 'learning_rate': 0.1})
  reporter.scalars(20, {'loss/total': 1.25, 'eval_accuracy/student': 0.75})
  reporter.close()
  accumulator = event_accumulator.EventAccumulator(str(tmp_path))
  accumulator.Reload()
  assert sorted(accumulator.Tags()['scalars']) == [
    'eval_accuracy/student',
    'learning_rate',
    'loss/total',
  ]
  loss = accumulator.Scalars('loss/total')
  assert [(e.step, e.value) for e in loss] == [(10, 2.5), (20, 1.25)]
  (accuracy,) = accumulator.Scalars('eval_accuracy/student')
  assert (accuracy.step, accuracy.value) == (20, 0.75)
