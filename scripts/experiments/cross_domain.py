#!/usr/bin/env python
"""In- and out-of-domain accuracy: one model per data set and one on all of them, each scored on every data set.

For data sets ``A, B, ...`` that share structure names (acdc and mscmr: right ventricle, myocardium, left
ventricle), the bundle's own commands train a model on each alone and one on all together (a suite), and evaluate
every model on every data set's test split (``configs/evaluate.json``: each folder scored with its own classes,
prompted by name). The table gives the mean Dice and each structure's, with the diagonal (trained on that data set)
marked in-domain.

    python scripts/experiments/cross_domain.py --datasets ../shared/data/acdc ../shared/data/mscmr \\
        --output_dir runs/cardiac --set max_epochs=100 --set max_anisotropy=8 --set crop_sampling=classes

Each run's folder keeps the bundle's outputs (``train_<names>/model.pt``, ``eval_<name>/metrics.json``); a rerun
resumes training from its ``last.pt`` and redoes only missing evaluations. ``--set`` values go to training and
evaluation alike (the network's shape must be the same in both), ``--train_set`` and ``--eval_set`` to one of them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bundle.utils.cli import add_override_option, bundle_override_args, parse_overrides
from bundle.utils.config import BUNDLE_ROOT


def training_sets(datasets: Sequence[Path]) -> list[list[Path]]:
    """Each data set alone, then all together (when there are several).

    Args:
        datasets: the MSD folders.

    Returns:
        The training sets, in that order.
    """
    sets = [[d] for d in datasets]
    return sets + [list(datasets)] if len(datasets) > 1 else sets


def bundle_run(workflow: str, config: str, settings: Mapping[str, Any], log: Path) -> None:
    """``python -m monai.bundle run WORKFLOW --config_file configs/CONFIG --KEY VALUE ...``, logged to ``log``.

    Args:
        workflow: ``training`` or ``evaluating``.
        config: the config file in ``configs/``.
        settings: config overrides (:func:`~bundle.utils.cli.bundle_override_args`).
        log: the command's output.

    Raises:
        RuntimeError: naming the log, when the command fails.
    """
    args = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", f"configs/{config}"]
    args += bundle_override_args(settings)
    with open(log, "w") as f:  # from the bundle root, as the README's commands run
        code = subprocess.run(args, cwd=BUNDLE_ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"{workflow} failed (exit {code}); see {log}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", required=True, help="MSD folders that share structure names")
    ap.add_argument("--output_dir", default="runs/cross_domain", help="one folder per run (default: %(default)s)")
    add_override_option(ap, "--set", "override for training and evaluation, e.g. --set max_anisotropy=8")
    add_override_option(ap, "--train_set", "override for training only, e.g. --train_set max_epochs=100")
    add_override_option(ap, "--eval_set", "override for evaluation only, e.g. --eval_set num_inference_steps=2")
    args = ap.parse_args(argv)
    datasets = [Path(d).expanduser().resolve() for d in args.datasets]
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        ap.error(f"data set folders must have distinct names, got {names}")
    settings = parse_overrides(args.set)
    train_settings = {**settings, **parse_overrides(args.train_set)}
    eval_settings = {**settings, **parse_overrides(args.eval_set)}
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict[str, dict[str, Any]]] = {}
    for train_set in training_sets(datasets):
        label = "+".join(d.name for d in train_set)
        run = out / f"train_{label}"
        run.mkdir(exist_ok=True)
        if not (run / "done").is_file():
            spec = ",".join(str(d) for d in train_set)
            training = {**train_settings, "dataset_dir": spec, "output_dir": str(run)}
            bundle_run("training", "train.json", training, run / "train.log")
            (run / "done").write_text("trained\n")
        results[label] = {}
        for test in datasets:
            ev = run / f"eval_{test.name}"
            if not (ev / "metrics.json").is_file():
                ev.mkdir(exist_ok=True)
                evaluation = {
                    **eval_settings,
                    "dataset_dir": str(test),
                    "eval_split": "test",
                    "ckpt_path": str(run / "model.pt"),
                    "output_dir": str(ev),
                    "save_predictions": False,
                }
                bundle_run("evaluating", "evaluate.json", evaluation, run / f"eval_{test.name}.log")
            results[label][test.name] = json.loads((ev / "metrics.json").read_text())

    print("\nTest-split Dice; rows: training set, columns: tested data set (* in-domain)\n")
    print("| trained on | " + " | ".join(f"{n} mean Dice" for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, by_test in results.items():
        trained_on = set(label.split("+"))
        cells = [f"{by_test[n]['mean']['dice']:.3f}{' *' if n in trained_on else ''}" for n in names]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for n in names:
        classes = list(next(iter(results.values()))[n]["classes"])
        print(f"\n{n} test split, per structure\n")
        print("| trained on | " + " | ".join(classes) + " |")
        print("|---|" + "---:|" * len(classes))
        for label, by_test in results.items():
            print(f"| {label} | " + " | ".join(f"{by_test[n]['classes'][c]['dice']:.3f}" for c in classes) + " |")
    (out / "cross_domain.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
