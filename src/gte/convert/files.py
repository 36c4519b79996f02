"""Reading a checkpoint's config.json and weights (directory or hub id) for a conversion."""

from __future__ import annotations

import json
from typing import Any

import torch
from safetensors.torch import load_file

HUB_KEYS = ("cache_dir", "revision", "token", "local_files_only", "subfolder")  # from_pretrained keywords for the hub


class ConversionError(ValueError):
    """A checkpoint uses something the target layout cannot express exactly."""


def read_config(path: str, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """config.json as a dict, or None when there is none."""
    from transformers.utils import cached_file

    file = cached_file(path, "config.json", _raise_exceptions_for_missing_entries=False, **_hub(kwargs))
    if file is None:
        return None
    with open(file) as f:
        return json.load(f)


def read_weights(path: str, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor of model.safetensors, or of the shards its index names."""
    from transformers.utils import cached_file

    hub = _hub(kwargs)
    index = cached_file(path, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False, **hub)
    if index is None:
        single = cached_file(path, "model.safetensors", _raise_exceptions_for_missing_entries=False, **hub)
        if single is None:
            raise ConversionError(
                f"{path} has no model.safetensors: gte reads safetensors weights (convert a pytorch_model.bin with "
                "transformers: from_pretrained(...).save_pretrained(dir) writes model.safetensors)"
            )
        files = [single]
    else:
        with open(index) as f:
            files = [cached_file(path, shard, **hub) for shard in sorted(set(json.load(f)["weight_map"].values()))]
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update(load_file(file))
    return weights


def _hub(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in HUB_KEYS if k in kwargs}
