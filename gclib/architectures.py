"""Size and cost of the named architectures: parameters, latent split and FLOPs (``table_architectures``).

One row per config compares the generative classifier (GC) with the feed-forward discriminative
classifier (DC) that ``FeedForwardClassifier`` builds for the same config by default (ResNet-18 with a
3x3 stride-1 stem below 64 px, ResNet-50 at ImageNet size).

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``. It counts only the matrix products
and convolutions (``mm``, ``addmm``, ``bmm``, ``convolution`` and the like) at 2 FLOPs per multiply-add,
so 1 GFLOP here is 0.5 GMACs; elementwise operations (activations, batch norm, the coupling blocks'
affine updates, softmax) and indexing are not counted. The counts follow from the tensor shapes alone,
so they are exact and the same on every machine.

Parameters are all tensors in ``model.parameters()``. For the GC that includes tensors that FrEIA
registers as parameters but never trains (``requires_grad=False``): each coupling block's channel
permutation matrix and its inverse, and the Haar filters. Being C x C per block, the permutations are
most of the ImageNet GC's parameters (64 M of 106 M), so the trainable count is given as well.

The GC's class log-likelihoods have a part that does not depend on the batch: the squared norms of the
low-rank class means, ``||coeff[y] @ basis||^2``, which need ``basis @ basis.T``. For the ImageNet config
that is about 4.9 GFLOPs, nearly as much as the work per image (5.5 GFLOPs), and every call pays it (a
cache keyed on the parameters' version counters would go stale: PyTorch's fused optimizers update
parameters without bumping them). The table therefore gives it apart (``gc_fixed_gflops``) and counts
as the cost per image only the part that grows with the batch.

The measured columns (training images/s and memory of GC and DC) are not measured here: they come from
the benchmark's records (``python -m gclib.bench``, ``figures/table_throughput.json``), one setting per
config (a GPU's if there is one, then the largest batch); the full set is ``table_throughput``.

>>> row = architecture_rows(["fashion-mnist"], flops=False)[0]
>>> row["input_shape"], row["latent_dims"], row["full_mean_dims"] + row["low_rank_dims"]
('1x28x28', 784, 784)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .configs import get_config
from .model import FeedForwardClassifier, GenerativeClassifier

__all__ = ["architecture_rows", "architecture_row", "forward_flops", "batch_flops", "low_rank_norm_flops",
           "measured_columns", "HEADERS", "MEASURED_HEADERS", "headers"]

DEFAULT_CONFIGS = ("fashion-mnist-small", "fashion-mnist", "cifar10", "imagenet")

#: Markdown column titles of the rows' keys (the CSV keeps the keys).
HEADERS: dict[str, str] = {
    "config": "config",
    "input_shape": "input",
    "classes": "classes",
    "latent_dims": "latent dims",
    "latent_shape": "last feature map",
    "stages": "blocks per stage",
    "coupling_blocks": "coupling blocks",
    "subnet": "subnetwork",
    "full_mean_dims": "dims with full class means",
    "low_rank_dims": "dims with low-rank means",
    "low_rank": "rank",
    "gc_params": "GC parameters",
    "gc_trainable_params": "of which trainable",
    "gc_head_params": "of which class means",
    "dc_arch": "DC",
    "dc_params": "DC parameters",
    "gc_gflops": "GC GFLOPs / image",
    "gc_fixed_gflops": "GC GFLOPs / call",
    "dc_gflops": "DC GFLOPs / image",
}

#: Titles of the measured columns, which every row has (empty where the config was not measured).
MEASURED_HEADERS: dict[str, str] = {
    "measured_on": "measured on",
    "gc_train_images_per_s": "GC train img/s",
    "dc_train_images_per_s": "DC train img/s",
    "gc_train_memory_mib": "GC train memory (MiB)",
    "dc_train_memory_mib": "DC train memory (MiB)",
}
HEADERS.update(MEASURED_HEADERS)


def headers(keys: Iterable[str] | None = None) -> dict[str, str]:
    """Markdown column titles for ``keys`` (default: all columns), in the order given.

    Args:
        keys: the keys of a row, e.g. ``rows[0]``; unknown keys keep their own name.

    Returns:
        A dict from key to title, for ``gclib.plotting.save_table(..., headers=...)``.
    """
    keys = list(HEADERS) if keys is None else list(keys)
    return {k: HEADERS.get(k, k) for k in keys}


def forward_flops(fn: Callable[..., object], *args, **kwargs) -> int:
    """FLOPs of one call ``fn(*args, **kwargs)`` as counted by ``FlopCounterMode``, without gradients.

    Args:
        fn: a module or function.
        *args: its positional arguments.
        **kwargs: its keyword arguments.

    Returns:
        The total count: 2 per multiply-add of every matrix product and convolution; elementwise
        operations are not counted.

    >>> forward_flops(nn.Linear(5, 3), torch.zeros(4, 5))  # 2 * 4 * 5 * 3
    120
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def batch_flops(fn: Callable[[torch.Tensor], object], input_shape: tuple[int, ...]) -> tuple[int, int]:
    """Split the FLOPs of ``fn`` on a batch into a part per image and a part per call.

    ``fn`` is run on random batches of 1 and 2 images; FLOP counts are affine in the batch size, so
    ``per_image = F(2) - F(1)`` and ``per_call = 2 F(1) - F(2)``.

    Args:
        fn: a function of a batch of images, e.g. ``model.class_log_likelihoods``.
        input_shape: the shape of one image, (C, H, W).

    Returns:
        ``(per_image, per_call)`` in FLOPs.
    """
    one, two = (forward_flops(fn, torch.rand(b, *input_shape)) for b in (1, 2))
    return two - one, 2 * one - two


def _n_params(model: nn.Module, trainable_only: bool = False) -> int:
    # Every tensor in model.parameters(), also FrEIA's fixed ones (requires_grad=False: the coupling
    # blocks' permutation matrices and their inverses, the Haar filters); buffers are not counted.
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def measured_columns(name: str, records: list[dict] | None, dc_arch: str | None = None) -> dict:
    """The measured columns of config ``name`` from benchmark records (``gclib.bench``).

    Args:
        name: a config name.
        records: the records of ``figures/table_throughput.json`` (``gclib.bench.load_records``), or None.
        dc_arch: the DC the table describes (e.g. ``"resnet18, stem stride 1"``).

    Returns:
        A dict with the keys of ``MEASURED_HEADERS``: the record of a GPU if there is one, else the
        CPU's, at the largest training batch (bf16 preferred on a GPU, then the most threads, eager before
        compiled); empty strings if none. ``measured_on`` names the DC when it is not the table's (the
        benchmark's Fashion-MNIST ResNet-18 has the model zoo's stride-2 stem).
    """
    from .bench import table_rows

    mine = [r for r in records or [] if r["config"] == name]
    if not mine:
        return dict.fromkeys(MEASURED_HEADERS, "")
    best = max(mine, key=lambda r: (r["device_type"] == "cuda", r["batch_size"], r.get("amp", False),
                                     r.get("threads", 0), not r.get("compile", False)))
    row = table_rows([best])[0]
    return {
        "measured_on": f"{best['device']}, batch {best['batch_size']}, {best['precision']}"
                       + (f"; DC {best['dc']['arch']}" if dc_arch and best.get("dc") and best["dc"]["arch"] != dc_arch
                          else ""),
        **{key: row[key] for key in MEASURED_HEADERS if key != "measured_on"},
    }


def _gflops(flops: int) -> float:
    return float(f"{flops / 1e9:.4g}")


def architecture_row(name: str, flops: bool = True, dc_stem_stride: int = 1, records: list[dict] | None = None) -> dict:
    """One row of ``table_architectures`` for the config ``name``.

    Args:
        name: a config name, see ``gclib.configs.config_names``.
        flops: also count the forward FLOPs of both models (the ``*_gflops`` keys).
        dc_stem_stride: stride of the DC's stem below 64 px (the model zoo's Fashion-MNIST ResNet-18
            uses 2, which takes 4x fewer FLOPs and the same parameters).
        records: benchmark records for the measured columns (see ``measured_columns``).

    Returns:
        A dict of plain ints, floats and strings; the keys are those of ``HEADERS``.
    """
    cfg = get_config(name).model
    gc = GenerativeClassifier(cfg).eval()
    dc = FeedForwardClassifier(cfg, stem_stride=dc_stem_stride).eval()
    n_rest = cfg.n_dims - cfg.n_fc_dims
    row = {
        "config": cfg.name,
        "input_shape": "x".join(map(str, cfg.input_shape)),
        "classes": cfg.num_classes,
        "latent_dims": cfg.n_dims,
        "latent_shape": "x".join(map(str, cfg.latent_shape)),
        "stages": "+".join(map(str, cfg.stage_blocks)),
        "coupling_blocks": sum(cfg.stage_blocks),
        "subnet": cfg.subnet,
        "full_mean_dims": cfg.n_fc_dims,
        "low_rank_dims": n_rest,
        "low_rank": gc.head.low_rank,  # 0 when no dims are left over (or the config asks for zero means)
        "gc_params": _n_params(gc),
        "gc_trainable_params": _n_params(gc, trainable_only=True),
        "gc_head_params": _n_params(gc.head),
        "dc_arch": dc.arch if cfg.image_size >= 64 else f"{dc.arch}, stem stride {dc_stem_stride}",
        "dc_params": _n_params(dc),
    }
    if flops:
        gc_per_image, gc_per_call = batch_flops(gc.class_log_likelihoods, cfg.input_shape)
        dc_per_image, _ = batch_flops(dc, cfg.input_shape)
        row["gc_gflops"] = _gflops(gc_per_image)
        row["gc_fixed_gflops"] = _gflops(gc_per_call)
        row["dc_gflops"] = _gflops(dc_per_image)
    row.update(measured_columns(cfg.name, records, row["dc_arch"]))
    return row


def architecture_rows(names: Iterable[str] | str = DEFAULT_CONFIGS, flops: bool = True,
                      dc_stem_stride: int = 1, records: list[dict] | None = None) -> list[dict]:
    """The rows of ``table_architectures``: one per config, GC beside its feed-forward baseline.

    Columns: the config's input shape and classes; the latent size (the flow is invertible, so it
    equals the input size) and the last feature map before DCT pooling; blocks per stage, coupling
    blocks in all, and the subnetwork type; how many latent dims have a full class mean each and how
    many have low-rank means, with the rank; the parameters of the GC (all of ``model.parameters()``,
    the trainable ones, and those of the class means) and of the DC; with ``flops``, the GFLOPs of the
    GC's class log-likelihoods (all classes) per image and per call, and of the DC's logits per image.

    No meta device is needed: on 2 CPU cores the ImageNet row (building the GC, 106 M parameters of
    which 42 M trainable, and the ResNet-50, then a forward pass of each on 1 and on 2 images) takes
    about 1.3 s, 0.8 s of it without the FLOPs; the first forward pass in a process is slower.

    Args:
        names: config names, or one comma-separated string (``"fashion-mnist,cifar10"``).
        flops: also count the forward FLOPs (the ``*_gflops`` columns); without, only shapes and
            parameters.
        dc_stem_stride: stride of the DC's stem for inputs below 64 px, see ``architecture_row``.
        records: benchmark records (``gclib.bench.load_records("figures/table_throughput.json")``) for the
            measured columns: training images/s and memory; without, those columns are empty.

    Returns:
        A list of dicts with the same keys, ready for ``gclib.plotting.save_table``.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    return [architecture_row(name, flops=flops, dc_stem_stride=dc_stem_stride, records=records) for name in names]


def low_rank_norm_flops(name: str) -> int:
    """Hand count of the GC's per-call FLOPs: ``basis @ basis.T`` and ``coeff @ (...)`` of the low-rank means.

    Args:
        name: a config name.

    Returns:
        ``2 r^2 (D - n_fc) + 2 C r^2`` for rank r, D latent dims, n_fc full-mean dims and C classes
        (0 without low-rank means).
    """
    cfg = get_config(name).model
    n_rest = cfg.n_dims - cfg.n_fc_dims
    rank = cfg.low_rank if n_rest > 0 else 0
    return 2 * rank * rank * n_rest + 2 * cfg.num_classes * rank * rank if rank else 0

