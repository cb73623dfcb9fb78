"""Forecasting a real-valued series: Mackey-Glass (tau=17) by default, or a CSV column.

Launch:

    rnnjax train --config configs/forecast.py --workdir runs/forecast
    rnnjax train --config configs/forecast.py:csv --config.data.path=series.csv \
        --config.data.column=value --workdir runs/forecast_csv
    rnnjax train --config configs/forecast.py:smoke --workdir /tmp/smoke

Windows of 64 steps predict the next 8 values; the series is split
chronologically 70/15/15 and standardised with train statistics only.

Expected on Mackey-Glass: validation MSE below 0.01 (standardised units; a
constant forecast scores about 1.0) after 2,000 steps, about 2 minutes on a
2-core CPU.

Variants: cell, csv (read data.path / data.column instead), smoke.
"""

from rnnjax.config_schema import base_config, smoke
from rnnjax.configlib import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, cell="gru", csv=False, smoke=False)
    c = base_config()
    c.task = "regression"
    c.data.name = "csv" if arg.csv else "mackey_glass"
    c.data.num_samples = 4000  # Mackey-Glass length
    c.data.path = ""  # csv: the file
    c.data.column = "0"  # csv: column name or index
    c.data.window = 64  # input steps
    c.data.horizon = 8  # predicted steps
    c.data.train_fraction = 0.7
    c.data.val_fraction = 0.15

    c.model.cell = arg.cell
    c.model.hidden = 64
    c.model.pooling = "last"

    c.optim.lr = 3e-3
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 100
    c.optim.end_lr_factor = 0.05

    c.train.steps = 2000
    c.train.batch_size = 64
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    c.train.eval_batch_size = 256
    if arg.smoke:
        smoke(c)
        c.data.num_samples = 600
        c.data.window = 16
    return c
