"""Hugging Face T5 folders (``T5ForConditionalGeneration``, ``model_type`` "t5") in and out of attnkit's T5.

    model = load_t5("path/to/t5-small")    # config.json + model.safetensors
    save_t5(model, "out/")                 # transformers.T5ForConditionalGeneration.from_pretrained("out/")

Only JSON and safetensors are read, so loading never executes code from the folder.

Two details of the format:

- whether the decoder output is scaled by d_model**-0.5 (v1.0) was ``tie_word_embeddings`` (default
  True); transformers 5 writes it as ``scale_decoder_outputs`` and always sets ``tie_word_embeddings``.
  Both are read (``scale_decoder_outputs`` first) and both are written;
- an untied (v1.1) folder has its own ``lm_head.weight``; without one the output layer starts as a copy
  of the token embedding (what transformers 5 does). A scaled output layer with its own weights has no
  attnkit equivalent and is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..models.t5 import FEED_FORWARDS, T5, T5Config
from .errors import UnsupportedCheckpoint
from .hf import read_config, read_safetensors

# a key load_t5 needs: transformers defaults these to t5-small's shape, which another folder would take silently
REQUIRED = object()

# (T5Config field, config.json key, the value when the key is absent or null; None: derived below)
CONFIG_FIELDS = (
    ("vocab_size", "vocab_size", REQUIRED),
    ("d_model", "d_model", REQUIRED),
    ("d_kv", "d_kv", REQUIRED),
    ("d_ff", "d_ff", REQUIRED),
    ("n_layers", "num_layers", REQUIRED),
    ("n_decoder_layers", "num_decoder_layers", None),  # None: as many as the encoder's (T5Config's default)
    ("n_heads", "num_heads", REQUIRED),
    ("relative_attention_num_buckets", "relative_attention_num_buckets", 32),
    ("relative_attention_max_distance", "relative_attention_max_distance", 128),
    ("dropout", "dropout_rate", 0.1),
    ("layer_norm_eps", "layer_norm_epsilon", 1e-6),
    ("feed_forward", "feed_forward_proj", "relu"),
    ("pad_id", "pad_token_id", 0),
    ("eos_id", "eos_token_id", 1),
    ("decoder_start_id", "decoder_start_token_id", None),  # None: the pad id, which T5 starts targets with
)


def t5_config(hf: dict[str, Any], where: str | Path = "config.json") -> T5Config:
    """attnkit's :class:`T5Config` for a Hugging Face ``T5Config`` dict (``where`` names it in errors)."""
    if hf.get("model_type") != "t5":
        raise UnsupportedCheckpoint(
            f"{where}: model_type {hf.get('model_type')!r} (architectures {hf.get('architectures')}) is not "
            "supported; load_t5 reads model_type 't5'"
        )
    if hf.get("is_encoder_decoder") is False or hf.get("is_decoder"):
        raise UnsupportedCheckpoint(f"{where}: load_t5 reads the encoder-decoder; this config is a decoder alone")
    missing = [theirs for _, theirs, default in CONFIG_FIELDS if default is REQUIRED and hf.get(theirs) is None]
    if missing:
        raise UnsupportedCheckpoint(f"{where} lacks {', '.join(missing)}, which load_t5 needs")
    values = {ours: default if hf.get(theirs) is None else hf[theirs] for ours, theirs, default in CONFIG_FIELDS}
    if values["decoder_start_id"] is None:
        values["decoder_start_id"] = values["pad_id"]
    if values["feed_forward"] not in FEED_FORWARDS:
        raise UnsupportedCheckpoint(
            f"{where}: feed_forward_proj={values['feed_forward']!r} is not supported; "
            f"attnkit's T5 has {', '.join(map(repr, FEED_FORWARDS))}"
        )
    eos = values["eos_id"]
    if isinstance(eos, list):
        if len(eos) != 1:
            raise UnsupportedCheckpoint(f"{where}: eos_token_id={eos!r}; attnkit's T5 takes one eos id")
        values["eos_id"] = eos[0]
    scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    if scale is None:
        scale = True
    if not isinstance(scale, bool):
        raise UnsupportedCheckpoint(f"{where}: scale_decoder_outputs / tie_word_embeddings must be true or false, "
                                    f"got {scale!r}")
    try:
        return T5Config(**values, tie_embeddings=scale)
    except ValueError as e:
        # name the config.json key behind the T5Config field the check complained about
        theirs = next((t for o, t, _ in CONFIG_FIELDS if f"T5Config.{o} " in f"{e} "), None)
        key = f" ({theirs}={hf.get(theirs)!r})" if theirs else ""
        raise UnsupportedCheckpoint(f"{where}{key}: {e}") from e


def t5_names(c: T5Config) -> list[tuple[str, str]]:
    """(attnkit name, Hugging Face ``T5ForConditionalGeneration`` name) of every parameter; the output layer
    (``lm_head.weight``) only when it is not tied."""
    names = [("embed.weight", "shared.weight")]
    if not c.tie_embeddings:
        names.append(("lm_head.weight", "lm_head.weight"))
    ff = {"ff.up": "wi", "ff.down": "wo"}
    if c.feed_forward == "gated-gelu":
        ff = {"ff.gate": "wi_0", "ff.up": "wi_1", "ff.down": "wo"}
    projections = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "o"}
    for stack, n_layers in (("encoder", c.n_layers), ("decoder", c.n_decoder_layers or c.n_layers)):
        # T5 keeps the stack's relative position bias in its first layer
        names.append((f"{stack}.relative_bias.embedding.weight",
                      f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"))
        # the sublayers in order: self-attention, encoder/decoder attention (decoder), feed-forward
        sublayers = [("self_attn", "SelfAttention")]
        if stack == "decoder":
            sublayers.append(("cross_attn", "EncDecAttention"))
        for i in range(n_layers):
            ours, theirs = f"{stack}.blocks.{i}", f"{stack}.block.{i}.layer"
            for j, (attn, hf_attn) in enumerate(sublayers):
                for p, hf_p in projections.items():
                    names.append((f"{ours}.{attn}.{p}.weight", f"{theirs}.{j}.{hf_attn}.{hf_p}.weight"))
                names.append((f"{ours}.{attn}_norm.weight", f"{theirs}.{j}.layer_norm.weight"))
            j = len(sublayers)
            for p, hf_p in ff.items():
                names.append((f"{ours}.{p}.weight", f"{theirs}.{j}.DenseReluDense.{hf_p}.weight"))
            names.append((f"{ours}.ff_norm.weight", f"{theirs}.{j}.layer_norm.weight"))
        names.append((f"{stack}.final_norm.weight", f"{stack}.final_layer_norm.weight"))
    return names


def _list(keys: list[str]) -> str:
    return ", ".join(keys[:6]) + (f" ... ({len(keys)} in all)" if len(keys) > 6 else "")


def load_t5(folder: str | Path, *, dtype: torch.dtype = torch.float32) -> T5:
    """Build attnkit's :class:`T5` from a Hugging Face T5 folder, in eval mode.

    Args:
        folder: ``config.json`` and ``model.safetensors`` (or shards with ``model.safetensors.index.json``)
            of a ``T5ForConditionalGeneration`` (or a ``T5Model`` with tied embeddings).
        dtype: dtype of the parameters.

    Raises:
        UnsupportedCheckpoint: a config value or tensor attnkit's T5 cannot represent, or a folder without
            safetensors weights; the message names the file and the field or tensor.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder at {folder}")
    config = t5_config(read_config(folder), folder / "config.json")  # before reading any weights
    state = read_safetensors(folder)
    where = folder / "model.safetensors"
    names = t5_names(config)
    shared = state.get("shared.weight")
    if not config.tie_embeddings and "lm_head.weight" not in state and shared is not None:
        state["lm_head.weight"] = shared.clone()  # transformers 5 ties the head to the embedding here too
    missing = [theirs for _, theirs in names if theirs not in state]
    if missing:
        raise UnsupportedCheckpoint(f"{where}: the weights lack {len(missing)} tensor(s) T5 needs: {_list(missing)}")
    # copies of the shared embedding some versions save: they must be copies
    copies = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
    if config.tie_embeddings:
        copies.append("lm_head.weight")
    for key in copies:
        if key in state and not torch.equal(state[key], shared):
            why = (" (a scaled output layer with its own weights: config.json's tie_word_embeddings / "
                   "scale_decoder_outputs say the output layer is the embedding)") if key == "lm_head.weight" else ""
            raise UnsupportedCheckpoint(f"{where}: {key} differs from shared.weight{why}; attnkit's T5 shares it")
    wanted = {theirs for _, theirs in names} | set(copies)
    unexpected = sorted(k for k in state if k not in wanted)
    if unexpected:
        raise UnsupportedCheckpoint(f"{where}: {len(unexpected)} tensor(s) have no place in T5: {_list(unexpected)}")

    with torch.device("meta"):
        model = T5(config)
    ours = {o: state[t].to(dtype) for o, t in names}
    if config.tie_embeddings:
        ours["lm_head.weight"] = ours["embed.weight"]
    model.load_state_dict(ours, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight  # assign=True made two parameters; tie them again
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"internal: parameters left unloaded: {left}")
    return model.eval()


def to_t5(model: T5) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json dict, state dict) of a Hugging Face ``T5ForConditionalGeneration`` equal to ``model``."""
    c = model.config
    state = model.state_dict()
    hf_state = {theirs: state[ours] for ours, theirs in t5_names(c)}
    config = {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "vocab_size": c.vocab_size,
        "d_model": c.d_model, "d_kv": c.d_kv, "d_ff": c.d_ff, "num_layers": c.n_layers,
        "num_decoder_layers": c.n_decoder_layers or c.n_layers, "num_heads": c.n_heads,
        "relative_attention_num_buckets": c.relative_attention_num_buckets,
        "relative_attention_max_distance": c.relative_attention_max_distance, "dropout_rate": c.dropout,
        "layer_norm_epsilon": c.layer_norm_eps, "initializer_factor": 1.0, "feed_forward_proj": c.feed_forward,
        "is_encoder_decoder": True, "use_cache": True, "pad_token_id": c.pad_id, "eos_token_id": c.eos_id,
        "decoder_start_token_id": c.decoder_start_id,
        # the scaling of the decoder output, as older (tie_word_embeddings) and newer transformers read it
        "tie_word_embeddings": c.tie_embeddings, "scale_decoder_outputs": c.tie_embeddings,
    }
    return config, hf_state


def save_t5(model: T5, folder: str | Path) -> Path:
    """Write ``model`` as a Hugging Face folder (``config.json`` + ``model.safetensors``) that
    ``transformers.T5ForConditionalGeneration.from_pretrained`` loads to the same outputs. Returns the folder."""
    from safetensors.torch import save_file

    if not isinstance(model, T5):
        raise TypeError(f"save_t5 writes attnkit's T5, got {type(model).__name__}")
    config, state = to_t5(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config["torch_dtype"] = str(state["shared.weight"].dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder
