"""Every baseline once on mnist5k at the demo budget, one table (issue 25).

  python -m experiments.baselines_demo [--quick] [--only dkd,cc] [--workdir DIR]

One resnet20 teacher is trained once (the demos' 2 epochs), then each method
distils it into resnet8 for the demo's 3 epochs: KD and the terms of
configs/distill.py (its ``demo_<method>`` presets), FitNets and AT (the
configs/kd.py demo with the hint or AT term, as its CIFAR variants), CRD
(configs/crd.py:demo), and the student alone. ``--only`` reruns some rows
and keeps the others WORKDIR/results.json holds. The table (method, student accuracy, teacher accuracy, wall
time) goes to WORKDIR/table.md and WORKDIR/results.json; README.md beside
this file holds the committed one. ``--quick``: tiny networks on synthetic
data, 2 steps a run, a rot check that the suite runs (test_baselines_demo.py).
"""
