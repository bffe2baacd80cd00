"""Hugging Face checkpoints: BERT-family encoders and Llama-family causal LMs, in and out.

A Hugging Face model folder holds ``config.json`` and the weights in safetensors (``model.safetensors``
or shards listed in ``model.safetensors.index.json``); a Llama-family model may instead come as one
GGUF file (read by :mod:`attnkit.interop.gguf`). :func:`load_pretrained` maps either onto
:class:`~attnkit.models.TransformerEncoder` (``model_type`` "bert") or
:class:`~attnkit.models.TransformerLM` (``model_type`` "llama"); :func:`save_pretrained` writes a
folder that ``transformers.AutoModel``/``AutoModelForCausalLM`` load back to the same outputs.

Loading never executes code from the checkpoint: only JSON and safetensors (or GGUF) are read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..models import TransformerEncoder, TransformerEncoderConfig, TransformerLM, TransformerLMConfig
from .errors import UnsupportedCheckpoint

SUPPORTED_MODEL_TYPES = {"bert": "TransformerEncoder", "llama": "TransformerLM"}

# Hugging Face activation names <-> attnkit's
_HF_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu",
                   "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_TO_HF_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}


# ----------------------------------------------------------------------------------------------- files


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise UnsupportedCheckpoint(
            f"{folder} has no config.json: a Hugging Face model folder needs config.json and "
            "model.safetensors (or pass gguf_file= for a GGUF file)"
        )
    return json.loads(path.read_text())


def read_safetensors(folder: Path) -> dict[str, Tensor]:
    """All tensors of the folder's safetensors weights (one file, or the shards of an index)."""
    from safetensors.torch import load_file

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(load_file(str(folder / shard)))
        return state
    others = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".h5", ".msgpack"))
    hint = (f"; found {', '.join(others)}, which attnkit does not read (pickle-based formats can run code): "
            "convert them to safetensors first") if others else ""
    raise UnsupportedCheckpoint(f"{folder} has no model.safetensors or model.safetensors.index.json{hint}")


# ------------------------------------------------------------------------------------------------ BERT


def bert_config(hf: dict[str, Any]) -> TransformerEncoderConfig:
    """attnkit's encoder config for a Hugging Face ``BertConfig`` dict."""
    _need(hf, "bert", "vocab_size", "hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size")
    _require(hf, "bert", "position_embedding_type", "absolute", ("absolute", None))
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise UnsupportedCheckpoint("BERT as a decoder (is_decoder / add_cross_attention) is not supported")
    act = hf.get("hidden_act", "gelu")
    if act not in _HF_ACTIVATIONS:
        raise UnsupportedCheckpoint(
            f"bert: hidden_act {act!r} is not supported; attnkit has {', '.join(sorted(_HF_ACTIVATIONS))}"
        )
    return TransformerEncoderConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_heads=hf["num_attention_heads"],
        n_layers=hf["num_hidden_layers"], d_ff=hf["intermediate_size"],
        max_len=hf.get("max_position_embeddings", 512), dropout=hf.get("hidden_dropout_prob", 0.1),
        positional="learned", n_token_types=hf.get("type_vocab_size", 2), embed_norm=True,
        norm_first=False, norm_eps=hf.get("layer_norm_eps", 1e-12), activation=_HF_ACTIVATIONS[act],
        pad_id=hf.get("pad_token_id"),
    )


def bert_names(c: TransformerEncoderConfig) -> list[tuple[str, str]]:
    """(attnkit name, Hugging Face ``BertModel`` name) for every parameter."""
    names = [
        ("embed.token.weight", "embeddings.word_embeddings.weight"),
        ("embed.position.weight", "embeddings.position_embeddings.weight"),
        ("embed.norm.weight", "embeddings.LayerNorm.weight"),
        ("embed.norm.bias", "embeddings.LayerNorm.bias"),
    ]
    if c.n_token_types:
        names.append(("embed.token_type.weight", "embeddings.token_type_embeddings.weight"))
    parts = {
        "self_attn.q_proj": "attention.self.query", "self_attn.k_proj": "attention.self.key",
        "self_attn.v_proj": "attention.self.value", "self_attn.out_proj": "attention.output.dense",
        "self_attn_norm": "attention.output.LayerNorm", "ff.up": "intermediate.dense",
        "ff.down": "output.dense", "ff_norm": "output.LayerNorm",
    }
    for i in range(c.n_layers):
        for ours, theirs in parts.items():
            for p in ("weight", "bias"):
                names.append((f"blocks.{i}.{ours}.{p}", f"encoder.layer.{i}.{theirs}.{p}"))
    return names


def _bert_normalize(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip a task model's ``bert.`` prefix and rename the old gamma/beta of LayerNorm."""
    if any(k.startswith("bert.") for k in state):
        state = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}
    out = {}
    for k, v in state.items():
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[k] = v
    return out


def _bert_ignored(name: str) -> bool:
    # the pooler and task heads are not part of the encoder; position_ids is a constant buffer
    return name.startswith(("pooler.", "cls.", "classifier.", "qa_outputs.")) or name.endswith("position_ids")


def to_bert(model: TransformerEncoder) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json dict, state dict) of a Hugging Face ``BertModel`` equal to ``model``."""
    c = model.config
    problems = []
    if c.norm_first:
        problems.append("norm_first=True (BERT is post-norm: norm_first=False)")
    if not c.embed_norm:
        problems.append("embed_norm=False (BERT normalizes the embeddings)")
    if c.positional != "learned":
        problems.append(f"positional={c.positional!r} (BERT learns positions: 'learned')")
    if c.activation not in _TO_HF_ACTIVATIONS:
        problems.append(f"activation={c.activation!r}")
    if problems:
        raise UnsupportedCheckpoint("this encoder has no BERT equivalent: " + "; ".join(problems))
    state = model.state_dict()
    hf_state = {theirs: state[ours] for ours, theirs in bert_names(c)}
    if not c.n_token_types:
        # BERT always adds a token-type embedding; a zero one adds nothing
        hf_state["embeddings.token_type_embeddings.weight"] = state["embed.token.weight"].new_zeros(1, c.d_model)
    config = {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": c.vocab_size,
        "hidden_size": c.d_model, "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
        "intermediate_size": c.d_ff, "hidden_act": _TO_HF_ACTIVATIONS[c.activation],
        "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.dropout,
        "max_position_embeddings": c.max_len, "type_vocab_size": max(c.n_token_types, 1),
        "layer_norm_eps": c.norm_eps, "position_embedding_type": "absolute",
        "pad_token_id": c.pad_id if c.pad_id is not None else 0, "initializer_range": 0.02,
    }
    return config, hf_state


# ----------------------------------------------------------------------------------------------- Llama


def llama_config(hf: dict[str, Any]) -> TransformerLMConfig:
    """attnkit's LM config for a Hugging Face ``LlamaConfig`` dict."""
    _need(hf, "llama", "vocab_size", "hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedCheckpoint(f"llama: hidden_act {act!r} is not supported (attnkit's SwiGLU uses silu)")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise UnsupportedCheckpoint(
            f"llama: rotary scaling {rope_type!r} is not supported (only plain rotary, rope_type 'default')"
        )
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    attention_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if attention_bias != mlp_bias:
        raise UnsupportedCheckpoint(
            f"llama: attention_bias={attention_bias} with mlp_bias={mlp_bias} is not supported "
            "(attnkit's bias option covers both)"
        )
    if hf.get("sliding_window"):
        raise UnsupportedCheckpoint("llama: sliding-window attention is not supported")
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d_model // n_heads
    return TransformerLMConfig(
        vocab_size=hf["vocab_size"], d_model=d_model, n_heads=n_heads, n_layers=hf["num_hidden_layers"],
        d_ff=hf["intermediate_size"], max_len=hf.get("max_position_embeddings", 2048),
        dropout=float(hf.get("attention_dropout", 0.0)), positional="rotary", rotary_base=float(theta),
        norm="rms", norm_first=True, norm_eps=hf.get("rms_norm_eps", 1e-6), activation="swiglu",
        bias=attention_bias, d_head=None if head_dim * n_heads == d_model else head_dim,
        n_kv_heads=hf.get("num_key_value_heads", n_heads), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def llama_names(c: TransformerLMConfig) -> list[tuple[str, str]]:
    """(attnkit name, Hugging Face ``LlamaForCausalLM`` name) for every parameter."""
    names = [("embed.token.weight", "model.embed_tokens.weight"), ("norm.weight", "model.norm.weight")]
    if not c.tie_embeddings:
        names.append(("lm_head.weight", "lm_head.weight"))
    parts = {
        "self_attn.q_proj": "self_attn.q_proj", "self_attn.k_proj": "self_attn.k_proj",
        "self_attn.v_proj": "self_attn.v_proj", "self_attn.out_proj": "self_attn.o_proj",
        "ff.gate": "mlp.gate_proj", "ff.up": "mlp.up_proj", "ff.down": "mlp.down_proj",
    }
    for i in range(c.n_layers):
        for ours, theirs in parts.items():
            names.append((f"blocks.{i}.{ours}.weight", f"model.layers.{i}.{theirs}.weight"))
            if c.bias:
                names.append((f"blocks.{i}.{ours}.bias", f"model.layers.{i}.{theirs}.bias"))
        names.append((f"blocks.{i}.self_attn_norm.weight", f"model.layers.{i}.input_layernorm.weight"))
        names.append((f"blocks.{i}.ff_norm.weight", f"model.layers.{i}.post_attention_layernorm.weight"))
    return names


def _llama_normalize(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A bare ``LlamaModel`` saves without the ``model.`` prefix."""
    if not any(k.startswith("model.") for k in state):
        state = {(k if k.startswith("lm_head.") else f"model.{k}"): v for k, v in state.items()}
    return state


def _llama_ignored(name: str) -> bool:
    return name.endswith("rotary_emb.inv_freq")


def to_llama(model: TransformerLM) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json dict, state dict) of a Hugging Face ``LlamaForCausalLM`` equal to ``model``."""
    c = model.config
    problems = []
    for name, want in (("positional", "rotary"), ("norm", "rms"), ("activation", "swiglu"), ("norm_first", True)):
        if getattr(c, name) != want:
            problems.append(f"{name}={getattr(c, name)!r} (Llama has {want!r})")
    if problems:
        raise UnsupportedCheckpoint("this language model has no Llama equivalent: " + "; ".join(problems))
    state = model.state_dict()
    hf_state = {theirs: state[ours] for ours, theirs in llama_names(c)}
    head_dim = c.d_head or c.d_model // c.n_heads
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
        "hidden_size": c.d_model, "intermediate_size": c.d_ff, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads or c.n_heads,
        "head_dim": head_dim, "hidden_act": "silu", "max_position_embeddings": c.max_len,
        "rms_norm_eps": c.norm_eps, "rope_theta": c.rotary_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rotary_base},
        "attention_bias": c.bias, "mlp_bias": c.bias, "attention_dropout": c.dropout,
        "tie_word_embeddings": c.tie_embeddings, "initializer_range": 0.02, "use_cache": True,
    }
    return config, hf_state


# ------------------------------------------------------------------------------------------- the API

class _Family(NamedTuple):
    """How one Hugging Face ``model_type`` maps onto attnkit."""

    make_config: Callable[[dict], Any]  # HF config.json -> attnkit config (unsupported options raise)
    make_names: Callable[[Any], list[tuple[str, str]]]  # attnkit config -> (our name, their name) pairs
    normalize: Callable[[dict], dict]  # HF state dict -> the same with their naming variants unified
    ignored: Callable[[str], bool]  # HF tensors with no place in attnkit that may be dropped silently
    cls: type[nn.Module]  # the attnkit model class


_FAMILIES = {
    "bert": _Family(bert_config, bert_names, _bert_normalize, _bert_ignored, TransformerEncoder),
    "llama": _Family(llama_config, llama_names, _llama_normalize, _llama_ignored, TransformerLM),
}


def _need(hf, family, *keys):
    missing = [k for k in keys if k not in hf]
    if missing:
        raise UnsupportedCheckpoint(f"{family}: config.json lacks {', '.join(missing)}")


def _require(hf, family, key, default, allowed):
    value = hf.get(key, default)
    if value not in allowed:
        raise UnsupportedCheckpoint(f"{family}: {key}={value!r} is not supported (supported: {allowed})")


def _family(hf_config: dict[str, Any], path, expect):
    model_type = hf_config.get("model_type")
    if model_type not in _FAMILIES:
        raise UnsupportedCheckpoint(
            f"model_type {model_type!r} (architectures {hf_config.get('architectures')}) is not supported; "
            f"attnkit loads: " + ", ".join(f"{k} -> {v}" for k, v in SUPPORTED_MODEL_TYPES.items())
        )
    family = _FAMILIES[model_type]
    if expect is not None and family.cls is not expect:
        name = family.cls.__name__
        raise UnsupportedCheckpoint(
            f"{path} is a {model_type} checkpoint, which loads as {name}, not {expect.__name__}; "
            f"load it with expect={name} (or expect=None)"
        )
    return model_type, family


def _resolve(path: str | Path, gguf_file: str | Path | None) -> tuple[Path, Path | None]:
    path = Path(path)
    if gguf_file is not None:
        gguf_path = Path(gguf_file)
        if not gguf_path.is_absolute() and not gguf_path.is_file():
            gguf_path = path / gguf_path
        return path, gguf_path
    if path.is_file():
        if path.suffix == ".gguf":
            return path.parent, path
        raise UnsupportedCheckpoint(f"{path} is a file; pass a model folder, or a .gguf file")
    if not path.is_dir():
        raise FileNotFoundError(f"no model folder or file at {path}")
    return path, None


def load_pretrained(
    path: str | Path, gguf_file: str | Path | None = None, expect: type[nn.Module] | None = None, *,
    dtype: torch.dtype = torch.float32,
) -> TransformerEncoder | TransformerLM:
    """Build an attnkit model from a Hugging Face folder or a GGUF file, in eval mode.

    Args:
        path: a folder with ``config.json`` and safetensors weights, or a ``.gguf`` file.
        gguf_file: a GGUF file inside ``path`` (or a path to one), as in ``transformers``.
        expect: the model class wanted; a checkpoint of the other kind raises ``UnsupportedCheckpoint``.
        dtype: dtype of the parameters (GGUF tensors are dequantized to it).

    Returns:
        A :class:`TransformerEncoder` for ``model_type`` "bert" or a :class:`TransformerLM` for "llama"
        (GGUF files of architecture llama).

    Raises:
        UnsupportedCheckpoint: an architecture, option or file format attnkit cannot represent; the
            message names it.
    """
    folder, gguf_path = _resolve(path, gguf_file)
    if gguf_path is not None:
        from .gguf import read_gguf

        hf_config, hf_state = read_gguf(gguf_path)  # checks the metadata before dequantizing anything
        model_type, family = _family(hf_config, path, expect)
        config = family.make_config(hf_config)
    else:
        hf_config = read_config(folder)
        model_type, family = _family(hf_config, path, expect)
        config = family.make_config(hf_config)  # unsupported options are reported before the weights are read
        hf_state = read_safetensors(folder)
    cls = family.cls
    names = family.make_names(config)
    hf_state = family.normalize(hf_state)
    wanted = {theirs for _, theirs in names}
    missing = [theirs for _, theirs in names if theirs not in hf_state]
    if missing:
        raise UnsupportedCheckpoint(
            f"{path}: the weights lack {len(missing)} tensor(s) the {model_type} model needs: "
            + ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
        )
    unexpected = [k for k in hf_state if k not in wanted and not family.ignored(k)]
    if model_type == "llama" and config.tie_embeddings:
        unexpected = [k for k in unexpected if k != "lm_head.weight"]  # some tied checkpoints save it anyway
    if unexpected:
        raise UnsupportedCheckpoint(
            f"{path}: {len(unexpected)} tensor(s) have no place in attnkit's {cls.__name__}: "
            + ", ".join(unexpected[:6]) + (" ..." if len(unexpected) > 6 else "")
        )

    with torch.device("meta"):
        model = cls(config)
    state = {ours: hf_state[theirs].to(dtype) for ours, theirs in names}
    tied = model_type == "llama" and config.tie_embeddings
    if tied:
        state["lm_head.weight"] = state["embed.token.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if tied:
        model.lm_head.weight = model.embed.token.weight  # assign=True made two parameters; tie them again
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"internal: parameters left unloaded: {left}")
    return model.eval()


def save_pretrained(model: nn.Module, path: str | Path, tokenizer=None) -> Path:
    """Write ``model`` as a Hugging Face folder (``config.json`` + ``model.safetensors``).

    A :class:`TransformerEncoder` becomes a ``BertModel`` (without BERT's pooler, which attnkit's encoder
    lacks: transformers initializes it afresh), a :class:`TransformerLM` a ``LlamaForCausalLM``.
    ``tokenizer`` (a ``tokenizers.Tokenizer``), if given, is saved as ``tokenizer.json``.

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    if isinstance(model, TransformerEncoder):
        config, state = to_bert(model)
    elif isinstance(model, TransformerLM):
        config, state = to_llama(model)
    else:
        raise UnsupportedCheckpoint(
            f"save_pretrained writes TransformerEncoder (as BERT) or TransformerLM (as Llama), "
            f"not {type(model).__name__}"
        )
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config["torch_dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(str(folder / "tokenizer.json"))
    return folder

