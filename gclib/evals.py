"""Evaluation artifacts: per-image results of an expensive model, shipped like checkpoints.

A diffusion classifier costs hundreds of network evaluations per image, so the book cannot recompute its
per-image scores in its time budget. They ship instead as ``checkpoints/<dataset>/evals/<model>.<what>``:
``.safetensors`` (the tensors) + ``.json`` (a manifest naming the model's weights sha256, the inputs (the
split, the number of images and the seed of their subset) and the seed of any noise, the tensors' sha256
and how they were computed). :func:`load` checks both hashes, so an artifact of other weights, or a
corrupted one, is refused; the tests recompute a random sample of every shipped artifact's images from
the model and require the same results (``gclib.zoo`` does this for the diffusion family).

>>> sorted(KINDS)  # doctest: +NORMALIZE_WHITESPACE
['abs-extra', 'abs-ood', 'abs-test', 'attack-hsj', 'attack-l2', 'attack-pgd', 'attack-transfer', 'certify',
 'corrupt', 'corrupt-predictions', 'diffusion-ood', 'errors', 'faithfulness', 'sample-quality', 'score',
 'test']
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .checkpoints import _atomic_save_tensors, atomic_write_text, environment, sha256
from .errors import CheckpointError

__all__ = ["FORMAT", "KINDS", "folder", "load", "path_of", "save"]

FORMAT = "gclib-evaluation"
# What each kind holds (every one also has ``indices`` [N] into the split and ``labels`` [N]):
KINDS = {
    "test": "predictions [N] and network evaluations [N] of the model's own (pruned) rule; bits_per_dim [M] "
            "of the first M images",
    "errors": "the full denoising-error matrix [N, C, pairs] on the model's noise bank (every class, every pair)",
    "abs-test": "an ABS model's rule on the test subset: predictions [N]; per class (at the latents its search "
                "found) the rule's scores, ABS's own scores and the reconstruction MSE [N, C]; the best loss "
                "after search steps gclib.zoo.ABS_STEP_MARKS [N, marks, C]",
    "abs-extra": "bits_per_dim [M] (an upper bound) and ssim_predictions [S] (the SSIM rule) of the first test images",
    "certify": "a randomized-smoothing base model's votes on the test subset: counts0 [N, C] (CERTIFY's n0 "
               "guessing votes) and counts [N, C] (its n counting votes), noise seeded per image",
    "faithfulness": "the heatmaps chapter's study (gclib.attribution.faithfulness_study) of the test subset: the "
                    "decision pair top, runner [N]; deletion and insertion [M, N, k + 1] (the margins after each step, "
                    "for the methods in the manifest, in its order) at the shares of pixels fraction [k + 1], sums [M, N] (each method's attributions summed) "
                    "and integrated gradients' convergence delta [N]",
    "corrupt": "logits [versions, N, C] of the model's rule on the test subset, clean and under every corruption "
               "of gclib.robust at the severities in the manifest (versions: gclib.zoo.corruption_versions)",
    "corrupt-predictions": "as corrupt at every severity, stored as predictions [versions, N] (uint8) and the "
                           "top-two logit margins margin [versions, N] (float16)",
    "sample-quality": "a GC's class-conditional samples judged by a shipped DC (gclib.samples.class_sample_judgements): "
                      "for row k of the manifest's rows (temperatures, then the decoded class means) row<k>.prediction "
                      "(the judge's class), row<k>.margin (its top-two logit margin, float16) and row<k>.outside "
                      "(values outside [0, 1]) [samples]",
    "attack-l2": "minimal-L2 adversarial examples (gclib.attacks.minimal_l2) of the test subset: x_adv [N, C, H, W], "
                 "distance [N] (inf: misclassified already or not found), misclassified [N], failed [N], queries [N], "
                 "gradients [N], start_distance [N] and the model's logits on x_adv, logits_adv [N, C] (FMN)",
    "attack-hsj": "as attack-l2, from HopSkipJump (decision-based) on the model as deployed",
    "attack-pgd": "PGD-Linf (gclib.attacks.success_curve) through the model's logits on the test subset at the "
                  "budgets in the manifest: correct [N] (before the attack), fooled and attacked [E, N], x_adv "
                  "[E, N, C, H, W] and the model's logits on them, logits_adv [E, N, C]",
    "attack-transfer": "PGD-Linf images crafted on other shipped models (gclib.zoo.transfer_images) for the test "
                       "subset: x_adv [S, E, N, C, H, W], the sources' logits source_logits [S, E, N, C], and the "
                       "model's logits on them, logits_adv [S, E, N, C], and on the clean images, logits_clean [N, C]",
    "score": "the score-based reading of a diffusion network (gclib.score, gclib.zoo.SCORE_READING) at the seeded "
             "dequantized test images: scores [N, P, C] (each Hutchinson probe's log p(x|y), nats), predictions [N], "
             "bits_per_dim [N] and its standard error over the probes bits_per_dim_se [N]",
    "abs-ood": "for every OoD set of gclib.data.ood (SET.scores, SET.abs_scores, SET.reconstruction_mse, "
               "SET.loss_by_step), as in abs-test",
    "diffusion-ood": "a diffusion network's densities for OoD detection (gclib.zoo.ood_images): for every OoD set "
                     "of gclib.data.ood, SET.elbo and SET.elbo_se [n, C] (class ELBOs on a small log-SNR bank), "
                     "SET.scores [n, C] (Li et al.'s class scores) and SET.ode [n, P, C] (the score-based reading); "
                     "elbo and elbo_se [N, C] of the score artifact's test images",
}


def folder(dataset: str, root: str | os.PathLike | None = None) -> Path:
    from .zoo import checkpoint_root

    return Path(root or checkpoint_root()) / dataset / "evals"


def path_of(model_name: str, kind: str, dataset: str = "fashion-mnist", root: str | os.PathLike | None = None) -> Path:
    """The stem ``checkpoints/<dataset>/evals/<model_name>.<kind>`` (without suffix)."""
    if kind not in KINDS:
        raise CheckpointError(f"unknown evaluation kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    return folder(dataset, root) / f"{model_name}.{kind}"


def save(stem: str | os.PathLike, tensors: dict[str, torch.Tensor], *, model_sha256: str, inputs: dict,
         **info) -> Path:
    """Write ``STEM.safetensors`` and (last: the commit point) ``STEM.json``; returns the JSON path.

    ``inputs``: what the images are (e.g. ``{"dataset": ..., "split": "test", "n": 2000, "subset_seed": 0}``);
    ``info``: how the tensors were computed (rule, stages, seeds, threads, wall time, ...).
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights = stem.with_name(stem.name + ".safetensors")
    _atomic_save_tensors(tensors, weights)
    manifest = {"format": FORMAT, "model_sha256": model_sha256, "inputs": inputs, "tensors": weights.name,
                "sha256": sha256(weights), "shapes": {k: list(v.shape) for k, v in tensors.items()},
                "environment": environment(), "info": info}
    json_path = stem.with_name(stem.name + ".json")
    atomic_write_text(json_path, json.dumps(manifest, indent=2))
    return json_path


def load(stem: str | os.PathLike, model_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, manifest)`` of an artifact, both hashes checked.

    Raises:
        CheckpointError: no such artifact, a corrupt file, or (with ``model_sha256``) an artifact computed
            from other weights than the model's.
    """
    stem = Path(stem)
    if stem.suffix in (".json", ".safetensors"):
        stem = stem.with_suffix("")
    json_path = stem.with_name(stem.name + ".json")
    if not json_path.is_file():
        there = sorted(p.stem for p in stem.parent.glob("*.json")) if stem.parent.is_dir() else []
        raise CheckpointError(f"no evaluation artifact {json_path}" + (f"; there are: {', '.join(there)}" if there
                              else "") + ". Compute it with python -m gclib.zoo publish MODEL --run RUN_DIR")
    try:
        manifest = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{json_path} is not valid JSON ({err})") from err
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{json_path} is not a gclib evaluation artifact (no \"format\": \"{FORMAT}\")")
    if model_sha256 is not None and manifest.get("model_sha256") != model_sha256:
        raise CheckpointError(f"{json_path} was computed from other weights (sha256 {manifest.get('model_sha256')}) "
                              f"than this model's ({model_sha256}); recompute it with python -m gclib.zoo publish")
    tensors_path = json_path.with_name(manifest["tensors"])
    if not tensors_path.is_file() or sha256(tensors_path) != manifest["sha256"]:
        raise CheckpointError(f"{tensors_path} is missing or does not match the sha256 in {json_path}")
    try:
        tensors = load_file(str(tensors_path))
    except SafetensorError as err:
        raise CheckpointError(f"{tensors_path} is not a readable safetensors file ({err})") from err
    manifest["_path"] = str(json_path)
    return tensors, manifest
