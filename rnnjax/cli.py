"""The ``rnnjax`` command line: argument parsing only; each command calls one library function.

    rnnjax train [--config configs/x.py[:arg]] [--config.k=v ...] [--workdir runs/x]
    rnnjax eval --workdir runs/x [--checkpoint best|latest]
    rnnjax sample --workdir runs/x [--prime TEXT] [--length N] [--temperature T]

``rnnjax train`` with no ``--config`` runs the embedded default job
(``configs/adding.py``, an LSTM on the adding problem at T=100) in ``runs/default``.
Also runnable as ``python -m rnnjax``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

#: The default job's config: the repo's configs/ folder (the package is installed from the checkout).
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "adding.py"
COMMANDS: dict[str, callable] = {}


def command(fn):
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


def _split_config_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates ``--config.a.b=v`` (or ``--config.a.b v``) from the other arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config."):
            key = a[len("--config."):]
            if "=" not in key:
                if i + 1 >= len(argv):
                    raise SystemExit(f"error: {a} needs a value")
                key = f"{key}={argv[i + 1]}"
                i += 1
            overrides.append(key)
        else:
            rest.append(a)
        i += 1
    return rest, overrides


@command
def cmd_train(argv):
    p = argparse.ArgumentParser(prog="rnnjax train", description="Train from a config file.")
    p.add_argument("--config", default=None,
                   help="configs/x.py[:arg]; default: the embedded default job (adding problem)")
    p.add_argument("--workdir", default=None,
                   help="run directory (re-running on it resumes); default runs/<config name>")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    argv, overrides = _split_config_overrides(argv)
    args = p.parse_args(argv)
    from rnnjax.configlib import load_config, split_spec
    from rnnjax.train.trainer import train_and_evaluate

    spec = args.config or str(DEFAULT_CONFIG)
    config = load_config(spec, overrides)
    workdir = args.workdir or (f"runs/{split_spec(spec)[0].stem}" if args.config else
                               "runs/default")
    print(f"rnnjax: training {spec} in {workdir}", file=sys.stderr)
    final = train_and_evaluate(config, workdir, progress=False if args.no_progress else None)
    print(json.dumps({"workdir": workdir, "eval": _printable(final)}, indent=2))


@command
def cmd_eval(argv):
    p = argparse.ArgumentParser(prog="rnnjax eval", description="Evaluate a trained workdir.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    args = p.parse_args(argv)
    from rnnjax.train.trainer import run_eval

    print(json.dumps(_printable(run_eval(args.workdir, args.checkpoint)), indent=2))


@command
def cmd_sample(argv):
    p = argparse.ArgumentParser(prog="rnnjax sample",
                                description="Generate text from a trained language model.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--prime", default="", help="text to condition on")
    p.add_argument("--length", type=int, default=200, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--num", type=int, default=1, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    args = p.parse_args(argv)
    from rnnjax.train.trainer import load_for_inference

    config, task, model, _ = load_for_inference(args.workdir, args.checkpoint)
    if not hasattr(task, "sample"):
        raise SystemExit(f"error: task {config.task!r} does not generate text; `rnnjax sample` "
                         f"needs a language-model workdir")
    for text in task.sample(model, args.prime, args.length, args.temperature, args.num,
                            args.seed):
        print(text)
        print("-" * 40)


def _printable(d):
    return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                 else str(o)))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("RNNJAX_LOGLEVEL", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("commands:", ", ".join(sorted(COMMANDS)))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rnnjax: unknown command {name!r}; commands: {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        COMMANDS[name](rest)
    except (ValueError, FileNotFoundError) as e:
        print(f"rnnjax {name}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from rnnjax.train.checkpoint import CheckpointError
        from rnnjax.train.trainer import NonFiniteLossError

        if isinstance(e, (CheckpointError, NonFiniteLossError)):
            print(f"rnnjax {name}: error: {e}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
