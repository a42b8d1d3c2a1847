"""Checkpoints: safetensors weights + a JSON manifest; nothing is ever unpickled.

A checkpoint ``PATH`` is the pair ``PATH.safetensors`` (weights) and ``PATH.json`` (manifest: format,
model kind, the full config, training facts, metrics, library versions and the sha256 of the weights).
Files are written to a temporary name and renamed, so a crash never leaves a half-written file under
the real name.

Kinds: ``"generative"`` (IB-INN) and ``"feedforward"`` (ResNet), whose manifest holds a ``Config``;
``"diffusion"`` (:class:`gclib.diffusion.DiffusionClassifier`), whose manifest holds the model's
``spec()`` (the denoiser's class and constructor arguments, the schedule, the noise banks' seed and
sizes) and the sha256 of the ELBO's noise bank, which is rebuilt from its seed rather than stored.

Training state (for ``--resume``) lives in the run folder: ``state-<step>.safetensors`` (model),
``state-<step>.optim.safetensors`` (optimizer tensors), optional extra modules such as an EMA
(``state-<step>.<name>.safetensors``) and ``last.json``, which names them and is written last:
renaming ``last.json`` is the commit point, so the previous state stays valid until the new one is
complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from .configs import Config
from .errors import CheckpointError, ConfigError

__all__ = ["atomic_write_text", "config_name", "environment", "load", "load_into", "read_manifest", "save", "sha256"]

FORMAT = "gclib-checkpoint"
FORMAT_VERSION = 1
ABS_FORMAT = "gclib-abs-checkpoint"  # gclib.abs.FORMAT (kept here so reading a manifest imports no model code)
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+ / torch.save's zip container


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tmp_path(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    A crash or an exception inside ``write`` leaves ``path`` as it was and no temporary file behind.
    """
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    _atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def _atomic_save_model(model: torch.nn.Module, path: Path, metadata: dict | None = None) -> None:
    # save_model (not save_file): it makes FrEIA's non-contiguous permutation tensors contiguous.
    _atomic_write(path, lambda tmp: save_model(model, str(tmp), metadata=metadata))


def _atomic_save_tensors(tensors: dict, path: Path) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """Library versions and the machine, for manifests and benchmark reports."""
    import FrEIA
    import numpy
    import safetensors

    from . import __version__

    return {
        "gclib": __version__,
        "torch": torch.__version__,
        "FrEIA": getattr(FrEIA, "__version__", "0.2"),
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
    }


def _kind(model) -> str:
    from .diffusion import DiffusionClassifier
    from .model import FeedForwardClassifier, GenerativeClassifier

    if isinstance(model, GenerativeClassifier):
        return "generative"
    if isinstance(model, FeedForwardClassifier):
        return "feedforward"
    if isinstance(model, DiffusionClassifier):
        return "diffusion"
    raise CheckpointError(f"can only save gclib models, got {type(model).__name__}")


def _diffusion_spec(model) -> dict:
    """The JSON form of a DiffusionClassifier's ``spec()`` (tuples as lists), or CheckpointError."""
    from .errors import InputError

    try:
        return json.loads(json.dumps(model.spec()))
    except InputError as err:
        raise CheckpointError(str(err)) from err


def _bank_sha256(spec: dict) -> str:
    """sha256 of the ELBO bank that ``spec`` rebuilds from its seed (t and eps, float32 bytes): equal at save and
    load unless this torch draws other random numbers for the seed."""
    from .diffusion import NoiseBank, VPSchedule

    bank = NoiseBank.log_snr_strata(spec["elbo_pairs"], tuple(spec["input_shape"]), VPSchedule(**spec["schedule"]),
                                    seed=spec["seed"], t_min=spec["elbo_t_min"])
    h = hashlib.sha256()
    for tensor in (bank.t, bank.eps):
        h.update(tensor.to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _describe_model(model) -> str:
    config = getattr(model, "config", None)
    if hasattr(config, "name"):
        return f"{type(model).__name__} of config {config.name!r}"
    return type(model).__name__


def _unwrap(model):
    return getattr(model, "module", model)  # DistributedDataParallel


def save(model, path: str | os.PathLike, *, env: dict | None = None, **info) -> Path:
    """Write ``PATH.safetensors`` and ``PATH.json`` for a GC, feed-forward or diffusion model; returns the JSON path.

    The weights are stored in their dtypes (``gclib.zoo.storage_copy(model, "float16")`` first for fp16
    storage of the trainable weights; ``load`` casts them back to float32); the manifest's ``dtype`` is the
    trainable weights'. Extra keyword arguments (beta, seed, epochs, metrics, ...) go into the
    manifest under ``info``; ``env`` replaces the recorded environment (library versions, git commit),
    e.g. to keep the one of the training run when a model is re-saved.
    """
    from .configs import config_names, get_config

    model = _unwrap(model)
    kind = _kind(model)  # refuse a non-gclib model before writing anything
    spec = _diffusion_spec(model) if kind == "diffusion" else None
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = path.with_name(path.name + ".safetensors")
    _atomic_save_model(model, weights)
    if kind == "diffusion":
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "family": model.family,
            "diffusion": spec,
            "elbo_bank_sha256": _bank_sha256(spec),
            "weights": weights.name,
            "sha256": sha256(weights),
            "dtype": _storage_dtype(model),
            "environment": env or environment(),
            "info": info,
        }
        json_path = path.with_name(path.name + ".json")
        atomic_write_text(json_path, json.dumps(manifest, indent=2, default=_jsonable))
        return json_path
    cfg = model.config
    # Record the named config's training defaults only when the architecture is exactly that config.
    named = cfg.name in config_names() and get_config(cfg.name).model == cfg
    config = Config(cfg, get_config(cfg.name).train) if named else Config(cfg)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": config.to_dict(),
        "weights": weights.name,
        "sha256": sha256(weights),
        "dtype": _storage_dtype(model),
        "environment": env or environment(),
        "info": info,
    }
    if kind == "feedforward":
        manifest["feedforward"] = {"arch": model.arch, "stem_stride": model.stem_stride}
    json_path = path.with_name(path.name + ".json")
    atomic_write_text(json_path, json.dumps(manifest, indent=2, default=_jsonable))
    return json_path


def _storage_dtype(model) -> str:
    """The dtype the model's trainable weights are stored in (frozen tensors may stay float32, see
    ``gclib.zoo.storage_copy``)."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad] or params
    return str(trainable[0].dtype).replace("torch.", "")


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to a manifest")


def _resolve(path: str | os.PathLike) -> tuple[Path, Path]:
    """(manifest path, stem) for 'run/final', 'run/final.json', 'run/final.safetensors' or a run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "final"
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".json"), path


def _check_not_pickle(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(
            f"{path} is a pickle / torch.save file; gclib never unpickles (it can run arbitrary code). "
            "Load it yourself with torch.load(..., weights_only=True) if you trust it, then gclib.save() it."
        )


def read_manifest(path: str | os.PathLike) -> dict:
    """The parsed JSON manifest of checkpoint ``path``, checked for format."""
    json_path, stem = _resolve(path)
    if not json_path.is_file():
        weights = stem.with_name(stem.name + ".safetensors")
        if weights.is_file():
            _check_not_pickle(weights)
        for candidate in (stem, Path(str(stem) + ".pt"), Path(str(stem) + ".pth")):
            if candidate.is_file():
                _check_not_pickle(candidate)
        there = sorted(p.name for p in json_path.parent.glob("*.json")) if json_path.parent.is_dir() else []
        raise CheckpointError(
            f"no checkpoint manifest {json_path}"
            + (f"; manifests in that folder: {', '.join(there)}" if there else "; the folder has none")
        )
    try:
        manifest = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{json_path} is not valid JSON ({err}); the file is truncated or corrupt") from err
    if not isinstance(manifest, dict) or manifest.get("format") not in (FORMAT, ABS_FORMAT):
        raise CheckpointError(f"{json_path} is not a gclib checkpoint manifest (no \"format\": \"{FORMAT}\")")
    manifest["_path"] = str(json_path)
    return manifest


def _verified_weights(manifest: dict, verify: bool) -> Path:
    json_path = Path(manifest["_path"])
    weights = json_path.with_name(manifest["weights"])
    if not weights.is_file():
        raise CheckpointError(f"weights file {weights} named by {json_path} is missing")
    _check_not_pickle(weights)
    if verify and manifest.get("sha256") and sha256(weights) != manifest["sha256"]:
        raise CheckpointError(
            f"{weights} does not match the sha256 in {json_path}: the file is truncated, corrupt or was "
            "replaced; restore it or retrain"
        )
    return weights


def _build(manifest: dict):
    from .diffusion import DiffusionClassifier
    from .errors import InputError
    from .model import FeedForwardClassifier, GenerativeClassifier

    if manifest.get("kind") == "diffusion":
        try:
            return DiffusionClassifier.from_spec(manifest["diffusion"])
        except (KeyError, TypeError, InputError) as err:
            raise CheckpointError(f"{manifest['_path']} has an unusable diffusion record ({err!r})") from err
    config = Config.from_dict(manifest["config"])
    if manifest.get("kind") == "feedforward":
        ff = manifest.get("feedforward", {})
        return FeedForwardClassifier(config.model, arch=ff.get("arch"), stem_stride=ff.get("stem_stride", 1))
    return GenerativeClassifier(config.model)


def config_name(manifest: dict) -> str | None:
    """The name of a manifest's config as today's configs call it (see ``gclib.configs.RENAMED``)."""
    if "config" not in manifest or manifest.get("format") == ABS_FORMAT:
        return None
    try:
        return Config.from_dict(manifest["config"]).name
    except ConfigError:
        return (manifest.get("config") or {}).get("model", {}).get("name")


def _load_weights(model, weights: Path, device) -> None:
    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except SafetensorError as err:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({err}); "
                              "it is truncated or corrupt") from err
    except RuntimeError as err:  # missing/unexpected keys or shape mismatch
        raise CheckpointError(
            f"{weights} does not fit a {_describe_model(model)}: it was saved from "
            f"another architecture or config ({str(err).splitlines()[0][:300]})"
        ) from err


def load(path: str | os.PathLike, device: str | torch.device | None = None, verify: bool = True,
         expect_config: str | None = None):
    """Load a checkpoint written by ``save`` (or a training run's ``final``); returns the model in eval mode.

    Arguments:
        path: ``run/final``, ``run/final.json``, ``run/final.safetensors`` or the run folder.
        device: where to put the model (default: CUDA if available, else CPU).
        verify: check the weights' sha256 against the manifest first.
        expect_config: raise CheckpointError if the checkpoint's config has another name.
    """
    manifest = read_manifest(path)
    if manifest.get("format") == ABS_FORMAT:  # the ABS family writes its own manifest (gclib.abs.save)
        from . import abs as abs_family

        if expect_config is not None:
            raise CheckpointError(f"{manifest['_path']} holds an ABS model, not a {expect_config!r} one")
        return abs_family.load(path, device=device, verify=verify)
    weights = _verified_weights(manifest, verify)
    name = config_name(manifest)
    if expect_config is not None and name != expect_config:
        raise CheckpointError(f"{manifest['_path']} holds a {name!r} model, not {expect_config!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = _build(manifest)
    if manifest.get("dtype") == "float64":
        model = model.double()
    _load_weights(model, weights, "cpu")
    if manifest.get("kind") == "diffusion" and manifest.get("elbo_bank_sha256") != _bank_sha256(manifest["diffusion"]):
        raise CheckpointError(f"the ELBO noise bank rebuilt from the seed in {manifest['_path']} differs from the "
                              "saved model's (another torch version's random numbers?): its ELBOs would differ")
    model.manifest = {k: v for k, v in manifest.items() if not k.startswith("_")}
    return model.to(device).eval()


def load_into(model, path: str | os.PathLike, verify: bool = True):
    """Load checkpoint weights into an existing model, refusing a checkpoint of another config."""
    model = _unwrap(model)
    manifest = read_manifest(path)
    weights = _verified_weights(manifest, verify)
    if (manifest.get("kind") == "diffusion") != (_kind(model) == "diffusion"):
        raise CheckpointError(f"{manifest['_path']} holds a {manifest.get('kind')} model, this is a "
                              f"{_kind(model)} one; build the model with gclib.load(path) instead")
    if _kind(model) == "diffusion":
        if manifest.get("diffusion") != _diffusion_spec(model):
            raise CheckpointError(f"{manifest['_path']} describes another diffusion model than this one "
                                  "(network, schedule or noise banks differ); build it with gclib.load(path)")
        _load_weights(model, weights, model.device)
        return model
    name = config_name(manifest)
    if name != model.config.name or Config.from_dict(manifest["config"]).model != model.config:
        raise CheckpointError(
            f"{manifest['_path']} was saved from config {name!r}, which differs from this model's "
            f"{model.config.name!r}; build the model with gclib.load(path) instead"
        )
    _load_weights(model, weights, next(model.parameters()).device)
    return model


# -- training state --------------------------------------------------------------------------------
def _state_config(model) -> dict:
    """What a training state records of the model, to refuse resuming it into another one."""
    if _kind(model) == "diffusion":
        return _diffusion_spec(model)
    return Config(model.config).to_dict()["model"]


def save_training_state(run_dir: Path, model, optimizer: torch.optim.Optimizer, state: dict, keep: int = 1,
                        extra: dict | None = None) -> None:
    """Write model + optimizer tensors for step ``state['step']``, then commit by renaming last.json.

    ``extra``: further modules to keep with the state, by name (e.g. ``{"ema": averaged_model}``), each in
    ``state-<step>.<name>.safetensors``; :func:`load_training_state` restores them.
    """
    model = _unwrap(model)
    run_dir = Path(run_dir)
    step = int(state["step"])
    model_path = run_dir / f"state-{step:09d}.safetensors"
    optim_path = run_dir / f"state-{step:09d}.optim.safetensors"
    _atomic_save_model(model, model_path)
    extra_files = {}
    for name, module in (extra or {}).items():
        if not name.isidentifier() or name in ("optim", "model", "optimizer"):
            raise ValueError(f"bad name for an extra module of the training state: {name!r}")
        extra_path = run_dir / f"state-{step:09d}.{name}.safetensors"
        _atomic_save_model(module, extra_path)  # as given: an AveragedModel's `module` is not DDP's
        extra_files[name] = {"file": extra_path.name, "sha256": sha256(extra_path)}
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, param_state in opt["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    _atomic_save_tensors(tensors, optim_path)
    record = {
        "format": "gclib-training-state",
        "model": model_path.name,
        "model_sha256": sha256(model_path),
        "optimizer": optim_path.name,
        "optimizer_sha256": sha256(optim_path),
        "param_groups": opt["param_groups"],
        "optimizer_scalars": scalars,
        "config": _state_config(model),
        "extra": extra_files,
        **state,
    }
    previous = read_training_state(run_dir, verify=False) if (run_dir / "last.json").is_file() else None
    atomic_write_text(run_dir / "last.json", json.dumps(record, indent=2))
    if previous and keep <= 1 and previous["model"] != record["model"]:
        old = [previous["model"], previous["optimizer"]] + [e["file"] for e in previous.get("extra", {}).values()]
        for name in old:
            (run_dir / name).unlink(missing_ok=True)


def read_training_state(run_dir: Path, verify: bool = True) -> dict:
    path = Path(run_dir) / "last.json"
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist (start without --resume)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is corrupt ({err}); delete the run folder or start a new --out") from err
    if verify:
        files = [(record[key], record[f"{key}_sha256"]) for key in ("model", "optimizer")]
        files += [(e["file"], e["sha256"]) for e in record.get("extra", {}).values()]
        for name, digest in files:
            file = Path(run_dir) / name
            if not file.is_file() or sha256(file) != digest:
                raise CheckpointError(f"{file} is missing or does not match {path}; the training state is damaged")
    return record


def load_training_state(run_dir: Path, model, optimizer: torch.optim.Optimizer, extra: dict | None = None) -> dict:
    """Restore model, optimizer (and the ``extra`` modules, by name) from ``run_dir/last.json``; returns the
    record (step, epoch, ...)."""
    model = _unwrap(model)
    run_dir = Path(run_dir)
    record = read_training_state(run_dir)
    if _kind(model) == "diffusion":
        if record["config"] != _diffusion_spec(model):
            raise CheckpointError(f"{run_dir} was trained with another diffusion model (network, schedule or noise "
                                  "banks differ); resume with the same model or use a new out folder")
    elif Config.from_dict({"model": record["config"]}).model != model.config:
        raise CheckpointError(f"{run_dir} was trained with config {record['config'].get('name')!r} of other "
                              "settings than this model; resume with the same config or use a new --out")
    missing = sorted(set(extra or {}) - set(record.get("extra", {})))
    if missing:
        raise CheckpointError(f"{run_dir / 'last.json'} has no saved {', '.join(missing)}; it was written by "
                              "another training loop")
    _load_weights(model, run_dir / record["model"], next(model.parameters()).device)
    for name, module in (extra or {}).items():
        _load_weights(module, run_dir / record["extra"][name]["file"], next(module.parameters()).device)
    tensors = load_file(str(run_dir / record["optimizer"]), device=str(next(model.parameters()).device))
    state: dict = {}
    for key, value in list(tensors.items()) + list(record["optimizer_scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    # Adam keeps its step counters on the CPU; the tensors above were put on the model's device.
    for param_state in state.values():
        if "step" in param_state and torch.is_tensor(param_state["step"]):
            param_state["step"] = param_state["step"].cpu()
    optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    return record
