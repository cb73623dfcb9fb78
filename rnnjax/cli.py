"""The ``rnnjax`` command line: argument parsing only; each command calls one library function.

    rnnjax train [--config configs/x.py[:arg]] [--config.k=v ...] [--workdir runs/x]
    rnnjax eval --workdir runs/x [--checkpoint best|latest] [--config.decode.beam_size=8 ...]
    rnnjax sample --workdir runs/x [--prime TEXT] [--length N] [--temperature T]
                  [--top-k K] [--top-p P]
    rnnjax decode --workdir runs/x --strategy greedy|beam|sample [--beam-size K] --input "12+345"
    rnnjax sweep experiments/<study>.py[:arg] [--workers N] [--smoke] [--vmap-seeds]
                 [--executor local|ray|slurm] [--address ...] [--cpus-per-trial N]
    rnnjax report experiments/<study>.py[:arg]
    rnnjax diagnose --workdir runs/x
    rnnjax config [--config configs/x.py[:arg]] [--config.k=v ...]   (print the resolved config)
    rnnjax fetch NAME [--cache-dir DIR]                               (download a registry dataset)
    rnnjax --version

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

#: The default job: configs/adding.py, shipped with the package (rnnjax.configlib.configs_dir).
DEFAULT_CONFIG = "configs/adding.py"
COMMANDS: dict[str, callable] = {}


class SweepFailed(RuntimeError):
    """Some trials of a sweep failed (after the others finished); the message lists them."""


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
    p = argparse.ArgumentParser(
        prog="rnnjax train", description="Train from a config file. Override any config key "
        "with --config.a.b=value (e.g. --config.optim.lr=3e-4); an unknown key is an error "
        "that names its close matches. Re-running on a workdir resumes it.")
    p.add_argument("--config", default=None,
                   help="configs/x.py[:arg]; default: the embedded default job (adding problem)")
    p.add_argument("--workdir", action="append", default=None,
                   help="run directory (re-running on it resumes); default runs/<config name>. "
                        "Give it K times, with K --member, to train K members vmapped")
    p.add_argument("--member", action="append", default=None, metavar="KEY=V[,KEY=V]",
                   help="one vmapped member's overrides of seed and/or optim.lr, e.g. "
                        "--member seed=1 --member seed=2,optim.lr=0.01; one per --workdir")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    dist = p.add_argument_group(
        "multi-process training (jax.distributed; see docs/cluster.md)")
    dist.add_argument("--distributed", action="store_true",
                      help="run as one of N processes; N, the rank and the coordinator are "
                           "auto-detected (SLURM, Open MPI, Kubernetes, Cloud TPU)")
    dist.add_argument("--coordinator", default=None, help="host:port of process 0")
    dist.add_argument("--num-processes", type=int, default=None)
    dist.add_argument("--process-id", type=int, default=None)
    argv, overrides = _split_config_overrides(argv)
    args = p.parse_args(argv)
    if args.distributed or args.coordinator or args.num_processes or args.process_id is not None:
        from rnnjax.train.distributed import initialize

        initialize(args.coordinator, args.num_processes, args.process_id)
    from rnnjax.configlib import load_config, split_spec
    from rnnjax.diagnostics import training_hooks
    from rnnjax.train.trainer import NonFiniteLossError, train_members

    spec = args.config or str(DEFAULT_CONFIG)
    workdirs = args.workdir or [f"runs/{split_spec(spec)[0].stem}" if args.config else
                                "runs/default"]
    members = args.member or []
    if members and len(members) != len(workdirs):
        raise ValueError(f"got {len(members)} --member and {len(workdirs)} --workdir; give one "
                         f"--workdir per --member")
    if not members and len(workdirs) > 1:
        raise ValueError("several --workdir need one --member each (the seed and/or optim.lr "
                         "that each member trains with)")
    configs = [load_config(spec, overrides + [kv for kv in m.split(",") if kv])
               for m in members] or [load_config(spec, overrides)]
    print(f"rnnjax: training {spec} in {', '.join(workdirs)}", file=sys.stderr)
    finals = train_members(configs, workdirs, hooks=training_hooks(configs[0]),
                           progress=False if args.no_progress else None)
    for w, final in zip(workdirs, finals):
        print(json.dumps({"workdir": w, "eval": _printable(final) if final else None,
                          "status": "done" if final else "failed"}, indent=2))
    if any(f is None for f in finals):
        failed = [w for w, f in zip(workdirs, finals) if f is None]
        raise NonFiniteLossError(f"{len(failed)} of {len(finals)} members diverged "
                                 f"({', '.join(failed)}); each failed.json says at which step")


@command
def cmd_eval(argv):
    p = argparse.ArgumentParser(
        prog="rnnjax eval", description="Evaluate a trained workdir. --config.KEY=VALUE "
        "changes an evaluation setting (decode.beam_size, decode.length_penalty, "
        "decode.alpha, train.eval_batch_size, train.eval_batches); the weights are the "
        "trained ones, so any other key is an error.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    p.add_argument("--record", action="store_true",
                   help="also write the result (or the error) to <workdir>/evals/<name>.json, "
                        "named by the checkpoint and the overrides (what a sweep's eval_grid "
                        "runs and `rnnjax report` reads)")
    argv, overrides = _split_config_overrides(argv)
    args = p.parse_args(argv)
    from rnnjax.inference import run_eval

    print(json.dumps(_printable(run_eval(args.workdir, args.checkpoint, overrides,
                                         record=args.record)), indent=2))


@command
def cmd_sample(argv):
    p = argparse.ArgumentParser(prog="rnnjax sample",
                                description="Generate text from a trained language model.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--prime", default="", help="text to condition on")
    p.add_argument("--length", type=int, default=200, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most probable tokens")
    p.add_argument("--top-p", type=float, default=None, help="keep the nucleus of mass p")
    p.add_argument("--num", type=int, default=1, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    args = p.parse_args(argv)
    from rnnjax.inference import load_for_inference, sample_text

    config, task, model, _ = load_for_inference(args.workdir, args.checkpoint)
    if not hasattr(task, "encode_prime"):
        raise SystemExit(f"error: task {config.task!r} does not generate text; `rnnjax sample` "
                         f"needs a language-model workdir")
    for text in sample_text(task, model, args.prime, args.length, temperature=args.temperature,
                            num=args.num, seed=args.seed, top_k=args.top_k, top_p=args.top_p):
        print(text)
        print("-" * 40)


@command
def cmd_decode(argv):
    p = argparse.ArgumentParser(
        prog="rnnjax decode",
        description="Decode inputs with a trained seq2seq workdir. Greedy and sample print "
                    "'input<TAB>output<TAB>logprob=..' per input; beam prints the input, then "
                    "its n-best outputs with their scores.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--strategy", choices=["greedy", "beam", "sample"], default="greedy")
    p.add_argument("--beam-size", type=int, default=4, help="beam: K")
    p.add_argument("--n-best", type=int, default=None,
                   help="beam: hypotheses to print per input (default all K)")
    p.add_argument("--temperature", type=float, default=1.0, help="sample: 0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample: keep the k best tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample: nucleus mass")
    p.add_argument("--seed", type=int, default=0, help="sample: PRNG seed")
    p.add_argument("--max-len", type=int, default=None,
                   help="most output tokens, eos included (default: enough for the input)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="one source string, e.g. '12+345'")
    src.add_argument("--input-file", help="a UTF-8 file with one source string per line")
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    args = p.parse_args(argv)
    from rnnjax.inference import decode_texts, load_for_inference

    if args.input is not None:
        texts = [args.input]
    else:
        lines = Path(args.input_file).read_text(encoding="utf-8").splitlines()
        texts = [line for line in lines if line.strip()]
    config, task, model, _ = load_for_inference(args.workdir, args.checkpoint)
    if not hasattr(task, "encode_source"):
        raise SystemExit(f"error: task {config.task!r} has no decoder; `rnnjax decode` needs "
                         f"a seq2seq workdir")
    n_best = 1 if args.strategy != "beam" else (args.n_best or args.beam_size)
    results = decode_texts(task, model, texts, strategy=args.strategy, beam_size=args.beam_size,
                           n_best=n_best, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, seed=args.seed, max_len=args.max_len)
    for text, hyps in zip(texts, results):
        if args.strategy != "beam":
            print(f"{text.strip()}\t{hyps[0]['output']}\tlogprob={hyps[0]['logprob']:.4f}")
            continue
        print(text.strip())
        for i, h in enumerate(hyps, 1):
            print(f"  {i}. {h['output']}\tscore={h['score']:.4f} logprob={h['logprob']:.4f}")


@command
def cmd_sweep(argv):
    p = argparse.ArgumentParser(
        prog="rnnjax sweep", description="Run every trial of a study (experiments/x.py[:arg]); "
        "done trials are skipped, interrupted ones resume, failed ones are retried.")
    p.add_argument("study", help="experiments/<study>.py[:arg]")
    p.add_argument("--workers", type=int, default=1,
                   help="trials run at once (local processes; SLURM array parallelism; "
                        "Optuna trials in flight)")
    p.add_argument("--smoke", action="store_true", help="the study's CI-sized variant")
    p.add_argument("--root", default=None, help="sweep root; default runs/<study>")
    p.add_argument("--vmap-seeds", action="store_true",
                   help="run trials that differ only in seed (and optim.lr) as one vmapped "
                        "`rnnjax train` process (faster for small models)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per trial")
    p.add_argument("--report", action="store_true", help="write the report when done")
    p.add_argument("--executor", default="local",
                   help="where trials run: local | ray | slurm (ray and slurm need "
                        "pip install 'rnnjax[cluster]')")
    p.add_argument("--address", default=None,
                   help="ray: a running cluster's address (default: start a local instance)")
    p.add_argument("--cpus-per-trial", type=int, default=None, help="ray/slurm: CPUs per trial")
    p.add_argument("--gpus-per-trial", type=int, default=None, help="ray/slurm: GPUs per trial")
    p.add_argument("--slurm-partition", default=None, help="slurm: the partition")
    p.add_argument("--slurm-time", type=int, default=None,
                   help="slurm: minutes per job (default: --timeout + 5, else 24 h)")
    p.add_argument("--slurm-mem-gb", type=float, default=None, help="slurm: memory per job")
    p.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                   help="slurm: another slurm_* parameter, e.g. account=abc (repeatable)")
    p.add_argument("--slurm-cluster", default=None,
                   help="slurm: submitit's cluster, slurm (default), local or debug")
    args = p.parse_args(argv)
    from rnnjax.sweeps.runner import run_sweep

    given = {"address": args.address, "cpus_per_trial": args.cpus_per_trial,
             "gpus_per_trial": args.gpus_per_trial, "partition": args.slurm_partition,
             "time_min": args.slurm_time, "mem_gb": args.slurm_mem_gb,
             "cluster": args.slurm_cluster}
    if args.slurm_option:
        pairs = [o.partition("=") for o in args.slurm_option]
        bad = [o for o, (_, eq, _) in zip(args.slurm_option, pairs) if not eq]
        if bad:
            p.error(f"--slurm-option needs KEY=VALUE, got {bad}")
        given["slurm"] = {k: v for k, _, v in pairs}
    # Each executor takes its own options; a flag meant for another one is an error.
    takes = {"local": (), "ray": ("address", "cpus_per_trial", "gpus_per_trial"),
             "slurm": ("cpus_per_trial", "gpus_per_trial", "partition", "time_min", "mem_gb",
                       "cluster", "slurm")}.get(args.executor, tuple(given))
    wrong = sorted(k for k, v in given.items() if v is not None and k not in takes)
    if wrong:
        p.error(f"--executor {args.executor} takes none of "
                f"{['--' + k.replace('_', '-') for k in wrong]}")
    options = {k: v for k, v in given.items() if v is not None}
    summary = run_sweep(args.study, args.root, workers=args.workers, smoke=args.smoke,
                        vmap_seeds=args.vmap_seeds, timeout=args.timeout,
                        executor=args.executor, executor_options=options)
    print(json.dumps({k: summary[k] for k in ("root", "counts", "eval_counts")
                      if k in summary}))
    if args.report:
        from rnnjax.sweeps.report import report

        print(report(args.study, summary["root"], smoke=args.smoke)["markdown"])
    failed = [t for t in summary["trials"] if t["status"] == "failed"]
    failed_evals = [(t, e) for t in summary["trials"] for e in t.get("eval_errors", [])]
    if failed or failed_evals:
        lines = []
        if failed:
            lines.append(f"{len(failed)} of {len(summary['trials'])} trials failed:")
        for t in failed:
            lines.append(f"  {t['name']}: {t.get('error') or 'see its log'}\n"
                         f"    log: {t.get('log') or t['workdir']}")
        if failed_evals:
            lines.append(f"{len(failed_evals)} evaluations failed (records in each "
                         f"workdir's evals/):")
        for t, e in failed_evals:
            lines.append(f"  {t['name']} {e['eval']}: {e['error'] or 'see its log'}")
        raise SweepFailed("\n".join(lines))


@command
def cmd_report(argv):
    p = argparse.ArgumentParser(prog="rnnjax report",
                                description="Tables (Markdown, CSV) and curves from a sweep.")
    p.add_argument("study", help="experiments/<study>.py[:arg]")
    p.add_argument("--root", default=None, help="sweep root; default runs/<study>")
    p.add_argument("--smoke", action="store_true", help="report the smoke variant")
    p.add_argument("--out", default=None, help="output folder; default <root>/report")
    args = p.parse_args(argv)
    from rnnjax.sweeps.report import report

    out = report(args.study, args.root, out_dir=args.out, smoke=args.smoke)
    print(out["markdown"])
    print(f"\nwrote {out['table_md']}, {out['table_csv']}"
          + "".join(f", {p}" for p in out["plots"]), file=sys.stderr)


@command
def cmd_diagnose(argv):
    p = argparse.ArgumentParser(
        prog="rnnjax diagnose", description="Gradient flow through time, gate saturation and "
        "recurrent spectral radii of a trained workdir on one eval batch.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    p.add_argument("--batch-size", type=int, default=None,
                   help="examples of the first eval batch to use (default: all)")
    args = p.parse_args(argv)
    from rnnjax.diagnostics import diagnose_workdir

    result = diagnose_workdir(args.workdir, which=args.checkpoint, batch_size=args.batch_size)
    print(json.dumps({k: result[k] for k in ("workdir", "checkpoint_step", "loss",
                                             "grad_summary", "gate_saturation",
                                             "spectral_radius")}, indent=2))
    if "written" in result:
        print(f"wrote {' and '.join(result['written'])}", file=sys.stderr)
    else:
        print(f"rnnjax diagnose: could not write the diagnosis into the workdir "
              f"({result['not_written']}); it is printed above", file=sys.stderr)


@command
def cmd_config(argv):
    p = argparse.ArgumentParser(
        prog="rnnjax config", description="Print the resolved config (variants and "
        "--config.a.b=v overrides applied, then checked) as JSON, without training.")
    p.add_argument("--config", default=None,
                   help="configs/x.py[:arg]; default: the embedded default job")
    argv, overrides = _split_config_overrides(argv)
    args = p.parse_args(argv)
    from rnnjax.config_schema import validate
    from rnnjax.configlib import load_config

    config = load_config(args.config or str(DEFAULT_CONFIG), overrides)
    validate(config)
    print(config.to_json_best_effort(indent=2, sort_keys=True))


@command
def cmd_fetch(argv):
    p = argparse.ArgumentParser(prog="rnnjax fetch",
                                description="Download a dataset of the registry into the cache.")
    p.add_argument("name", help="a registry name, e.g. tiny_shakespeare, sms_spam, glove.6B")
    p.add_argument("--cache-dir", default=None, help="default $RNNJAX_CACHE or ~/.cache/rnnjax")
    args = p.parse_args(argv)
    from rnnjax.data.download import fetch

    print(fetch(args.name, args.cache_dir))


def _printable(d):
    return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                 else str(o)))


#: ``RNNJAX_MALLOC``: ``tuned`` applies :func:`rnnjax._malloc.tune_malloc` at the start of
#: :func:`main` (before jax is imported), ``default`` leaves glibc's allocator alone. Unset,
#: the ``rnnjax`` command tunes it: ``rnnjax train`` on the char-LM job measured 1.66x the
#: tokens/s with it (docs/performance.md §3).
MALLOC_ENV = "RNNJAX_MALLOC"
#: What :func:`main` did about the allocator (``tune_malloc``'s record, or why nothing).
MALLOC: dict = {}


def _choose_malloc(entry_point: bool) -> dict:
    """Applies the allocator that ``RNNJAX_MALLOC`` names (docs/performance.md §3).

    Unset, only the command itself (``main()`` reading ``sys.argv``) tunes: a program
    that calls ``main(argv)`` inside its own process keeps its allocator unless it asks,
    since the setting is process-wide and cannot be undone.
    """
    choice = os.environ.get(MALLOC_ENV, "").strip().lower()
    if choice not in ("", "tuned", "default"):
        raise SystemExit(f"error: {MALLOC_ENV}={choice!r}; use 'tuned' or 'default' (unset: "
                         f"tuned for the rnnjax command)")
    if choice == "default" or (not choice and not entry_point):
        why = f"{MALLOC_ENV}=default" if choice else "main(argv) called in-process"
        return {"applied": False, "settings": {}, "reason": why}
    from rnnjax._malloc import tune_malloc

    return tune_malloc()


def main(argv: list[str] | None = None) -> int:
    # First, before anything imports jax: the allocator must be set before XLA's buffers exist.
    MALLOC.clear()
    MALLOC.update(_choose_malloc(entry_point=argv is None))
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("RNNJAX_LOGLEVEL", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("rnnjax").info("malloc: %s", MALLOC)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("commands:", ", ".join(sorted(COMMANDS)))
        return 0
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"rnnjax {version('rnnjax')}")
        except PackageNotFoundError:
            print("rnnjax (not installed: running from a source tree)")
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
    except SweepFailed as e:
        print(f"rnnjax {name}: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        from rnnjax.data.download import DownloadError
        from rnnjax.train.checkpoint import CheckpointError
        from rnnjax.train.trainer import NonFiniteLossError
        from rnnjax.train.workdir import WorkdirLocked

        if isinstance(e, (CheckpointError, NonFiniteLossError, WorkdirLocked, DownloadError)):
            # The message says what was wrong and what to do; a traceback would bury it.
            print(f"rnnjax {name}: error: {e}", file=sys.stderr)
            return 1
        if isinstance(e, PermissionError | OSError) and getattr(e, "filename", None):
            print(f"rnnjax {name}: error: could not write {e.filename} ({e.strerror}); "
                  f"use a writable --workdir", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
