r"""Small-scale study on the embedded MNIST-5k digits: do the papers' effects show?

From the repository root (matplotlib: pip install -r experiments/requirements.txt):

    python -m experiments.mnist5k_study                 # default plan: estimated 60 min, 2 cores
    python -m experiments.mnist5k_study --dry-run       # print the plan and its estimate only
    python -m experiments.mnist5k_study --studies pkkd,cost --seeds 5
    python -m experiments.mnist5k_study --quick --out /tmp/study   # rot check: 1 seed, 2 steps a run
    python -m experiments.mnist5k_study --loader numpy  # on a host without tensorflow/tfds/clu
    python -m experiments.mnist5k_study --report-from experiments/mnist5k_study/results/study.json
                                                        # study.md + PNGs again, no training
    python -m experiments.mnist5k_study --measure-step-seconds   # re-time the cost model here (~1.5 min a network)
    python -m experiments.mnist5k_study.table COLUMN=GLOB ...    # several study.json side by side

Studies (docs/recipes.md), every cell on mnist5k (4,000 train / 1,000 test real
MNIST digits, 28x28x1), built from the ``demo`` presets of configs/*.py (their
optimizer recipe, kdjax.config_defaults.demo_recipe; batch 64; precise-BN
before each eval):

  pkkd  same architecture (ResNet-8 at half width, 8/16/32 channels: adder
        layers are slow on CPU): CNN alone, ANN alone, ANN + PKKD, and the
        ablations: soft labels only (beta = 0), a fixed pretrained teacher
        (teacher_mode='frozen'; the teacher is the CNN-alone run of the same
        seed, i.e. a supervised CNN trained with the same budget), and the
        feature loss on raw outputs without kernels (features='raw').
  ofd   a larger CNN teacher (ResNet-20) and a smaller student (ResNet-8 at half
        width): student alone, Hinton KD, FitNets, AT, OFD. FitNets and AT are
        CE + their feature term (kd_weight = 0), as in the RepDistiller table.
  ekd   K = 3 teachers of different architectures (ResNet-20, WRN-16-1, a
        ResNet-8 at 1.5x width) into a 3-branch ResNet-8-style student: a
        single ResNet-8 vs the multi-branch student trained alone vs EKD, on
        the full training set and on a class-balanced 10 % of it (the subset is
        fixed by the pipeline's fraction_seed: every seed and run sees the same
        400 digits). "Trained alone" is method 'ekd' with lambda_feat =
        lambda_kd = 0: the same loss CE(ensemble) + sum_k CE(branch k) without
        the teacher terms, and it reports every branch. The 10 % regime's
        teachers are by default the full-data ones (--ekd-10pct-teachers).
  cost  multiplications, additions, parameters and energy (45 nm: mul 3.7 pJ,
        add 0.9 pJ) per image of every student, from kdjax.opcount.count_ops.

Rules: every cell runs for every seed (default 3, the minimum the budget never
cuts; mean +- sample std over seeds);
within a comparison every cell has the same budget (epochs, batch, schedule);
frozen teachers are trained once per seed and shared by every cell that uses
them; identical configs (e.g. the PKKD CNN alone and the OFD student alone)
run once. Runs go in seed-major order; with --seeds above 3, a round of seeds
that would end past --budget-minutes does not start, so every cell keeps the
same n. Runs already finished in --out/study_runs with the same
config are reused (an interrupted study resumes); XLA compilations are cached
in --out/study_runs/jax_cache, so seeds after the first compile little.

Outputs in --out: study.json (every run: cell, seed, final accuracy per head,
wall seconds, eval history; per cell mean/std/n; the claim checks; op counts),
study.md (one table per study with the paper claim beside each row and
"reproduces at this scale?" computed from the numbers), study_<study>.png (bars
with std error bars) and study_<study>_curves.png (eval accuracy per epoch,
mean +- std over seeds).

"Reproduces at this scale?" compares two cells' means against their pooled
std over seeds (stats.py gives the rule).

Modules: settings.py (budgets and model sizes, Settings), cells.py (config
builders, the cells of each study and their claims, the cost study's op
counts), plan.py (one job per distinct config, the result cache, running a
job), costs.py (wall-time estimate of a plan from step_seconds.json, the
timing table of the machine it was measured on, and its re-measurement),
stats.py (mean +- std over seeds, verdicts, paired gains), report.py
(study.json, study.md, PNGs; rebuilding them from a study.json), cli.py,
table.py (several study.json files side by side).

Teachers: one mechanism, the planner's. A frozen teacher is a Dep of the cells
that restore it: a supervised job of the plan, trained once per seed in
study_runs/teachers/ (or the cell run it equals: the PKKD fixed teacher is the
CNN-alone run), cached like any job, its key part of its students' keys, and
its accuracy reported; students get its workdir as checkpoint_dir. The
trainer's own mechanism (pretrain_epochs without checkpoint_dir: a teacher
pre-trained in-process into each student's workdir/teachers/<i>_<name>) is
not used, and plan.check_teachers rejects a config that would trigger it:
it would train the OFD teacher once per student (KD, FitNets, AT, OFD and
EKD share it), outside the cache and the report, and its teacher run resets
max_steps, so --quick's teachers would train whole epochs.
"""

# The names other modules and tests use (experiments.pkkd_sweep builds its
# runs with this package's builders and runs them with its runner).
from .cells import (
  CELL_BUILDERS,
  Cell,
  Check,
  Dep,
  cost_checks,
  cost_rows,
  ekd_cells,
  ekd_config,
  finish,
  kd_config,
  ofd_cells,
  ofd_config,
  pkkd_cells,
  pkkd_config,
  preset,
  select_cells,
  supervised,
)
from .cli import main, parse_args, run
from .costs import STEP_SECONDS_FILE, CostModel, load_step_table
from .plan import (
  Job,
  Planner,
  check_teachers,
  collect_runs,
  config_key,
  run_job,
  stored_summary,
  use_compile_cache,
)
from .report import rebuild, write_markdown, write_outputs
from .settings import (
  MIN_SEEDS,
  REPO,
  STUDIES,
  Settings,
  apply_override,
  model_label,
  quick_settings,
  scaled,
)
from .stats import aggregate, curves, mean_std, paired_gain, verdict

__all__ = [
  'CELL_BUILDERS',
  'Cell',
  'Check',
  'Dep',
  'cost_checks',
  'cost_rows',
  'ekd_cells',
  'ekd_config',
  'finish',
  'kd_config',
  'ofd_cells',
  'ofd_config',
  'pkkd_cells',
  'pkkd_config',
  'preset',
  'select_cells',
  'supervised',
  'Job',
  'Planner',
  'check_teachers',
  'collect_runs',
  'config_key',
  'run_job',
  'stored_summary',
  'use_compile_cache',
  'MIN_SEEDS',
  'REPO',
  'STUDIES',
  'Settings',
  'apply_override',
  'model_label',
  'quick_settings',
  'scaled',
  'main',
  'parse_args',
  'run',
  'STEP_SECONDS_FILE',
  'CostModel',
  'load_step_table',
  'rebuild',
  'write_markdown',
  'write_outputs',
  'aggregate',
  'curves',
  'mean_std',
  'paired_gain',
  'verdict',
]
