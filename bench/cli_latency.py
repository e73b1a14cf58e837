"""How long a person waits for ``trainflow``: wall times of whole CLI processes (issue 14).

Each figure is the median of ``--repeats`` new processes, on the shipped demo config
(configs/default.yaml) in a temporary project folder:

* ``trainflow --help``;
* a cached ``trainflow run`` (every stage served from the cache but the promotion gate);
* a fresh ``trainflow run`` (a new ``data.seed`` each time, so every stage runs again), split
  into the stage time the run reports itself (its summary table's seconds, summed) and the rest
  (interpreter, imports, Prefect's API, flow-run bookkeeping, exit);

in two setups: the embedded default (no servers: Prefect's local API on SQLite, MLflow on
SQLite, all under ``.trainflow/``) and the team stack (``trainflow stack up``: PostgreSQL,
Prefect server, MLflow server; stopped again at the end). Each target's verdict is printed
beside its figure. The export of the demo model per exporter comes from
bench/export_latency.py (``measure_exporters``) when that file is present.

``--ephemeral`` compares, in the embedded setup, our early start of Prefect's local API
(flows/ephemeral.py) with Prefect's own start (``TRAINFLOW_FAST_API=0``).

``--against DIR`` measures another checkout (e.g. ``git worktree add /tmp/base main``) beside
this one, their runs taking turns, so a machine whose load drifts treats both alike: the way
to show a change's effect on a shared machine.

    .venv/bin/python bench/cli_latency.py                  # everything, 5 repeats
    .venv/bin/python bench/cli_latency.py --repeats 3 --no-stack --no-export
    .venv/bin/python bench/cli_latency.py --ephemeral --no-stack --no-export
    .venv/bin/python bench/cli_latency.py --against /tmp/base --repeats 3 --no-export
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "flows.cli"]
STAGES = ("prepare_data", "train", "evaluate", "export", "register", "promote")
# issue 14's targets: (cached wall, fresh overhead beyond the stage time), in seconds
TARGETS = {"embedded": (5.0, 6.0), "stack": (3.0, 3.0)}
ROW = re.compile(r"^\W*(" + "|".join(STAGES) + r")\W+(\w+)\W+([0-9]+\.[0-9]+)\W*$")


def _env(project: Path, extra: dict[str, str] | None = None, repo: Path = REPO) -> dict[str, str]:
    """A user's shell: no Prefect/MLflow/trainflow settings but the project folder; ``repo``'s
    packages are the ones imported."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "TRAINFLOW_"))}
    env.update(TRAINFLOW_PROJECT_DIR=str(project), PYTHONPATH=str(repo), **(extra or {}))
    return env


def _timed(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """(wall seconds, stdout) of one new process; a failure ends the benchmark."""
    t0 = time.perf_counter()
    proc = subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=900)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"trainflow {' '.join(args)} failed ({proc.returncode}):\n"
                 f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def stage_seconds(stdout: str) -> dict[str, tuple[str, float]]:
    """The run's own summary table: stage -> (state, seconds)."""
    out = {}
    for line in stdout.splitlines():
        m = ROW.match(line)
        if m:
            out[m.group(1)] = (m.group(2), float(m.group(3)))
    return out


def _expect(stages: dict[str, tuple[str, float]], fresh: bool) -> float:
    """The run's stage time, after checking it was the kind of run asked for."""
    states = {st for st, _ in stages.values()}
    if fresh and stages.get("train", ("", 0))[0] != "Completed":
        sys.exit(f"expected a fresh run, got {stages}")
    if not fresh and (states - {"Cached", "Completed"} or "Cached" not in states):
        sys.exit(f"expected a cached run, got {stages}")
    return sum(s for _, s in stages.values())


def measure_runs(setups: dict[str, tuple[Path, dict[str, str]]], repeats: int,
                 seed0: int) -> dict[str, dict]:
    """Per setup (project, env): medians of ``repeats`` cached and fresh runs, the setups
    taking turns (a machine whose load drifts treats them alike); a first run fills each."""
    walls: dict[str, dict[str, list[float]]] = {
        name: {"cached": [], "fresh": [], "stage": []} for name in setups}
    firsts = {}
    for name, (project, env) in setups.items():
        wall, out = _timed(["run"], env, project)  # the demo's first run here (new databases)
        firsts[name] = (wall, _expect(stage_seconds(out), fresh=True))
    for _ in range(repeats):
        for name, (project, env) in setups.items():
            wall, out = _timed(["run"], env, project)
            _expect(stage_seconds(out), fresh=False)
            walls[name]["cached"].append(wall)
    for i in range(repeats):
        for name, (project, env) in setups.items():
            wall, out = _timed(["run", "--set", f"data.seed={seed0 + i}"], env, project)
            walls[name]["stage"].append(_expect(stage_seconds(out), fresh=True))
            walls[name]["fresh"].append(wall)
    out = {}
    for name, w in walls.items():
        rest = [f - s for f, s in zip(w["fresh"], w["stage"], strict=True)]
        out[name] = {"first": firsts[name][0], "first_stages": firsts[name][1],
                     "cached": statistics.median(w["cached"]), "cached_all": w["cached"],
                     "fresh": statistics.median(w["fresh"]),
                     "stage": statistics.median(w["stage"]),
                     "rest": statistics.median(rest), "rest_all": rest}
    return out


def measure_help(env: dict[str, str], cwd: Path, repeats: int) -> float:
    return statistics.median(_timed(["--help"], env, cwd)[0] for _ in range(repeats))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def stack(project: Path) -> Iterator[dict[str, str]]:
    """``trainflow stack up`` in ``project`` for the block; its environment lines as a dict."""
    env = _env(project)
    ports = [str(_free_port()) for _ in range(2)]  # not 4200/5000: a stack may be up there
    proc = subprocess.run([*CLI, "stack", "up", "--prefect-port", ports[0],
                           "--mlflow-port", ports[1]],
                          env=env, cwd=project, capture_output=True, text=True, timeout=600)
    try:
        if proc.returncode != 0:
            sys.exit(f"trainflow stack up failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        lines = re.findall(r"^export (\w+)=(\S+)$", proc.stdout, re.M)
        yield dict(lines)
    finally:
        subprocess.run([*CLI, "stack", "down"], env=env, cwd=project, capture_output=True,
                       timeout=300)


def _verdict(value: float, limit: float) -> str:
    return f"{'ok' if value <= limit else 'MISSED'} (<= {limit:g} s)"


def run_rows(setup: str, r: dict, help_s: float | None) -> list[str]:
    cached_t, rest_t = TARGETS[setup.split()[0]]
    rows = []
    if help_s is not None:
        rows.append(f"| {setup} | `trainflow --help` | {help_s:.2f} | |")
    rows += [
        f"| {setup} | first run in a new project (stages {r['first_stages']:.2f}) "
        f"| {r['first']:.2f} | |",
        f"| {setup} | cached `trainflow run` | {r['cached']:.2f} "
        f"| {_verdict(r['cached'], cached_t)} |",
        f"| {setup} | fresh `trainflow run`: wall | {r['fresh']:.2f} | |",
        f"| {setup} | fresh: stage time (the run's own table) | {r['stage']:.2f} | |",
        f"| {setup} | fresh: the rest (wall - stages) | {r['rest']:.2f} "
        f"| {_verdict(r['rest'], rest_t)} |",
    ]
    return rows


def export_rows(repeats: int) -> list[str]:
    """The export of the demo model per exporter, from bench/export_latency.py."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from export_latency import measure_exporters
    except ImportError:  # run from a checkout without bench/export_latency.py
        return ["| export | bench/export_latency.py not present: no export figures | | |"]
    rows = []
    for row in measure_exporters(repeats):
        verdict = ""
        if "target_s" in row:
            verdict = _verdict(row["seconds"], row["target_s"])
        rows.append(f"| export | {row['exporter']} (cold export + verify; warm export "
                    f"{row['export_s']:.2f}, verify {row['verify_s']:.2f}) "
                    f"| {row['seconds']:.2f} | {verdict} |")
    return rows


def ephemeral_rows(base: Path, repeats: int) -> list[str]:
    """Embedded cached/fresh runs with our early API start and with Prefect's own start."""
    modes = {"flows/ephemeral.py": {},
             "Prefect's own (TRAINFLOW_FAST_API=0)": {"TRAINFLOW_FAST_API": "0"}}
    setups = {}
    for i, (label, extra) in enumerate(modes.items()):
        project = base / f"eph-{i}"
        project.mkdir()
        setups[label] = (project, _env(project, extra))
    rows = ["| API start | figure | median s (each run) |", "|---|---|---:|"]
    for label, r in measure_runs(setups, repeats, seed0=100).items():
        rows += [f"| {label} | first run in a new project | {r['first']:.2f} |",
                 f"| {label} | cached run | {r['cached']:.2f} "
                 f"({', '.join(f'{x:.1f}' for x in r['cached_all'])}) |",
                 f"| {label} | fresh run, the rest (wall - stages) | {r['rest']:.2f} "
                 f"({', '.join(f'{x:.1f}' for x in r['rest_all'])}) |"]
    return rows


def _show(rows: list[str]) -> None:
    print("\n".join(rows), flush=True)  # as they come: a later failure keeps them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded rows")
    parser.add_argument("--no-stack", action="store_true", help="skip the team-stack rows")
    parser.add_argument("--no-export", action="store_true", help="skip the export rows")
    parser.add_argument("--against", type=Path, default=None,
                        help="another checkout to measure beside this one, taking turns")
    parser.add_argument("--ephemeral", action="store_true",
                        help="only compare flows/ephemeral.py with Prefect's own API start")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.1f} at start; "
          f"median of {args.repeats} new processes each")
    with tempfile.TemporaryDirectory(prefix="cli-latency-") as tmp:
        base = Path(tmp)
        base.chmod(0o711)  # the stack's PostgreSQL runs as the postgres user: it must get in
        if args.ephemeral:
            print("\n".join(ephemeral_rows(base, args.repeats)))
            return
        _show(["| setup | command | wall s | target |", "|---|---|---:|---|"])
        checkouts = {"": REPO}
        if args.against is not None:
            checkouts = {" (this)": REPO, f" ({args.against.name})": args.against.resolve()}
        if not args.no_embedded:
            setups = {}
            for label, repo in checkouts.items():
                emb = base / f"embedded{len(setups)}"
                emb.mkdir()
                setups[f"embedded{label}"] = (emb, _env(emb, repo=repo))
            runs = measure_runs(setups, args.repeats, seed0=100)
            for name, (emb, env) in setups.items():
                _show(run_rows(name, runs[name], measure_help(env, emb, args.repeats)))
        if not args.no_stack:
            team = base / "stack"
            team.mkdir()
            with stack(team) as lines:
                setups = {}
                for label, repo in checkouts.items():
                    project = base / f"stack{len(setups)}"
                    project.mkdir()
                    setups[f"stack{label}"] = (project, _env(project, lines, repo=repo))
                runs = measure_runs(setups, args.repeats, seed0=200)
                for name in setups:
                    _show(run_rows(name, runs[name], None))
        if not args.no_export:
            _show(export_rows(args.repeats))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
