#!/usr/bin/env python3
"""onnxruntime on the same model and the same prepared inputs as tract: the reference.

usage: ort_reference.py MODEL.onnx INPUTS.f32 WIDTH HEIGHT THREADS [SPIN]

INPUTS.f32 holds N NCHW float32 tensors [1,3,H,W] back to back, written by benches/runner.rs
from the frames the runner analysed. Prints one JSON line: ms per frame (mean, p50) and CPU ms
per frame (all threads). SPIN 0 turns the worker threads' spinning off, as vap's engine runs;
onnxruntime's default (1) spins.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    model, inputs, width, height, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    spin = sys.argv[6] if len(sys.argv) > 6 else "1"
    frames = np.fromfile(inputs, dtype=np.float32).reshape(-1, 1, 3, height, width)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for frame in frames[:5]:  # warm-up, as tract's plan is built before timing
        session.run(None, {name: frame})
    times = []
    cpu = time.process_time()
    for frame in frames:
        start = time.perf_counter()
        session.run(None, {name: frame})
        times.append((time.perf_counter() - start) * 1000.0)
    cpu_ms = (time.process_time() - cpu) * 1000.0 / len(times)
    times.sort()
    print(json.dumps({"frames": len(times), "mean_ms": sum(times) / len(times), "p50_ms": times[len(times) // 2], "cpu_ms": cpu_ms, "version": ort.__version__}))


if __name__ == "__main__":
    main()
