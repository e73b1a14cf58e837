"""The launcher on its own: plain module-level functions in 2 gloo workers, no Trainer.

Results come back, a failing or killed rank ends the job with an error naming it, nothing
listens beyond loopback, two agents rendezvous as two nodes, torchrun's env is joined, and a
Prefect task can launch workers without them running the flow again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ddp_workers
import pytest

from tests.ports import free_port
from trainer.launcher import WorkerError
from trainer.strategy import DDPStrategy

pytestmark = pytest.mark.ddp

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LOOPBACK = {"127.0.0.1", "::1"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "PREFECT_API"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _leftover_children() -> list[str]:
    """Processes still below this one, besides multiprocessing's shared resource tracker and
    the session's Prefect server (tests/conftest.py ``prefect_api``)."""
    out = []
    for pid in ddp_workers.descendants(os.getpid()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        except OSError:
            continue
        if "resource_tracker" not in cmd and "prefect.server.api.server" not in cmd:
            out.append(f"{pid}: {cmd}")
    return out


def _wait_no_children(timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    left = _leftover_children()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _leftover_children()
    return left


def test_results_come_back_and_the_job_listens_on_loopback_only() -> None:
    before = ddp_workers.listening_sockets([os.getpid()])
    info = DDPStrategy("cpu", devices=2).launcher.launch(ddp_workers.rank_info_and_sockets, "hi")
    assert info["tag"] == "hi"
    assert info["rank"] == 0 and info["world_size"] == 2
    assert info["rank_sum"] == 1.0  # the all-reduce really ran across both ranks
    cpus = len(os.sched_getaffinity(0))
    assert info["threads"] == int(os.environ.get("OMP_NUM_THREADS", max(1, cpus // 2)))
    sockets = info["sockets"]
    # the agent's rendezvous store, the workers' store and gloo's listeners all exist ...
    assert len(sockets) >= 3, sockets
    # ... and none of them listens on 0.0.0.0 / :: or a public address
    assert {addr for addr, _, _ in sockets} <= LOOPBACK, sockets
    # the stores closed with the job
    assert ddp_workers.listening_sockets([os.getpid()]) == before
    assert _wait_no_children() == []


def test_a_failing_rank_ends_the_job_and_is_named() -> None:
    strategy = DDPStrategy("cpu", devices=2, shutdown_timeout=5)
    start = time.monotonic()
    with pytest.raises(WorkerError) as info:
        strategy.launcher.launch(ddp_workers.raise_at_step, 1, 5)
    elapsed = time.monotonic() - start
    err = info.value
    assert err.rank == 1
    assert err.exc_type == "ValueError"
    assert "rank 1" in str(err)
    assert "injected failure at step 5" in str(err)
    # the original traceback text, down to the line that raised in the worker function
    assert "Traceback (most recent call last)" in err.worker_traceback
    assert "raise_at_step" in err.worker_traceback
    assert elapsed < 60, f"the failure took {elapsed:.0f} s to reach the caller"
    assert _wait_no_children() == []


def test_a_rank_killed_by_a_signal_is_named() -> None:
    strategy = DDPStrategy("cpu", devices=2, shutdown_timeout=5)
    start = time.monotonic()
    with pytest.raises(WorkerError) as info:
        strategy.launcher.launch(ddp_workers.killed_at_step, 1, 3)
    assert info.value.rank == 1
    assert "SIGKILL" in str(info.value)
    assert time.monotonic() - start < 60
    assert _wait_no_children() == []


def test_unpicklable_function_is_refused_before_anything_starts() -> None:
    with pytest.raises(TypeError, match="picklable"):
        DDPStrategy("cpu", devices=2).launcher.launch(lambda: 1)
    assert _leftover_children() == []


def test_multi_node_needs_a_meeting_point() -> None:
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        DDPStrategy("cpu", devices=1, num_nodes=2).launcher.launch(ddp_workers.rank_info, "x")


NODE_SCRIPT = """
import json, sys
import ddp_workers
from trainer.strategy import DDPStrategy

if __name__ == "__main__":
    strategy = DDPStrategy("cpu", devices=1, num_nodes=2, rdzv_endpoint=sys.argv[1],
                           rdzv_id="two-agents", join_timeout=90)
    info = strategy.launcher.launch(ddp_workers.rank_info, "node")
    print("RESULT " + json.dumps(info), flush=True)
"""


def test_two_agents_rendezvous_as_two_nodes_on_loopback(tmp_path: Path) -> None:
    script = tmp_path / "node.py"
    script.write_text(NODE_SCRIPT)
    endpoint = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), endpoint],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=150)
            assert p.returncode == 0, err[-3000:]
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    results = [json.loads(line[7:]) for out in outs for line in out.splitlines()
               if line.startswith("RESULT ")]
    assert len(results) == 2
    pids = set()
    for info in results:  # both agents hand back rank 0's result
        assert info["rank"] == 0 and info["world_size"] == 2 and info["rank_sum"] == 1.0
        pids.add(info["pid"])
    assert len(pids) == 1


TORCHRUN_SCRIPT = """
import json
import torch
from torch import nn
from torch.utils.data import DataLoader
from trainer.strategy import select_strategy

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)
    def forward(self, x):
        return self.lin(x)
    def training_step(self, x):
        return self(x).pow(2).mean()

if __name__ == "__main__":
    s = select_strategy("ddp", "cpu", 2, 1)
    assert s.launcher is None, "inside torchrun the strategy must not launch"
    s.setup_environment()
    rank = s.global_rank
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    m = s.setup_module(Tiny())
    loss = s.training_step_fn(m)(torch.full((4, 3), float(rank + 1)))
    loss.backward()
    grads = s.all_gather_object(m.lin.weight.grad.clone())
    weights = s.all_gather_object(m.lin.weight.detach().clone())
    dl = s.setup_dataloader(DataLoader(list(range(10)), batch_size=2, shuffle=False), False)
    mine = [int(v) for b in dl for v in b]
    out = {
        "sum": s.reduce(torch.tensor([float(rank)]), "sum").item(),
        "mean": s.reduce(torch.tensor([float(rank)]), "mean").item(),
        "max": s.reduce(torch.tensor([float(rank)]), "max").item(),
        "gathered": s.all_gather_object(rank),
        "broadcast": s.broadcast_object("from rank 0" if rank == 0 else None),
        "grads_equal": bool(torch.equal(grads[0], grads[1])),
        "weights_equal": bool(torch.equal(weights[0], weights[1])),
        "shards": s.all_gather_object(mine),
        "threads": torch.get_num_threads(),
    }
    s.barrier()
    s.teardown()  # the group stays for the next stage (fit, then test) ...
    s.setup_environment()  # ... which joins it again without a second init
    out["after_teardown"] = s.reduce(torch.tensor([1.0]), "sum").item()
    if rank == 0:
        print("RESULT " + json.dumps(out), flush=True)
"""


def test_joins_a_torchrun_job(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(TORCHRUN_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(script)]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=150)
    assert p.returncode == 0, p.stderr[-3000:]
    line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[7:])
    assert out["sum"] == 1.0 and out["mean"] == 0.5 and out["max"] == 1.0
    assert out["gathered"] == [0, 1]
    assert out["broadcast"] == "from rank 0"
    assert out["weights_equal"] and out["grads_equal"]  # DDP broadcast + gradient all-reduce
    assert out["shards"] == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    assert out["threads"] == 1  # torchrun sets OMP_NUM_THREADS=1
    assert out["after_teardown"] == 2.0


PREFECT_SCRIPT = """
import os, sys
import torch.distributed as dist
from prefect import flow, task
from trainer.strategy import DDPStrategy

MARK = os.environ["TRAINFLOW_TEST_MARK"]


def note(text):
    with open(MARK, "a") as f:
        f.write(text + "\\n")


def worker(tag):
    note(f"worker rank={dist.get_rank()}")
    return f"{tag} from rank {dist.get_rank()} of {dist.get_world_size()}"


@task
def train():
    note("task")
    return DDPStrategy("cpu", devices=2).launcher.launch(worker, "trained")


@flow
def pipeline():
    note("flow")
    return train.submit().result()  # the task runs in the task runner's worker thread


if __name__ == "__main__":
    print("RESULT " + pipeline(), flush=True)
"""


def test_launch_from_a_prefect_task_does_not_rerun_the_flow(
    tmp_path: Path, prefect_api: str
) -> None:
    """The flow runs in its own process against the session's Prefect API (a real local
    server, tests/conftest.py); the spawned workers re-import that script without running it."""
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent(PREFECT_SCRIPT))
    mark = tmp_path / "mark.txt"
    env = _env(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_API_URL=prefect_api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        TRAINFLOW_TEST_MARK=str(mark),
    )
    p = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "RESULT trained from rank 0 of 2" in p.stdout
    lines = sorted(mark.read_text().split("\n")[:-1])
    assert lines == ["flow", "task", "worker rank=0", "worker rank=1"]


CALLER_SCRIPT = """
import os, sys, time
import torch
import torch.distributed as dist
from trainer.strategy import DDPStrategy


def forever(pid_dir):
    open(os.path.join(pid_dir, f"{os.getpid()}.pid"), "w").close()
    while True:
        t = torch.ones(1)
        dist.all_reduce(t)
        time.sleep(0.1)


if __name__ == "__main__":
    DDPStrategy("cpu", devices=2).launcher.launch(forever, sys.argv[1])
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_workers_end_when_the_caller_is_killed(tmp_path: Path, sig: signal.Signals) -> None:
    script = tmp_path / "caller.py"
    script.write_text(CALLER_SCRIPT)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    p = subprocess.Popen([sys.executable, str(script), str(pid_dir)], env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(pid_dir.iterdir())) < 2 and time.monotonic() < deadline:
            assert p.poll() is None, p.stderr.read()[-3000:]
            time.sleep(0.2)
        workers = [int(f.stem) for f in pid_dir.iterdir()]
        assert len(workers) == 2
        p.send_signal(sig)
        p.wait(timeout=60)
        assert p.returncode != 0
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [w for w in workers if _alive(w)] == []
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def test_script_from_stdin_is_refused_at_once_instead_of_hanging() -> None:
    """spawn re-imports the main file in each worker; `python -` has none, so refuse up front."""
    script = textwrap.dedent("""
        import torch
        from torch.utils.data import DataLoader, TensorDataset
        from trainer import Trainer
        from ddp_workers import MLPModule

        ds = TensorDataset(torch.randn(16, 8), torch.randint(0, 3, (16,)))
        Trainer(max_epochs=1, strategy="ddp", devices=2, accelerator="cpu", logger=False,
                enable_progress_bar=False, enable_checkpointing=False).fit(
            MLPModule(), DataLoader(ds, batch_size=4))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                          timeout=90, env=env)
    assert proc.returncode != 0
    assert "must re-import your main script, but it is '<stdin>'" in proc.stderr
