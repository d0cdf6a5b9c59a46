r"""PKKD knob sweep on mnist5k: select on seeds 0-2, confirm on fresh seeds 3-7.

From the repository root:

    nice -n 10 python -m experiments.pkkd_sweep                # regenerates experiments/pkkd_sweep/results/
    python -m experiments.pkkd_sweep --quick --out /tmp/sweep  # rot check: 2 steps a run
    python -m experiments.pkkd_sweep --grid premise            # CNN vs ANN alone, no PKKD
    nice -n 10 python -m experiments.pkkd_sweep --grid demo    # the demo regime
    nice -n 10 python -m experiments.pkkd_sweep --grid deep --phase select

Every run is an in-process ``train_and_evaluate`` of a config built by
experiments.mnist5k_study's builders (``supervised``, ``pkkd_config``) from the
``demo`` presets, with the in-memory loader (``--config.data.loader=numpy``,
no TensorFlow) and one small budget (``REGIME``) shared by every cell, so the
ANN alone, the CNN alone and every PKKD variant are comparable seed by seed.

Selection (``--grid sweep``, the default): each entry of ``VARIANTS`` changes
one knob of ``config.pkkd`` against a base (the preset as it was, then the
best so far), runs on ``SELECT_SEEDS`` and is compared with the ANN alone of
the same seed (paired difference, mean +- sample std over seeds).
Confirmation: ``WINNER`` (chosen from the selection table only) and the
paper-literal setting (alpha = beta = 5, T = 4, T^2 on) on ``CONFIRM_SEEDS``,
never used for selection, against the ANN alone and the CNN alone.

Demo regime (``--grid demo``): the runs are ``configs/pkkd.py:demo`` itself
(full-width adder ResNet-8 student, CNN teacher, DEMO_EPOCHS epochs of batch
64, the preset's DEMO_SETTINGS) with ``config.pkkd`` set to each of
``DEMO_VARIANTS``, and the baselines are ``configs/supervised.py:demo`` with
the same network, epochs and settings (``demo_alone``: the README's ANN-alone
command). Selection on SELECT_SEEDS: the ANN and the CNN alone, the
variants, then ``DEMO_LATE_VARIANTS`` (each remaining knob one at a time
around ``DEMO_WINNER``, a frozen teacher restored from the seed's CNN alone,
and the paper-literal weights). Confirmation on CONFIRM_SEEDS: the ANN
alone, the CNN alone and ``DEMO_WINNER`` (or ``--winner NAME``, chosen on
SELECT_SEEDS) seed by seed, then ``DEMO_WINNER`` beside another winner and
the paper-literal setting; ``--phase`` runs one of the two.

Premise (``--grid premise``): CNN alone vs ANN alone of the same architecture
over the cells of ``PREMISE_GRID`` (depth / width / epochs / data fraction),
3 seeds each; "premise holds" when mean(CNN) - mean(ANN) exceeds the pooled
std sqrt((sd_CNN^2 + sd_ANN^2) / 2) (``study.verdict``). The same rule marks a
PKKD cell "yes" only when its student beats the ANN alone by more than the
pooled std ("within noise" when level, "no (reversed)" when below).

PKKD where the premise holds (``--grid premise_pkkd``): the premise grid's
ResNet-20 cell, its ANN and CNN alone reused. ``PREMISE_PKKD_VARIANTS`` (the
measured and the paper-literal weights) on SELECT_SEEDS; then
``PREMISE_PKKD_WINNER`` and the paper setting on CONFIRM_SEEDS; then
``PREMISE_PKKD_LATE_VARIANTS``, one knob at a time around ``measured`` (T^2,
beta, temperature, the teacher learning from the student, a frozen teacher
restored from the seed's CNN alone, raw features, the last stage only, sigma
scales, no ramp, alpha), on SELECT_SEEDS. ``--winner NAME --phase confirm``
confirms another variant on CONFIRM_SEEDS (one chosen on SELECT_SEEDS);
``--grid demo`` takes it too.

Finished runs are reused from ``--out/runs`` (same run identity, by the
study's runner: experiments.mnist5k_study.plan),
so an interrupted sweep resumes and a rerun only rewrites the tables; XLA
compilations are cached in ``--out/runs/jax_cache``. Outputs: ``--out``/
``<grid>.json`` (every run and the aggregates) and ``<grid>.md``.
``--cells NAME,...`` runs only those cells of a grid (with the ANN and CNN
alone they are compared with), e.g. a few variants on another machine; its
outputs are ``<grid>[_<phase>]_cells.json`` and ``.md``.
``--tables-from <grid>.json`` trains nothing and rebuilds the tables from the
runs a JSON recorded (the runs directory is not committed).

Modules: grids.py (the grids as data: regimes, seeds, variants as config
overrides, and each grid's run order as blocks of phase, seeds and arms),
deep.py (``--grid deep``: its cells, arms and plan), runs.py (the configs of
each grid's runs, expanded from its order and executed by the study's
runner), tables.py (statistics and Markdown tables), cli.py (the command).

PKKD where its premise holds strongly (``--grid deep``): ResNet-20 student
and teacher on 10 % of the digits, every ingredient as an arm (deep.py),
selected on seeds 0-4 and confirmed on fresh seeds 5-9 (``--winner``).
"""

# The names the tests and other code use.
from .cli import main, parse_args
from .grids import (
  CONFIRM_SEEDS,
  DEMO_LATE_VARIANTS,
  DEMO_VARIANTS,
  DEMO_WINNER,
  LATE_VARIANTS,
  PAPER,
  PREMISE_GRID,
  PREMISE_PKKD_CELL,
  PREMISE_PKKD_LATE_VARIANTS,
  PREMISE_PKKD_VARIANTS,
  PREMISE_PKKD_WINNER,
  QUICK_REGIME,
  REGIME,
  SELECT_SEEDS,
  VARIANTS,
  WINNER,
)
from .runs import (
  Run,
  demo_knobs,
  demo_runs,
  knobs_of,
  only_cells,
  premise_pkkd_regime,
  premise_pkkd_runs,
  premise_pkkd_total_steps,
  premise_runs,
  settings_for,
  sweep_runs,
)
from .tables import summarize_premise, summarize_sweep

__all__ = [
  'main',
  'parse_args',
  'CONFIRM_SEEDS',
  'DEMO_LATE_VARIANTS',
  'DEMO_VARIANTS',
  'DEMO_WINNER',
  'LATE_VARIANTS',
  'PAPER',
  'PREMISE_GRID',
  'PREMISE_PKKD_CELL',
  'PREMISE_PKKD_LATE_VARIANTS',
  'PREMISE_PKKD_VARIANTS',
  'PREMISE_PKKD_WINNER',
  'QUICK_REGIME',
  'REGIME',
  'SELECT_SEEDS',
  'VARIANTS',
  'WINNER',
  'Run',
  'demo_knobs',
  'demo_runs',
  'knobs_of',
  'only_cells',
  'premise_pkkd_regime',
  'premise_pkkd_runs',
  'premise_pkkd_total_steps',
  'premise_runs',
  'settings_for',
  'sweep_runs',
  'summarize_premise',
  'summarize_sweep',
]
