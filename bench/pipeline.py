"""Pipeline benchmark: orchestration + tracking overhead, cached rerun, prepare_data throughput.

    python bench/pipeline.py                      # everything, 1 GB prepare_data input
    python bench/pipeline.py --size-mb 20         # smoke run
    python bench/pipeline.py --skip-flow --size-mb 1024

1. The default example through the Prefect flow (with MLflow tracking, registry and promotion)
   vs the same stage functions called directly (no Prefect, no MLflow), both in this process,
   each in a fresh project folder. The Prefect API is started once before timing (the ephemeral
   server's start is reported on its own row), so the difference is per-run overhead.
2. The cached rerun of the same flow (every stage served from the cache but the promotion gate).
   With ``--cli``: also ``trainflow run`` twice in new processes (includes the server start).
3. prepare_data on a generated parquet of ``--size-mb`` (float32 features, int label):
   rows/s and MB/s of input.
Prints a markdown table (paste it into bench/RESULTS.md with the CPU model).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
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


def bench_direct(overrides: list[str], base: Path) -> tuple[float, dict[str, float]]:
    """The stage functions without Prefect or MLflow."""
    from flows.config import load_config
    from tasks import evaluate as E
    from tasks import export as X
    from tasks import train as T
    from tasks.prepare_data import prepare

    cfg = load_config(REPO / "configs" / "default.yaml", overrides)
    root = _fresh_project(base, "direct") / "stages"
    t0 = time.perf_counter()
    data = prepare(cfg.data, root / "prepare_data")
    key = T.stage_key(data, cfg.model, cfg.trainer)
    trained = T.fit(data, cfg, root / "train" / key, key, track=False)
    report = E.run_evaluation(trained, data, cfg, "direct", track=False)
    X.run_export(trained, cfg, root / "export", "direct")
    return time.perf_counter() - t0, report.metrics


def bench_flow(overrides: list[str], base: Path) -> dict[str, float]:
    from flows.config import load_config

    cfg = load_config(REPO / "configs" / "default.yaml", overrides)
    _fresh_project(base, "warmup")
    t0 = time.perf_counter()
    from prefect import flow

    from flows.pipeline import training_pipeline  # noqa: F401  (imports prefect)

    @flow
    def warmup() -> int:
        return 1

    warmup()  # starts the ephemeral API
    out = {"prefect API start (ephemeral, once per process)": time.perf_counter() - t0}
    _fresh_project(base, "flow")
    t0 = time.perf_counter()
    first = training_pipeline(cfg)
    out["flow, first run"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = training_pipeline(cfg)
    out["flow, cached rerun"] = time.perf_counter() - t0
    states = {k: v.state for k, v in second.stages.items()}
    assert states["train"] == "Cached", states
    out["_acc"] = first.metrics.get("test_acc", float("nan"))
    return out


def bench_cli(overrides: list[str], base: Path) -> dict[str, float]:
    proj = base / "cli"
    proj.mkdir()
    env = {**os.environ, "TRAINFLOW_PROJECT_DIR": str(proj),
           "MLFLOW_TRACKING_URI": f"sqlite:///{proj}/.trainflow/mlflow.db"}
    env.pop("PREFECT_HOME", None)
    exe = str(Path(sys.executable).parent / "trainflow")
    args = [exe, "run"] + [a for o in overrides for a in ("--set", o)]
    out = {}
    for label in ("`trainflow run`, cold (new process, fresh home)", "`trainflow run`, cached"):
        t0 = time.perf_counter()
        subprocess.run(args, env=env, cwd=proj, check=True, capture_output=True)
        out[label] = time.perf_counter() - t0
    return out


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
    from flows.config import DataConfig
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
    ap.add_argument("--skip-flow", action="store_true")
    ap.add_argument("--skip-prepare", action="store_true")
    ap.add_argument("--cli", action="store_true", help="also time `trainflow run` twice")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="trainflow-bench-"))
    os.environ.setdefault("PREFECT_HOME", str(base / "prefect-home"))
    (base / "prefect-home").mkdir(exist_ok=True)
    rows: list[tuple[str, str]] = []
    try:
        if not args.skip_flow:
            direct, metrics = bench_direct(args.overrides, base)
            flow = bench_flow(args.overrides, base)
            acc = flow.pop("_acc")
            rows.append(("stages called directly (no Prefect, no MLflow)", f"{direct:.2f} s"))
            for k, v in flow.items():
                rows.append((k, f"{v:.2f} s"))
            over = flow["flow, first run"] - direct
            rows.append(("orchestration + tracking overhead",
                         f"{over:+.2f} s ({100 * over / direct:+.0f}%)"))
            rows.append(("test accuracy (direct / flow)",
                         f"{metrics.get('test_acc', float('nan')):.4f} / {acc:.4f}"))
            if args.cli:
                for k, v in bench_cli(args.overrides, base).items():
                    rows.append((k, f"{v:.2f} s"))
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
