"""The device check: ``python -m experiments.device_check --out=DIR --budget_s=S``.

See ``experiments/device_check/__main__.py`` for the command and ``docs/device_check.md``
for running it on a GPU machine.
"""
