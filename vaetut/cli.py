"""The ``vaetut`` command line: train, evaluate, and run a results protocol.

    vaetut train MODEL [--epochs N | --minutes M] [--seed S] [--out DIR] [--resume]
    vaetut evaluate CHECKPOINT [--k 5000] [--n-test N]
    vaetut results --protocol cpu|ablation|published|tiny [--models ...] [--seeds ...] [--out FILE]

Also ``python -m vaetut ...``. Data parallelism on N GPUs (or N CPU processes):
``torchrun --nproc_per_node N -m vaetut train MODEL ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .config import get_device, run_info
from .data import DataNotFoundError, load_mnist
from .results import (
    MODELS,
    PROTOCOLS,
    Protocol,
    build,
    code_version,
    evaluate,
    format_table,
    run_protocol,
    summarise,
    train_config,
    warmup_fraction,
)
from .train import CheckpointError, TrainConfig, TrainingDiverged, _Dist, fit, load_checkpoint

CHECKPOINT, RUN_FILE = "checkpoint.pt", "run.json"
STEP_BOUND = 10  # --minutes: the step budget, in multiples of the probe's estimate
# --minutes: larger batches use the 2-core CPU better (per-step overhead), and a fixed wall time then
# trains further: 10 minutes of `vae` reached log p(x) -88.13 with these, -88.52 with the protocol's
MINUTES_DEFAULTS = {"batch_size": 200, "lr": 3e-3}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    models = "\n".join(f"  {name:8} {spec.description}" for name, spec in MODELS.items())
    p = argparse.ArgumentParser(
        prog="vaetut",
        description="Train and evaluate the VAEs of the vaetut book, and run its results protocols.",
        epilog=f"models:\n{models}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,evaluate,results}")

    t = sub.add_parser(
        "train",
        help="train one model of the registry (checkpoints and metrics in --out)",
        description="Train one registry model on dynamically binarized MNIST with the cpu protocol's optimiser "
        "(Adam, batch 100, learning rate 2e-3, cosine decay; with --minutes batch 200 and 3e-3, which train "
        "further in a fixed wall time). One progress line per epoch; a checkpoint every epoch and on Ctrl-C; "
        "continue an interrupted run with --resume.",
        epilog=f"models:\n{models}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("model", choices=list(MODELS), metavar="MODEL", help="registry name (listed below)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=_positive_int, help="epochs to train (default: the cpu protocol's)")
    budget.add_argument("--minutes", type=_positive_float, help="train for this wall time: the step count is measured first")
    t.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the weights, data order and noise (default 0)")
    t.add_argument("--out", type=Path, help="folder for checkpoint.pt, run.json and history.json (default runs/MODEL-seedS)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out with its own settings")
    t.add_argument("--batch-size", type=_positive_int, help="examples per step (default 100; 200 with --minutes)")
    t.add_argument("--lr", type=_positive_float, help="initial learning rate (default: the cpu protocol's, 2e-3; 3e-3 with --minutes)")
    t.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, ... (default auto)")

    e = sub.add_parser(
        "evaluate",
        help="test ELBO and importance-sampled log-likelihood of a trained model",
        description="Evaluate a checkpoint written by `vaetut train` on the fixed binarized MNIST test images: "
        "the ELBO on all of them, log p(x) with k importance samples on the first --n-test, active units per layer.",
    )
    e.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="checkpoint.pt (or the folder holding it)")
    e.add_argument("--k", type=_positive_int, default=5000, help="importance samples per image (default 5000)")
    e.add_argument("--n-test", type=_positive_int, default=2000, help="test images for log p(x) (default 2000)")
    e.add_argument("--n-elbo", type=_positive_int, default=10_000, help="test images for the ELBO (default 10000)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default auto)")

    r = sub.add_parser(
        "results",
        help="train and evaluate every model and seed of a protocol; write JSON records",
        description="Run a results protocol: every registry model (or --models) and seed is trained and evaluated "
        "the same way, and one JSON record per model and seed is written to --out as soon as it is done. Rerun the "
        "same command after an interruption: finished records are kept and an unfinished training resumes.",
        epilog="protocols:\n" + "\n".join(f"  {n:10} {p.description}" for n, p in PROTOCOLS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--protocol", choices=list(PROTOCOLS), required=True)
    r.add_argument("--models", nargs="+", choices=list(MODELS), metavar="MODEL", help="a subset of the registry")
    r.add_argument("--seeds", nargs="+", type=_non_negative_int, metavar="SEED", help="seeds (default: the protocol's)")
    r.add_argument("--out", type=Path, help="results file (default results/PROTOCOL.json)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default auto)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return {"train": cmd_train, "evaluate": cmd_evaluate, "results": cmd_results}[args.command](args)
    except (DataNotFoundError, CheckpointError, TrainingDiverged, ValueError, FileNotFoundError) as err:
        print(f"vaetut {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print(f"vaetut {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 130


# ------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    out = args.out or Path("runs") / f"{args.model}-seed{args.seed}"
    run_file, ckpt = out / RUN_FILE, out / CHECKPOINT
    dist = _Dist()
    say = print if dist.is_main else (lambda *a, **k: None)
    device = dist.device(args.device)
    x_train, _ = load_mnist("train")
    protocol = PROTOCOLS["cpu"]
    if args.minutes:
        protocol = _with(protocol, **MINUTES_DEFAULTS)
    if args.batch_size:
        protocol = _with(protocol, batch_size=args.batch_size)
    if args.lr:
        protocol = _with(protocol, lr=args.lr)
    per_epoch = math.ceil(len(x_train) / protocol.batch_size)

    if args.resume:
        if args.epochs or args.minutes or args.batch_size or args.lr:
            raise ValueError("--resume continues the run in --out with the settings it started with; drop the others")
        if not run_file.exists():
            raise FileNotFoundError(f"nothing to resume in {out} (no {RUN_FILE}); start the run without --resume")
        run = json.loads(run_file.read_text())
        if run["model"] != args.model:
            raise ValueError(f"{out} holds a run of {run['model']!r}, not {args.model!r}")
        config = TrainConfig(**run["config"])
        time_limit = run.get("time_limit")
        say(f"resuming {args.model} in {out} at step {load_checkpoint(ckpt)['step']} of {config.total_steps(per_epoch)}")
    else:
        if ckpt.exists():
            raise ValueError(f"{out} already holds a run: add --resume to continue it, or choose another --out")
        config = train_config(args.model, protocol, args.seed, per_epoch)
        time_limit = None
        if args.epochs:
            config = _with(config, epochs=args.epochs)
            config = _with(config, warmup_steps=round(warmup_fraction(args.model, protocol) * args.epochs * per_epoch))
        if args.minutes:
            # the learning rate anneals over the wall time, so the run ends annealed however fast the
            # machine turns out to be. The step budget (ten times the measured speed) only bounds it:
            # a probe slowed by another job must not end the run early with the learning rate still high
            steps = _steps_for(args.minutes * 60, args.model, args.seed, x_train, config, device, dist)
            warmup = round(warmup_fraction(args.model, protocol) * steps)
            config = _with(config, epochs=None, steps=STEP_BOUND * steps, warmup_steps=warmup, lr_schedule="cosine-time")
            time_limit = args.minutes * 60
            say(f"{args.minutes:g} minutes: about {steps} steps ({steps / per_epoch:.0f} epochs) at the measured speed; "
                "the learning rate follows a cosine over the wall time")
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            run = {
                "model": args.model,
                "seed": args.seed,
                "config": _plain(config),
                "time_limit": time_limit,
                "command": "vaetut " + " ".join(sys.argv[1:]) if argv_is_cli() else "vaetut train",
                "code_version": code_version(),
                "hardware": run_info(),
                "processes": dist.world,
            }
            run_file.write_text(json.dumps(run, indent=1) + "\n")
    say(f"training {args.model} ({MODELS[args.model].description}): {run_info()}")
    model = build(args.model, args.seed, x_train)
    history = fit(model, x_train, config, device=device, checkpoint=ckpt, resume=args.resume, time_limit=time_limit, progress="lines")
    if dist.is_main:
        (out / "history.json").write_text(json.dumps({"epochs": history.epochs, "seconds": history.seconds, "stopped": history.stopped}, indent=1) + "\n")
        stop = f", stopped by the {history.stopped}" if history.stopped else ""
        say(f"trained {history.steps[-1] if history.steps else 0} steps in {history.seconds / 60:.1f} min{stop}; "
            f"checkpoint {ckpt}\nevaluate it with: vaetut evaluate {ckpt}")
    return 0


def argv_is_cli() -> bool:
    return bool(sys.argv) and Path(sys.argv[0]).name in ("vaetut", "__main__.py")


def _steps_for(seconds: float, name: str, seed: int, x: torch.Tensor, config: TrainConfig, device, dist: _Dist) -> int:
    """Steps that fit in ``seconds``, from the speed of the real training loop on a copy of the model
    (200 timed steps after 20 to warm up)."""
    # every process takes part (under torchrun the probe is data-parallel too: its collective
    # calls need all of them); the main process's measurement decides
    probe = build(name, seed, x)
    quiet = dict(device=device, progress=False)
    fit(probe, x, replace(config, epochs=None, steps=20), **quiet)
    start = time.perf_counter()
    fit(probe, x, replace(config, epochs=None, steps=200), **quiet)
    per_step = (time.perf_counter() - start) / 200
    # a margin for per-epoch work (progress lines, checkpoints) and a machine that slows down
    steps = max(1, int(0.95 * seconds / per_step))
    if dist.world > 1:
        steps = dist.gather(steps)[0]
    return steps


def _with(obj, **changes):
    return replace(obj, **changes)


def _plain(config: TrainConfig) -> dict:
    return asdict(config)


# ---------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    ckpt = args.checkpoint / CHECKPOINT if args.checkpoint.is_dir() else args.checkpoint
    run_file = ckpt.parent / RUN_FILE
    if not run_file.exists():
        raise FileNotFoundError(
            f"no {RUN_FILE} beside {ckpt}: evaluate takes the checkpoint of a `vaetut train` run (its folder holds both)"
        )
    run = json.loads(run_file.read_text())
    state = load_checkpoint(ckpt)
    model = build(run["model"], run["seed"])
    model.load_state_dict(state["model"])
    device = get_device(args.device)
    model.to(device).eval()
    x_test, _ = load_mnist("test", binarized=True)
    protocol = Protocol("evaluate", epochs=1, seeds=(run["seed"],), n_elbo=min(args.n_elbo, len(x_test)),
                        n_ll=min(args.n_test, len(x_test)), k=args.k, n_units=min(2000, len(x_test)))
    if protocol.n_ll > protocol.n_elbo:
        protocol = _with(protocol, n_elbo=protocol.n_ll)
    print(f"evaluating {run['model']} (step {state['step']}) from {ckpt}: {run_info()}", flush=True)
    metrics = evaluate(model, x_test, protocol, progress=True)
    print(
        f"test ELBO {metrics['test_elbo']:.2f} ± {metrics['test_elbo_se']:.2f} ({protocol.n_elbo} images)\n"
        f"log p(x)  {metrics['test_ll']:.2f} (k={args.k}, first {protocol.n_ll} images; NLL {-metrics['test_ll']:.2f} nats)\n"
        f"gap       {metrics['gap']:.2f} (log p(x) - ELBO on the same images)\n"
        f"active units {metrics['active_units']} of {metrics['latent_units']}; "
        f"evaluation took {metrics['eval_seconds'] / 60:.1f} min"
    )
    result = {"model": run["model"], "seed": run["seed"], "step": state["step"], "k": args.k, "n_test": protocol.n_ll,
              "code_version": code_version(), "hardware": run_info(), **metrics}
    path = ckpt.parent / f"eval-k{args.k}-n{protocol.n_ll}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {path}")
    return 0


# ----------------------------------------------------------------- results
def cmd_results(args: argparse.Namespace) -> int:
    out = args.out or Path("results") / f"{args.protocol}.json"
    results = run_protocol(args.protocol, out, models=args.models, seeds=args.seeds, device=args.device,
                           command="vaetut " + " ".join(sys.argv[1:]) if argv_is_cli() else None)
    print(format_table(summarise(results)))
    print(f"records in {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
