"""The ``fedgate`` command: ``train`` (centralized baseline), ``evaluate`` (saved adapters or a
federation checkpoint), ``simulate`` (a federation in Flower's simulation runtime) and ``report``.

A user error (a bad data file, a missing file, an unknown config key or value, a model or
checkpoint that cannot be loaded) ends the command with one line on stderr,
``fedgate: error: <where>: <what>``, and exit code 2; ``--debug`` shows the traceback instead."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tomllib
from pathlib import Path

from fedgate import strategies
from fedgate.config import FedgateConfig
from fedgate.errors import InputError


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_from_args(args: argparse.Namespace) -> FedgateConfig:
    """Defaults <- --config TOML file <- --set key=value pairs <- shortcut flags."""
    flat: dict = {}
    if args.config:
        path = Path(args.config)
        try:
            flat.update(_flatten(tomllib.loads(path.read_text())))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UserError(f"{path}: cannot read config file ({e})") from None
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        flat[key.strip()] = toml_value(value.strip())
    shortcuts = {"model.backbone": getattr(args, "backbone", None), "data.source": getattr(args, "data", None),
                 "train.epochs": getattr(args, "epochs", None), "train.max-steps": getattr(args, "max_steps", None),
                 "train.seed": getattr(args, "seed", None)}
    flat.update({k: v for k, v in shortcuts.items() if v is not None})
    try:
        return strategies.check(FedgateConfig.from_flat(flat, ignore_unknown_sections=False))
    except (KeyError, ValueError) as e:
        raise UserError(str(e.args[0] if e.args else e)) from None


class UserError(InputError):
    """A mistake on the command line itself (a --set without '=', an unknown key or value)."""


def toml_value(text: str):
    """A ``--set`` value as TOML reads it (``16``, ``0.5``, ``true``, ``"tiny-bert"``), a
    bare word as itself, as ``--run-config`` does."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input rather than a bug in fedgate: fedgate's own
    InputError (data, config, export, checkpoint choice), files that are missing or
    unreadable, a checkpoint that is not safetensors, a model that cannot be loaded (OSError
    from transformers). A KeyError or ValueError from elsewhere is a bug and keeps its
    traceback."""
    from safetensors import SafetensorError

    return (InputError, OSError, SafetensorError, UnicodeDecodeError)


def one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)) and exc.filename:
        first = f"{exc.filename}: {exc.strerror or first}"
    return first


def _summary(metrics: dict) -> str:
    t = metrics["test"]
    if "pairwise_accuracy_low" in t:  # a pair split
        lines = [f"test pairwise accuracy {t['pairwise_accuracy']:.4f} (95% CI {t['pairwise_accuracy_low']:.4f}-"
                 f"{t['pairwise_accuracy_high']:.4f}, {t['n_pairs']} pairs); before training "
                 f"{metrics['test_at_step0'].get('pairwise_accuracy', float('nan')):.4f}"]
    else:
        lines = [f"test ROC-AUC {t['auc']:.4f}  F1 {t.get('f1', float('nan')):.4f}  "
                 f"pearson(helpfulness) {t['pearson_helpfulness']:.3f}  (n={t['n']})"]
        if "pairwise_accuracy" in t:
            lines.append(f"pairwise accuracy {t['pairwise_accuracy']:.4f} over {t['n_pairs']} pairs of responses to "
                         f"one prompt whose helpfulness differs")
    if "baselines" in metrics:
        b = metrics["baselines"]
        lines.append("baselines: " + "  ".join(f"{k} {v:.4f}" for k, v in b.items() if not k.endswith(("_C", "_lr"))))
    kinds = {k[len("auc_kind_"):]: v for k, v in t.items() if k.startswith("auc_kind_")}
    if kinds:
        lines.append("AUC per degradation: " + "  ".join(f"{k} {v:.3f}" for k, v in kinds.items()))
    p = metrics["params"]
    lines.append(f"trainable {p['trainable']:,} params ({p['percent']:.3f}% of backbone), "
                 f"adapter state {metrics['adapter_bytes'] / 1024:.1f} KiB, "
                 f"{metrics['train']['steps']} steps in {metrics['train']['wall_s']:.0f}s")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from fedgate.centralized import train_centralized

    cfg = config_from_args(args)
    metrics = train_centralized(cfg, args.out, baselines=not args.no_baselines, progress=not args.quiet)
    print(_summary(metrics))
    print(f"wrote {args.out}/adapters.safetensors, metrics.json, config.json, test_predictions.csv")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fedgate.centralized import evaluate_saved

    metrics = evaluate_saved(args.adapters, source=args.data, split=args.split, noise_rate=args.noise_rate,
                             seed=args.seed, progress=not args.quiet)
    text = json.dumps(metrics, indent=2, sort_keys=True, default=float)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from fedgate.scoring import load_inputs, score, write_jsonl
    from fedgate.trained import load_trained

    trained = load_trained(args.model, args.round)
    ds, pairs = load_inputs(args.data)
    results = score(trained, ds, pairs, progress=not args.quiet and sys.stderr.isatty())
    write_jsonl(results, args.out)
    if args.out:
        print(f"scored {len(results)} {'pairs' if pairs else 'rows'} with {trained.path}: wrote {args.out}",
              file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fedgate.export import export
    from fedgate.trained import load_trained

    trained = load_trained(args.model, args.round)
    out = export(trained, args.format, args.out)
    print(f"wrote {args.format} export of {trained.path} to {out}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from fedgate.launch.simulation import main as simulate_main

    return simulate_main(args=args)


def cmd_strategies(args: argparse.Namespace) -> int:
    print(strategies.table())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedgate.federated.report import write_report

    if (Path(args.run_dir) / "variants.json").is_file():  # a study's results folder, made by simulations/
        raise UserError(f"{args.run_dir} is the results folder of a study: "
                        f"python -m simulations.report {args.run_dir} rebuilds its tables")
    print(f"wrote {write_report(args.run_dir)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedgate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    debug = argparse.ArgumentParser(add_help=False)  # --debug also after the command
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", parents=[debug],
                       help="centralized training on pooled data (the federation's upper bound)")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--config", help="TOML file with [model] [adapter] [loss] [train] [data] tables")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one key, e.g. adapter.r=16")
    t.add_argument("--backbone", help="hub id, local folder, all-MiniLM-L6-v2 (offline default) or tiny-bert")
    t.add_argument("--data", help="embedded (default), nvidia/HelpSteer2, or a local file/folder")
    t.add_argument("--epochs", type=float)
    t.add_argument("--max-steps", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--no-baselines", action="store_true", help="skip length/TF-IDF/frozen-probe baselines")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", parents=[debug], help="evaluate saved adapters on any supported data source")
    e.add_argument("adapters", help="run directory or adapters.safetensors file")
    e.add_argument("--data", help="data source (default: the one the adapters were trained on)")
    e.add_argument("--split", default="test")
    e.add_argument("--noise-rate", type=float, default=0.0, help="semantic noise rate on the inputs (0-1)")
    e.add_argument("--seed", type=int, default=0, help="seed of the noise")
    e.add_argument("--out", help="also write the metrics JSON here")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    sc = sub.add_parser("score", parents=[debug], help="score rows or preference pairs with a trained model "
                                                       "(JSON Lines out)")
    sc.add_argument("model", help="a run directory (centralized or federated) or an adapters .safetensors file")
    sc.add_argument("--data", required=True, help="a data file of rows or pairs, or - for JSON Lines on stdin")
    sc.add_argument("--out", help="write the JSON Lines here (default: standard output)")
    sc.add_argument("--round", type=int, help="a federated run's checkpoint of this round (default: the last)")
    sc.add_argument("--quiet", action="store_true", help="no progress bar")
    sc.set_defaults(func=cmd_score)

    ex = sub.add_parser("export", parents=[debug], help="write a trained model as a peft adapter or a merged "
                                                        "Hugging Face model, with the reward head")
    ex.add_argument("model", help="a run directory (centralized or federated) or an adapters .safetensors file")
    ex.add_argument("--format", required=True, choices=("peft", "merged"))
    ex.add_argument("--out", required=True, help="a new (or empty) folder")
    ex.add_argument("--round", type=int, help="a federated run's checkpoint of this round (default: the last)")
    ex.set_defaults(func=cmd_export)

    from fedgate.launch.simulation import build_parser as simulate_parser

    s = sub.add_parser("simulate", help="run a federation in Flower's simulation runtime (see README)")
    simulate_parser(s)
    s.set_defaults(func=cmd_simulate)

    st = sub.add_parser("strategies", help="list the aggregation strategies (federation.strategy), one line each")
    st.set_defaults(func=cmd_strategies)

    r = sub.add_parser("report", parents=[debug], help="rebuild report.md and plots of a federated run directory "
                                                         "(no runs; a study's folder: python -m simulations.report)")
    r.add_argument("run_dir", help="a federated run directory")
    r.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except user_errors() as e:
        if args.debug:
            raise
        print(f"fedgate: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
