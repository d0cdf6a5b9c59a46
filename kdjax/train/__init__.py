"""The trainer behind ``python -m kdjax.main``.

train.py          train_and_evaluate / evaluate: validate, plan, run
plan.py           the runs of a config: each teacher it pre-trains, then itself
setup.py          data, method, frozen teachers, optimizers, state shapes
mesh.py           the device mesh, batch placement and prefetch
step.py           the jitted train, guarded, eval and BN-estimate steps
guard.py          the non-finite guard's host side
evaluation.py     precise-BN, accuracy per head, --mode=eval
teachers.py       frozen teachers restored from earlier runs
loop.py           one run: resume or init, steps, logs, checkpoints, evals
state.py          TrainState: what one step reads and writes, and a checkpoint holds
checkpointing.py  orbax CheckpointManager for runs; teacher restore with checks
reporting.py      metric writers, console lines, progress bar, summary.json
run_config.py     the config a checkpoint records, and what may change on resume
preemption.py     SIGTERM as a request to save and stop
"""
