"""Checkpoints: safetensors + JSON, written atomically, verified on load, never unpickled.

A checkpoint is a folder ``step-0000120/`` in the run folder:

    model.safetensors      the weights (tied tensors stored once)
    config.json            the model's config, with its type
    optimizer.safetensors  optimizer tensors (Adam moments, ...) and RNG states
    state.json             step, optimizer hyper-parameters, trainer state (data position, best metric, ...)
    manifest.json          sha256 of every file above; written last

It is assembled in a temporary folder and renamed into place, so a crash (even SIGKILL) at any
moment leaves either the complete checkpoint or none; ``latest`` names the newest one.
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
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

FILES = ("model.safetensors", "config.json", "optimizer.safetensors", "state.json")


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated or corrupt."""


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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    _fsync(tmp)
    os.replace(tmp, path)


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


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = value.contiguous()
            else:
                scalars[f"{idx}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def set_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ---- whole checkpoints ------------------------------------------------------------------------

def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    config,
    optimizer: torch.optim.Optimizer | None = None,
    trainer_state: dict[str, Any] | None = None,
    keep: int = 3,
) -> Path:
    """Write checkpoint ``step`` into ``run_dir`` atomically and keep only the newest ``keep``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step-{step:07d}"
    tmp = run_dir / f".step-{step:07d}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps({"type": type(config).__name__, **config.to_dict()}, indent=2))
    tensors, rng_meta = rng_state()
    optim_meta = None
    if optimizer is not None:
        optim_tensors, optim_meta = optimizer_state(optimizer)
        tensors.update(optim_tensors)
    save_file({k: v.detach().cpu() for k, v in tensors.items()}, str(tmp / "optimizer.safetensors"))
    state = {"step": step, "rng": rng_meta, "optimizer": optim_meta, "trainer": trainer_state or {}}
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    for name in FILES:
        _fsync(tmp / name)
    (tmp / "manifest.json").write_text(json.dumps({name: _sha256(tmp / name) for name in FILES}, indent=2))
    _fsync(tmp / "manifest.json")
    if final.exists():  # the same step written again after a resume
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(run_dir)
    write_json_atomic(run_dir / "latest", {"checkpoint": final.name})
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``run_dir``, oldest first (temporary folders of a crash are ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.glob("step-*") if p.is_dir() and (p / "manifest.json").exists())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


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


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load weights (and optimizer and RNG state) from a checkpoint folder; returns its state.json."""
    path = Path(path)
    state = verify_checkpoint(path)
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
        tensors = load_file(str(path / "optimizer.safetensors"))
    except SafetensorError as e:
        raise CheckpointError(f"{path}: cannot read safetensors file: {e}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path / 'model.safetensors'} does not fit the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    if optimizer is not None and state["optimizer"] is not None:
        set_optimizer_state(optimizer, tensors, state["optimizer"])
    if restore_rng:
        set_rng_state(tensors, state["rng"])
    return state


def read_config(path: str | Path) -> dict[str, Any]:
    """The model config stored in a checkpoint folder (a dict with its ``type``)."""
    f = Path(path) / "config.json"
    if not f.exists():
        raise CheckpointError(f"{f} is missing")
    return json.loads(f.read_text())
