"""Whether torch.export is tracing the model (for the ONNX export, `gte.export`).

Under torch.export the model skips what a graph cannot hold: value checks that read the data, tables
cached outside the graph, CPU row chunking over a symbolic row count. torch < 2.6 has no such flag
(and no ONNX export here): it never traces.
"""

from __future__ import annotations

import torch

is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)
