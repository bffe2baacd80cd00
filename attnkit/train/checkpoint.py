"""Checkpoints: safetensors + JSON, written atomically, verified on load, never unpickled.

A checkpoint is a folder ``step-0000120/`` in the run folder:

    model.safetensors      the weights (tied tensors stored once)
    config.json            the model's config, with its type
    optimizer.safetensors  optimizer tensors (Adam moments, ...) and RNG states
    state.json             step, optimizer hyper-parameters, trainer state (data position, best metric, ...)
    manifest.json          sha256 of every file above; written last

It is assembled in a temporary folder and renamed into place, so a crash (even SIGKILL) at any
moment leaves either the complete checkpoint or none. Checkpoints are ordered by their step;
:func:`newest_valid_checkpoint` returns the newest one whose files match their manifest, skipping
(and naming) any that do not.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import UsageError
from ..io import atomic_write_text

FILES = ("model.safetensors", "config.json", "optimizer.safetensors", "state.json")


class CheckpointError(UsageError, ValueError):
    """A checkpoint is missing, truncated or corrupt (the message names the file)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2), fsync=True)


# ---- RNG and optimizer state as tensors + JSON ------------------------------------------------

def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    meta = {"python": random.getstate(), "numpy": [kind, int(pos), int(has_gauss), float(gauss)]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng/cuda"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))


def flatten_optimizer_state(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state dict keyed by parameter name -> (tensors, JSON-able rest)."""
    tensors, scalars = {}, {}
    for name, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{name}/{key}"] = value.contiguous()
            else:
                scalars[f"{name}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for flat, value in tensors.items():
        if flat.startswith("optim/"):
            _, name, key = flat.split("/", 2)
            state.setdefault(name, {})[key] = value
    for flat, value in meta["scalars"].items():
        name, key = flat.split("/", 1)
        state.setdefault(name, {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def dedupe_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tied weights (one tensor under two names) are stored once: (unique tensors, {alias: name})."""
    unique, aliases, seen = {}, {}, {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = t.detach().contiguous()
    return unique, aliases


# ---- whole checkpoints ------------------------------------------------------------------------

def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    config,
    optimizer_state: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    keep: int = 3,
    name: str | None = None,
) -> Path:
    """Write checkpoint ``step`` into ``run_dir`` atomically and keep only the newest ``keep``.

    With a ``name`` (e.g. "best") the checkpoint is written to ``run_dir/name`` instead, replacing the
    one there; it is not one of the ``step-*`` checkpoints that resuming and pruning look at.

    ``model_state`` and ``optimizer_state`` are full state dicts keyed by parameter name (see
    :func:`attnkit.train.trainer.Trainer.save`, which gathers them from sharded models too).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final, named = run_dir / (name or f"step-{step:07d}"), name is not None
    tmp = run_dir / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights, aliases = dedupe_tensors(model_state)
    save_file({k: v.cpu() for k, v in weights.items()}, str(tmp / "model.safetensors"),
              metadata={"aliases": json.dumps(aliases)})
    (tmp / "config.json").write_text(json.dumps({"type": type(config).__name__, **config.to_dict()}, indent=2))
    tensors, rng_meta = rng_state()
    optim_meta = None
    if optimizer_state is not None:
        optim_tensors, optim_meta = flatten_optimizer_state(optimizer_state)
        tensors.update(optim_tensors)
    save_file({k: v.detach().cpu() for k, v in tensors.items()}, str(tmp / "optimizer.safetensors"))
    state = {"step": step, "rng": rng_meta, "optimizer": optim_meta, "trainer": trainer_state or {}}
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    for name in FILES:
        _fsync(tmp / name)
    (tmp / "manifest.json").write_text(json.dumps({name: _sha256(tmp / name) for name in FILES}, indent=2))
    _fsync(tmp / "manifest.json")
    if final.exists():  # the same step written again after a resume, or a better "best"
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(run_dir)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 and not named else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``run_dir``, oldest first (temporary folders of a crash are ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.glob("step-*") if p.is_dir() and (p / "manifest.json").exists())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder (not verified; see :func:`newest_valid_checkpoint`)."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def newest_valid_checkpoint(run_dir: str | Path, on_skip=None) -> Path | None:
    """The newest checkpoint in ``run_dir`` whose files match their manifest, or None if there is none.

    A checkpoint that fails verification is skipped: ``on_skip(path, error)`` is called for it (to say
    which one was skipped and why) and the next older one is tried. Raises the newest checkpoint's
    :class:`CheckpointError` when every checkpoint fails.
    """
    found = list_checkpoints(run_dir)
    first_error = None
    for path in reversed(found):
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            first_error = first_error or e
            if on_skip is not None:
                on_skip(path, e)
            continue
        return path
    if first_error is not None:
        raise CheckpointError(f"no checkpoint of {run_dir} verifies; the newest: {first_error}") from None
    return None


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check every file against the manifest; raise :class:`CheckpointError` naming the bad file."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise CheckpointError(f"{manifest_path} is missing: {path} is not a complete checkpoint")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{manifest_path} is corrupt: {e}") from None
    for name, digest in manifest.items():
        f = path / name
        if not f.exists():
            raise CheckpointError(f"{f} is missing from the checkpoint")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f} is corrupt or truncated (its sha256 does not match the manifest)")
    return json.loads((path / "state.json").read_text())


def read_checkpoint(
    path: str | Path, *, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Any]]:
    """Verify and read a checkpoint folder -> (model state, optimizer state or None, state.json).

    ``verify=False`` skips hashing the files again, for a path :func:`newest_valid_checkpoint` has just
    verified. Only safetensors and JSON are read: nothing in a checkpoint can execute code.
    """
    path = Path(path)
    state = verify_checkpoint(path) if verify else read_state(path)
    try:
        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
        weights = load_file(str(path / "model.safetensors"))
        tensors = load_file(str(path / "optimizer.safetensors"))
    except (SafetensorError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file: {e}") from None
    for alias, name in aliases.items():
        weights[alias] = weights[name]
    optimizer = unflatten_optimizer_state(tensors, state["optimizer"]) if state["optimizer"] else None
    state["_rng_tensors"] = {k: v for k, v in tensors.items() if k.startswith("rng/")}
    return weights, optimizer, state


def load_checkpoint(path: str | Path, model: torch.nn.Module, *, verify: bool = True) -> dict[str, Any]:
    """Load the weights of a checkpoint folder into ``model`` (strictly); returns its state.json."""
    weights, _, state = read_checkpoint(path, verify=verify)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{Path(path) / 'model.safetensors'} does not fit the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return state


def read_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's state.json (step, trainer state), read without verifying the other files."""
    try:
        return json.loads((Path(path) / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{Path(path) / 'state.json'} cannot be read: {e}") from None


def read_config(path: str | Path) -> dict[str, Any]:
    """The model config stored in a checkpoint folder (a dict with its ``type``)."""
    f = Path(path) / "config.json"
    if not f.exists():
        raise CheckpointError(f"{f} is missing")
    return json.loads(f.read_text())
