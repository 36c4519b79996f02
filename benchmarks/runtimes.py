"""ONNX Runtime's and OpenVINO's CPU sessions on an ONNX file, as latency.py, onnx_bench.py and contention.py run them.

Apart from the scripts because it loads neither torch nor gte: contention.py's runtime processes import only this,
the runtime and the tokenizer, as the runtime's user does (and start in a fraction of a second, not four).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def ort_session(model_file: Path, threads: int) -> Callable[[dict], dict]:
    """ONNX Runtime on the CPU: feeds -> {output name: array}."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(None, feeds)))


def openvino_session(model_file: Path, threads: int, precision: str) -> Callable[[dict], dict]:
    """OpenVINO's CPU plugin at `precision` ("f32" or "bf16"), the latency hint, one stream: feeds -> outputs (the
    request's buffers, which its next call overwrites: copy what you keep)."""
    import openvino

    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    compiled = openvino.Core().compile_model(str(model_file), "CPU", config)
    request = compiled.create_infer_request()
    return lambda feeds: {o.get_any_name(): v for o, v in request.infer(feeds).items()}  # the request's own buffers
