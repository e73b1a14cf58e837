"""Inference latency on CPU: eager torch vs TorchScript vs onnxruntime, 1 thread and default.

Exports each model once (trainer.export.to_onnx / to_torchscript, checked with verify), then
times single calls at each batch size with each backend, first with 1 intra-op thread, then
with the default thread count, in one run. Prints a Markdown table (median and p90 per call,
throughput at the median) for bench/RESULTS.md.

    .venv/bin/python bench/export.py                     # the figures (alone on the machine)
    .venv/bin/python bench/export.py --iters 5 --warmup 1 --models mlp   # smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import onnxruntime as ort
import torch
from torch import Tensor, nn

from trainer.export import to_onnx, to_torchscript, verify


class MLP(nn.Module):
    """The shape of the pipeline's default model: 8x8 digits flattened -> 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.1),
            nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10),
        )  # fmt: skip
        self.example_input_array = torch.randn(2, 64)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CNN(nn.Module):
    """A small conv net with batchnorm on 1x28x28 images."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Linear(32 * 7 * 7, 10)
        self.example_input_array = torch.randn(2, 1, 28, 28)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN}


def _time(fn: Callable[[], object], iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # 0 = onnxruntime's default
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run(models: list[str], batch_sizes: list[int], iters: int, warmup: int) -> list[dict]:
    default_threads = torch.get_num_threads()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            torch.manual_seed(0)
            model = MODELS[name]().eval()
            onnx_path = Path(tmp) / f"{name}.onnx"
            ts_path = Path(tmp) / f"{name}.pt"
            t0 = time.perf_counter()
            info = to_onnx(model, onnx_path)
            t_onnx = time.perf_counter() - t0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                t0 = time.perf_counter()
                ts = to_torchscript(model, ts_path)
                t_ts = time.perf_counter() - t0
            report = verify(model, onnx_path=onnx_path, torchscript_path=ts_path)
            print(
                f"{name}: {sum(p.numel() for p in model.parameters()):,} params; "
                f"ONNX ({info.exporter}, opset {info.opset}) {t_onnx:.2f} s, "
                f"TorchScript {t_ts:.2f} s; parity max abs: onnx {report.max_abs('onnx'):.2g}, "
                f"torchscript {report.max_abs('torchscript'):.2g}"
            )
            for label, threads in (("1", 1), (f"default ({default_threads})", default_threads)):
                torch.set_num_threads(threads)
                sess = _session(onnx_path, 1 if threads == 1 else 0)
                in_name = sess.get_inputs()[0].name
                for bs in batch_sizes:
                    shape = list(model.example_input_array.shape)
                    shape[0] = bs
                    x = torch.randn(shape)
                    xn = x.numpy()
                    with torch.no_grad():
                        backends = {
                            "eager": lambda m=model, x=x: m(x),
                            "torchscript": lambda m=ts, x=x: m(x),
                            "onnxruntime": lambda s=sess, f={in_name: xn}: s.run(None, f),
                        }
                        for backend, fn in backends.items():
                            # TorchScript's profiling executor optimizes after a few calls.
                            w = max(warmup, 3) if backend == "torchscript" else warmup
                            times = sorted(_time(fn, iters, w))
                            med = statistics.median(times)
                            p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
                            rows.append({
                                "model": name, "threads": label, "batch": bs,
                                "backend": backend, "median_ms": med * 1e3, "p90_ms": p90 * 1e3,
                                "per_s": bs / med,
                            })  # fmt: skip
            torch.set_num_threads(default_threads)
    return rows


def print_table(rows: list[dict]) -> None:
    print()
    print("| model | threads | batch | backend | median ms | p90 ms | samples/s | vs eager |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    eager = {(r["model"], r["threads"], r["batch"]): r["median_ms"] for r in rows
             if r["backend"] == "eager"}  # fmt: skip
    for r in rows:
        speedup = eager[(r["model"], r["threads"], r["batch"])] / r["median_ms"]
        print(
            f"| {r['model']} | {r['threads']} | {r['batch']} | {r['backend']} | "
            f"{r['median_ms']:.3f} | {r['p90_ms']:.3f} | {r['per_s']:,.0f} | {speedup:.2f}x |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,cnn", help="comma list of: " + ",".join(MODELS))
    p.add_argument("--batch-sizes", default="1,256")
    p.add_argument("--iters", type=int, default=200, help="timed calls per cell")
    p.add_argument("--warmup", type=int, default=20)
    a = p.parse_args()
    models = [m for m in a.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    print(
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"default threads {torch.get_num_threads()}; {a.iters} timed calls after {a.warmup} "
        "warm-up per cell"
    )
    print_table(run(models, batch_sizes, a.iters, a.warmup))


if __name__ == "__main__":
    main()
