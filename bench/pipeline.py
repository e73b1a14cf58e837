"""Pipeline benchmark: orchestration + tracking overhead, cached rerun, prepare_data throughput.

    python bench/pipeline.py                      # everything, 1 GB prepare_data input
    python bench/pipeline.py --size-mb 20         # smoke run
    python bench/pipeline.py --skip-prepare --cli --repeat 3

1. The default example through the Prefect flow (MLflow tracking with plots, registry,
   promotion, markdown summary) vs the same stage functions called directly (no Prefect, no
   MLflow), each run in a fresh project folder, alternated ``--repeat`` times in one process
   (min and median; the difference of the mins is the overhead). Once-per-process costs are
   paid before timing and reported on their own rows, for both sides alike: a first direct run
   (torch, ONNX exporter imports), Prefect's local API start (as ``trainflow run`` starts it,
   flows/ephemeral.py) and what ``trainflow run`` preloads while the API starts (mlflow
   and the MLflow store: flows/cli.py ``_preload``). A fresh project's
   MLflow store is a copy of the per-machine template (made on its own row if missing).
2. The cached rerun of the same flow (every stage served from the cache but the promotion gate).
   With ``--cli``: ``trainflow run`` in new processes, cold (fresh project and Prefect home) and
   cached (the same project again), which include the API start and every import.
3. prepare_data on a generated parquet of ``--size-mb`` (float32 features, int label):
   rows/s and MB/s of input.
Prints a markdown table (paste it into bench/RESULTS.md with the CPU model).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _fresh_project(base: Path, name: str) -> Path:
    p = base / name
    p.mkdir(parents=True)
    os.environ["TRAINFLOW_PROJECT_DIR"] = str(p)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{p}/.trainflow/mlflow.db"
    return p


def run_direct(cfg, base: Path, name: str) -> tuple[float, dict[str, float]]:  # noqa: ANN001
    """The stage functions without Prefect or MLflow, in a fresh project."""
    from tasks import evaluate as E
    from tasks import export as X
    from tasks import train as T
    from tasks.prepare_data import prepare

    root = _fresh_project(base, name) / "stages"
    t0 = time.perf_counter()
    data = prepare(cfg.data, root / "prepare_data")
    key = T.stage_key(data, cfg.model, cfg.trainer)
    trained = T.fit(data, cfg, root / "train" / key, key, track=False)
    report = E.run_evaluation(trained, data, cfg, "direct", track=False)
    X.run_export(trained, cfg, root / "export", "direct")
    return time.perf_counter() - t0, report.metrics


def bench_flow_vs_direct(overrides: list[str], base: Path, repeat: int) -> list[tuple[str, str]]:
    from flows import ephemeral
    from tasks.config import load_config

    api = ephemeral.start()  # before anything imports prefect, as `trainflow run` does
    cfg = load_config(REPO / "configs" / "default.yaml", overrides)
    rows: list[tuple[str, str]] = []
    if api is not None:
        api.wait()
        rows.append(("prefect API start (fresh home: migrations; once per process)",
                     f"{api.healthy_after:.2f} s"))
    first, _ = run_direct(cfg, base, "direct-first")
    rows.append(("stages called directly, first run in the process (imports)", f"{first:.2f} s"))

    t0 = time.perf_counter()
    from trainer.loggers.mlflow_store import store_template

    had = any(Path(p).is_file() for p in [_template_path()] if p)
    store_template()
    rows.append(("MLflow store template (once per MLflow version and machine)",
                 "cached" if had else f"{time.perf_counter() - t0:.2f} s (made now)"))

    from flows.cli import _preload

    t0 = time.perf_counter()
    from flows.pipeline import training_pipeline

    _fresh_project(base, "preload")
    _preload(cfg)
    rows.append(("what `trainflow run` preloads while the API starts (mlflow, store)",
                 f"{time.perf_counter() - t0:.2f} s"))
    ctx = api.use() if api is not None else contextlib.nullcontext()
    direct: list[float] = []
    flow: list[float] = []
    cached: list[float] = []
    cpu_direct: list[float] = []
    cpu_flow: list[float] = []
    cpu_server: list[float] = []
    accs: tuple[float, float] = (float("nan"), float("nan"))
    with ctx:
        if api is None:  # Prefect starts its own API on the first flow
            _fresh_project(base, "warmup")
            t0 = time.perf_counter()
            from prefect import flow as _flow

            _flow(lambda: 1, name="warmup")()
            rows.append(("prefect API start (Prefect's own, once per process)",
                         f"{time.perf_counter() - t0:.2f} s"))
        for i in range(repeat):
            c0 = time.process_time()
            d, metrics = run_direct(cfg, base, f"direct{i}")
            direct.append(d)
            cpu_direct.append(time.process_time() - c0)
            _fresh_project(base, f"flow{i}")
            c0, s0 = time.process_time(), _server_cpu(api)
            t0 = time.perf_counter()
            res = training_pipeline(cfg)
            flow.append(time.perf_counter() - t0)
            cpu_flow.append(time.process_time() - c0)
            cpu_server.append(_server_cpu(api) - s0)
            t0 = time.perf_counter()
            again = training_pipeline(cfg)
            cached.append(time.perf_counter() - t0)
            states = {k: v.state for k, v in again.stages.items()}
            assert states["train"] == "Cached", states
            accs = (metrics.get("test_acc", float("nan")),
                    res.metrics.get("test_acc", float("nan")))

    def fmt(xs: list[float]) -> str:
        return f"{min(xs):.2f} s (median {statistics.median(xs):.2f}, n={len(xs)})"

    rows.append(("stages called directly (no Prefect, no MLflow)", fmt(direct)))
    rows.append(("flow, fresh project (Prefect + MLflow + registry + promotion)", fmt(flow)))
    rows.append(("flow, cached rerun", fmt(cached)))
    over = min(flow) - min(direct)
    med = statistics.median(f - d for f, d in zip(flow, direct))
    rows.append(("orchestration + tracking overhead (min flow - min direct)",
                 f"{over:+.2f} s ({100 * over / min(direct):+.0f}%); paired median {med:+.2f} s"))
    rows.append(("CPU seconds, this process: direct / flow (+ Prefect API process)",
                 f"{min(cpu_direct):.2f} / {min(cpu_flow):.2f} (+ {min(cpu_server):.2f}) "
                 "(load-independent: the work added)"))
    rows.append(("test accuracy (direct / flow)", f"{accs[0]:.4f} / {accs[1]:.4f}"))
    return rows


def _server_cpu(api) -> float:  # noqa: ANN001
    """CPU seconds used so far by the API server process (0 when Prefect started its own)."""
    if api is None:
        return 0.0
    try:
        fields = Path(f"/proc/{api.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _template_path() -> str | None:
    from trainer.loggers.mlflow_store import _schema_key, cache_dir

    key = _schema_key()
    return str(cache_dir() / f"mlflow-store-{key}.db") if key else None


def bench_cli(overrides: list[str], base: Path, repeat: int) -> list[tuple[str, str]]:
    proj = base / "cli"
    proj.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(TRAINFLOW_PROJECT_DIR=str(proj), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    exe = str(Path(sys.executable).parent / "trainflow")
    args = [exe, "run"] + [a for o in overrides for a in ("--set", o)]

    def once() -> float:
        t0 = time.perf_counter()
        subprocess.run(args, env=env, cwd=proj, check=True, capture_output=True)
        return time.perf_counter() - t0

    cold = once()
    warm = [once() for _ in range(repeat)]
    return [("`trainflow run`, cold (new process, fresh project and Prefect home)",
             f"{cold:.2f} s"),
            ("`trainflow run`, cached (new process, same project)",
             f"{min(warm):.2f} s (median {statistics.median(warm):.2f}, n={len(warm)})")]


def make_parquet(path: Path, size_mb: float, features: int = 32, seed: int = 0) -> int:
    """Write about ``size_mb`` MB of float32 features + an int label; returns the row count."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    bytes_per_row = features * 4 + 8
    rows = max(int(size_mb * 1e6 / bytes_per_row), 1000)
    chunk = 500_000
    schema = pa.schema([*(pa.field(f"f{i}", pa.float32()) for i in range(features)),
                        pa.field("label", pa.int64())])
    with pq.ParquetWriter(path, schema, compression="none") as w:
        done = 0
        while done < rows:
            n = min(chunk, rows - done)
            x = rng.standard_normal((n, features), dtype=np.float32)
            cols = [pa.array(x[:, i]) for i in range(features)]
            cols.append(pa.array(rng.integers(0, 10, n)))
            w.write_table(pa.Table.from_arrays(cols, schema=schema))
            done += n
    return rows


def bench_prepare(size_mb: float, base: Path) -> dict[str, float]:
    from tasks.config import DataConfig
    from tasks.prepare_data import prepare

    src = base / "big.parquet"
    rows = make_parquet(src, size_mb)
    mb = src.stat().st_size / 1e6
    cfg = DataConfig(path=src)
    t0 = time.perf_counter()
    ref = prepare(cfg, base / "big-out")
    dt = time.perf_counter() - t0
    assert sum(s.rows for s in ref.splits.values()) == rows
    return {"rows": rows, "mb": mb, "seconds": dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=1024, help="prepare_data input size")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="config override for the flow/direct comparison (repeatable)")
    ap.add_argument("--repeat", type=int, default=3, help="direct/flow pairs (and cached CLI runs)")
    ap.add_argument("--skip-flow", action="store_true")
    ap.add_argument("--skip-prepare", action="store_true")
    ap.add_argument("--cli", action="store_true", help="also time `trainflow run` (new processes)")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="trainflow-bench-"))
    os.environ["PREFECT_HOME"] = str(base / "prefect-home")
    (base / "prefect-home").mkdir(exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    rows: list[tuple[str, str]] = []
    try:
        if not args.skip_flow:
            if args.cli:  # first: in new processes, before this one holds an API and imports
                rows += bench_cli(args.overrides, base, args.repeat)
            rows += bench_flow_vs_direct(args.overrides, base, args.repeat)
        if not args.skip_prepare:
            p = bench_prepare(args.size_mb, base)
            rows.append((f"prepare_data on {p['mb']:.0f} MB parquet ({p['rows']:,} rows)",
                         f"{p['seconds']:.2f} s: {p['rows'] / p['seconds']:,.0f} rows/s, "
                         f"{p['mb'] / p['seconds']:.1f} MB/s"))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}\n")
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
