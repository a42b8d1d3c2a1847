"""What each element of the IB-INN training recipe does: ``table_recipe_ablation``.

Every variant is the small ``fashion-mnist-small`` model trained with the same data, steps, seed and beta,
with one element of the IB-INN recipe (vislearn/IB-INN) switched on, plus one variant with all of them
and the strong ``fashion-mnist-large`` config (the whole recipe in IB-INN's architecture).
Equal steps is not equal FLOPs: the fully connected coupling and BatchNorm make a step dearer, so the
table reports each run's measured training time beside its results.

Columns: test accuracy (full test set), bits/dim (uniformly dequantized test set), the latent RMS from
the own class mean in the class-carrying dims (the model assumes 1; :func:`gclib.latent.class_fit`),
and sample quality: the shipped ResNet DC's accuracy on class-conditional samples at temperature 0.7
and the share of sample pixels outside [0, 1] (:func:`sample_quality`).

Command line::

    python -m gclib.ablation train  [--epochs 4] [--beta 1] [--only NAME ...]   # runs/ablation/<name>
    python -m gclib.ablation table  [--out figures]                              # table_recipe_ablation.*
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError
from .samples import sample_quality

__all__ = ["Variant", "VARIANTS", "sample_quality", "train_variant", "evaluate_variant", "write_table", "main"]


@dataclass(frozen=True)
class Variant:
    name: str  # a folder name
    label: str  # what the table says
    args: tuple[str, ...]  # extra ``python -m gclib.train`` arguments
    config: str = "fashion-mnist-small"


_ALL = ("--label-smoothing", "0.02", "--input-noise", "0.01", "--set", "permutation=soft", "--set", "fc_blocks=1",
        "--set", "subnet_batchnorm=true", "--set", "clamp=0.7", "--head-weight-decay", "0", "--head-lr-scale", "10")

VARIANTS = (
    Variant("base", "small model, shipped recipe", ()),
    Variant("label-smoothing", "+ label smoothing 0.02", ("--label-smoothing", "0.02")),
    Variant("input-noise", "+ Gaussian input noise 0.01", ("--input-noise", "0.01")),
    Variant("soft-permutation", "+ soft (orthogonal) permutations", ("--set", "permutation=soft")),
    Variant("fc-coupling", "+ FC coupling on the DCT output (1024, dropout 0.5)", ("--set", "fc_blocks=1")),
    Variant("batchnorm", "+ BatchNorm in the subnets", ("--set", "subnet_batchnorm=true")),
    Variant("clamp", "+ clamp 0.7 (instead of 2)", ("--set", "clamp=0.7")),
    Variant("means", "+ class means: no weight decay, 10x lr", ("--head-weight-decay", "0", "--head-lr-scale", "10")),
    Variant("all", "all of the above", _ALL),
    # The strong config: all of the recipe in IB-INN's architecture, 24 blocks, ~5x the small model's FLOPs.
    Variant("large", "fashion-mnist-large: IB-INN subnets, 24 blocks, all of the above", (), "fashion-mnist-large"),
)


def _variant(name: str) -> Variant:
    for v in VARIANTS:
        if v.name == name:
            return v
    raise InputError(f"unknown variant {name!r}; known: {', '.join(v.name for v in VARIANTS)}")


def train_variant(variant: Variant, root: Path, epochs: int, beta: str, seed: int = 0) -> Path:
    """Train (or resume) one variant in ``root/<name>`` with ``python -m gclib.train``; returns the run folder."""
    out = root / variant.name
    if (out / "final.json").exists():
        return out
    cmd = [sys.executable, "-m", "gclib.train", "--config", variant.config, "--beta", beta, "--epochs", str(epochs),
           "--seed", str(seed), "--out", str(out), "--resume", "--eval-test", "--no-progress", *variant.args]
    print(" ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
    return out


def evaluate_variant(run: Path, classifier, n_samples: int = 1000, temperature: float = 0.7, n_latent: int = 2000,
                     seed: int = 0) -> dict:
    """Test accuracy and bits/dim (from the run's manifest), latent RMS and sample quality of one run."""
    from . import checkpoints, data, latent

    model = checkpoints.load(run / "final").eval()
    info = checkpoints.read_manifest(run / "final")["info"]
    _, _, test = data.load("fashion-mnist")
    x, y = test.tensors()
    z = latent.latents(model, x[:n_latent])
    fit = latent.class_fit(latent.class_subspace(model), z, y[:n_latent])
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_samples) % model.num_classes
    samples = torch.cat([model.sample(b, temperature, generator=g).float().cpu() for b in labels.split(500)])
    quality = sample_quality(samples, labels, classifier)
    test_info = info["test"]
    acc = test_info["accuracy"]
    return {"accuracy": acc, "accuracy_se": (acc * (1 - acc) / test_info["n"]) ** 0.5,
            "bits_per_dim": test_info["bits_per_dim"], "latent_rms": fit["rms_class"],
            "sample_accuracy": quality["accuracy"], "sample_accuracy_se": quality["accuracy_se"],
            "sample_outside": quality["outside"], "train_time_s": info["wall_time_s"], "epochs": info["epochs"],
            "beta": info["beta"], "n_samples": n_samples, "temperature": temperature}


def write_table(rows: list[dict], folder: str | os.PathLike, stem: str = "table_recipe_ablation") -> tuple[Path, Path]:
    """``rows`` (one per variant, from :func:`evaluate_variant` plus ``variant``) as CSV and Markdown."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fields = ["variant", "accuracy", "accuracy_se", "bits_per_dim", "latent_rms", "sample_accuracy",
              "sample_accuracy_se", "sample_outside", "train_time_s", "epochs", "beta"]
    csv_path, md_path = folder / f"{stem}.csv", folder / f"{stem}.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()})
    lines = ["| recipe | test acc. (%) | bits/dim | latent RMS | DC acc. on T=0.7 samples (%) | "
             "sample pixels outside [0,1] (%) | train time (min) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {100 * r['accuracy']:.2f} ± {100 * r['accuracy_se']:.2f} | "
                     f"{r['bits_per_dim']:.3f} | {r['latent_rms']:.2f} | {100 * r['sample_accuracy']:.1f} ± "
                     f"{100 * r['sample_accuracy_se']:.1f} | {100 * r['sample_outside']:.1f} | "
                     f"{r['train_time_s'] / 60:.1f} |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gclib.ablation", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train every variant (resumable) into ROOT/<variant>")
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--beta", default="1")
    t.add_argument("--only", nargs="*", help="variant names (default: all)")
    t.add_argument("--root", default="runs/ablation")
    e = sub.add_parser("table", help="evaluate the trained variants and write table_recipe_ablation.{csv,md}")
    e.add_argument("--root", default="runs/ablation")
    e.add_argument("--out", default="figures")
    e.add_argument("--samples", type=int, default=1000)
    args = p.parse_args(argv)
    root = Path(args.root)
    if args.command == "train":
        for v in (VARIANTS if not args.only else [_variant(n) for n in args.only]):
            train_variant(v, root, args.epochs, args.beta)
        return 0
    from . import zoo

    classifier = zoo.pretrained("fashion-mnist", model="resnet").eval()
    rows = []
    for v in VARIANTS:
        if not (root / v.name / "final.json").exists():
            print(f"skipping {v.name}: not trained ({root / v.name})", file=sys.stderr)
            continue
        rows.append({"variant": v.label, "name": v.name, **evaluate_variant(root / v.name, classifier,
                                                                             n_samples=args.samples)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    write_table(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
