"""A sweep config that uses the user-defined kind of ``sliding_window.py`` beside it.

    python -m experiments.sweep --config=tests/custom_kinds/swa_sweep.py --dry_run
    python -m experiments.sweep --config=tests/custom_kinds/swa_sweep.py --workdir=/tmp/swa

Importing the kind's module here registers it before any run is planned; the rest is
an ordinary sweep config (``configs/scaling.py:tiny`` plus one arm).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sliding_window  # noqa: E402,F401  (registers the "swa" kind)

from configs import scaling  # noqa: E402


def get_config(arg=None):
    c = scaling.get_config("tiny")
    c.arm_defs.swa = dict(attention_pattern="swa", attention=dict(swa=dict(window=16)))
    c.arm_defs.swa_switch50 = dict(attention_pattern="swa", attention=dict(swa=dict(window=16)),
                                   train=dict(switch_to_full_at=0.5))
    c.arms = arg or "full,swa"
    return c
