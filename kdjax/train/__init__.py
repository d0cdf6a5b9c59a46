"""The trainer behind ``python -m kdjax.main``.

state.py          TrainState: what one step reads and writes, and what a checkpoint holds
methods/          one module per distillation method: models, losses, eval heads
checkpointing.py  orbax CheckpointManager for runs; teacher restore with checks
reporting.py      metric writers, console lines, progress bar, summary.json
train.py          train_and_evaluate / evaluate: mesh, data, init, restore, loop
"""
