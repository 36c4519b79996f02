"""Saving a fine-tuned model in the layout it came from, and the trainer's state beside it for --resume.

A saved model is the source checkpoint's directory (tokenizer, sentence-transformers files, prompts,
config.json) with new weights: the encoder's in the source's own layout and names (`convert.write_back`:
the official "new" layout for GTE, BERT's or XLM-R's for those), the Dense modules' in their folders.
So gte, sentence-transformers and transformers (through the Auto classes, for GTE) load it as they
loaded the source. Checkpoints go to OUTPUT/checkpoints/step-N, written beside and renamed into place,
so a run killed while saving leaves the previous checkpoint whole.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .. import convert

STATE = "trainer.pt"  # optimizer, schedule, step, random state, settings
CHECKPOINTS = "checkpoints"
# Weights the new ones replace, and exports of the old weights that would be stale beside them.
STALE = ("model.safetensors", "model.safetensors.index.json", "model-*.safetensors", "pytorch_model*.bin", "*.onnx",
         "onnx", "openvino", CHECKPOINTS, ".cache", STATE)  # fmt: skip


def save_model(model: nn.Module, source: Path, out: Path, extra: dict[Path, dict[str, torch.Tensor]] | None = None) -> Path:
    """The files of the checkpoint `source` (the one the model was loaded from, or saved from) with the model's
    current weights in its layout, and each `extra` state dict as model.safetensors in its folder (relative to the
    checkpoint: a Dense module's); written to `out`, its files replacing their namesakes there."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns(*STALE))
    weights = convert.write_back(str(source), dict(model.named_parameters()), model.base_model_prefix)
    _save(weights, partial / "model.safetensors")
    for folder, state in (extra or {}).items():
        (partial / folder / "pytorch_model.bin").unlink(missing_ok=True)
        _save(state, partial / folder / "model.safetensors")
    _replace(partial, out)
    return out


def _save(state: dict[str, torch.Tensor], file: Path) -> None:
    save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, str(file), metadata={"format": "pt"})


def save_checkpoint(save: Callable[[Path], None], output: Path, step: int, state: dict[str, Any]) -> Path:
    """OUTPUT/checkpoints/step-N: the model (`save(folder)` writes it, loadable) and the trainer's state; earlier
    checkpoints removed."""
    folder = output / CHECKPOINTS / f"step-{step}"
    save(folder)
    torch.save(state, folder / f"{STATE}.partial")
    os.replace(folder / f"{STATE}.partial", folder / STATE)
    for older in (output / CHECKPOINTS).glob("step-*"):
        if older != folder and older.is_dir():
            shutil.rmtree(older)
    return folder


def latest_checkpoint(output: Path) -> Path | None:
    """The newest whole checkpoint under OUTPUT/checkpoints (its state file is written last), or None."""
    found = [p for p in (output / CHECKPOINTS).glob("step-*") if (p / STATE).is_file() and p.name[5:].isdigit()]
    return max(found, key=lambda p: int(p.name[5:]), default=None)


def load_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / STATE, map_location="cpu", weights_only=True)


def _replace(partial: Path, out: Path) -> None:
    """`partial`'s entries moved into `out`, each replacing its namesake; anything else in `out` stays."""
    out.mkdir(parents=True, exist_ok=True)
    for entry in partial.iterdir():
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    partial.rmdir()
