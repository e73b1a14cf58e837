"""Benchmark: trainer.metrics update / forward against hand-written torch, and the DDP sync.

    python bench/metrics.py                      # CPU, batch 256
    python bench/metrics.py --device cuda        # the same on a GPU
    python bench/metrics.py --iters 50 --repeats 2 --sync-iters 5   # a quick smoke run

Prints µs per call (median of --repeats runs of --iters calls; the runs of a metric's four
timings interleaved, so a machine whose speed drifts shifts them alike) for update() and
forward() of multiclass accuracy, macro F1, MSE and binary AUROC (exact and binned), each beside a
hand-written torch expression of the same statistic measured in the same run, and the ratios
(targets: update ≤ 2× hand-written, forward ≤ 1.2× update). Then the latency of compute() of a
5-metric collection (accuracy, precision, recall, macro F1, AUROC) synced across 2 gloo
processes, with the number of collective calls per compute.

Hand-written references (no input checks; the metrics check theirs): accuracy = argmax/eq/sum
into two counters; macro F1 = bincount confusion matrix; MSE = dot of the difference into a
float64 sum and an int64 count (the metric's state dtypes); AUROC: update = append scores and
targets to two lists (the exact state), forward = that plus the batch AUROC with ties counted
1/2 (one sort, two searchsorted: the same statistic as sklearn's, as the metric computes it);
binned AUROC (200 thresholds): update = searchsorted + bincount into a (201, 2) histogram,
forward = that plus a cumsum/trapezoid AUROC of the batch histogram. Before timing, each
hand-written forward's batch value is checked against the metric's. The last column, hand f/u,
is the hand-written forward over the hand-written update: what the batch value costs written
plainly (a metric may come in under it where it reduces small states on the host).
--clock thread times CPU time of the thread instead of wall time: steadier on a shared CPU.
With --torchmetrics the same metrics from torchmetrics are timed in the same run, and the sync
benchmark is repeated with a torchmetrics MetricCollection.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from trainer.metrics import AUROC, Accuracy, F1Score, MeanSquaredError

C = 10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCK = time.perf_counter  # --clock thread: time.thread_time (CPU time, for a busy machine)


def timeit_many(fns: list[Callable[[], object]], iters: int, repeats: int,
                device: torch.device) -> list[float]:
    """Median µs per call of each function, the runs interleaved (run r of every function, then
    run r + 1): a machine that slows down or speeds up during the measurement shifts all of them
    alike, so their ratios hold."""
    for fn in fns:
        for _ in range(min(iters, 20)):
            fn()
    _sync(device)
    runs: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, runs):
            t0 = CLOCK()
            for _ in range(iters):
                fn()
            _sync(device)
            out.append((CLOCK() - t0) / iters * 1e6)
    return [statistics.median(r) for r in runs]


def cases(batch: int, device: torch.device) -> list[tuple[str, object, Callable, Callable, tuple]]:
    """(name, metric, hand-written update, hand-written forward, inputs)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, C, generator=g).to(device)
    labels = torch.randint(0, C, (batch,), generator=g).to(device)
    x = torch.randn(batch, generator=g).to(device)
    y = torch.randn(batch, generator=g).to(device)
    probs = torch.rand(batch, generator=g).to(device)
    binary = torch.randint(0, 2, (batch,), generator=g).to(device)

    acc_state = {"correct": torch.zeros((), dtype=torch.long, device=device),
                 "total": torch.zeros((), dtype=torch.long, device=device)}

    def acc_update(p, t):
        acc_state["correct"] = acc_state["correct"] + (p.argmax(1) == t).sum()
        acc_state["total"] = acc_state["total"] + t.numel()

    def acc_forward(p, t):
        c = (p.argmax(1) == t).sum()
        acc_state["correct"] = acc_state["correct"] + c
        acc_state["total"] = acc_state["total"] + t.numel()
        return c / t.numel()

    cm_state = {"cm": torch.zeros(C, C, dtype=torch.long, device=device)}

    def _cm(p, t):
        idx = t * C + p.argmax(1)
        if idx.device.type == "cpu":
            return torch.bincount(idx, minlength=C * C).view(C, C)
        return torch.zeros(C * C, dtype=torch.long, device=idx.device).index_add_(
            0, idx, torch.ones_like(idx)).view(C, C)

    def f1_update(p, t):
        cm_state["cm"] = cm_state["cm"] + _cm(p, t)

    def f1_forward(p, t):
        cm = _cm(p, t)
        cm_state["cm"] = cm_state["cm"] + cm
        tp = cm.diagonal()
        return (2 * tp / (cm.sum(0) + cm.sum(1)).clamp(min=1)).mean()

    # the metric's state dtypes: a float64 sum of squares, an int64 count
    mse_state = {"sse": torch.zeros((), dtype=torch.float64, device=device),
                 "n": torch.zeros((), dtype=torch.long, device=device)}

    def mse_update(p, t):
        d = p - t
        mse_state["sse"] = mse_state["sse"] + torch.dot(d, d)
        mse_state["n"] = mse_state["n"] + d.numel()

    def mse_forward(p, t):
        d = p - t
        s = torch.dot(d, d)
        mse_state["sse"] = mse_state["sse"] + s
        mse_state["n"] = mse_state["n"] + d.numel()
        return s / d.numel()

    au_state: dict[str, list] = {"p": [], "t": []}

    def au_update(p, t):
        au_state["p"].append(p)
        au_state["t"].append(t)
        if len(au_state["p"]) > 1000:
            au_state["p"].clear()
            au_state["t"].clear()

    def au_forward(p, t):
        # the batch AUROC with ties counted 1/2 (sklearn's): the Mann-Whitney statistic from
        # the sorted scores and the insertion points of the positives
        au_update(p, t)
        s = p.sort().values
        pos = p[t == 1]
        n_pos = pos.numel()
        ranks = torch.searchsorted(s, pos) + torch.searchsorted(s, pos, right=True)
        return (ranks.sum() - n_pos * n_pos) / (2 * n_pos * (p.numel() - n_pos))

    th = torch.linspace(0, 1, 200, device=device)
    hist_state = {"h": torch.zeros(201 * 2, dtype=torch.long, device=device)}

    def _hist(p, t):
        idx = torch.searchsorted(th, p, right=True) * 2 + t
        if idx.device.type == "cpu":
            return torch.bincount(idx, minlength=201 * 2)
        return torch.zeros(201 * 2, dtype=torch.long, device=idx.device).index_add_(
            0, idx, torch.ones_like(idx))

    def bin_update(p, t):
        hist_state["h"] = hist_state["h"] + _hist(p, t)

    def bin_forward(p, t):
        h = _hist(p, t)
        hist_state["h"] = hist_state["h"] + h
        rev = h.view(201, 2).flip(0).cumsum(0).double()  # counts at or above each threshold
        fps, tps = rev[:, 0], rev[:, 1]
        return torch.trapezoid(tps / tps[-1], fps / fps[-1])

    return [
        ("accuracy (multiclass, C=10)", Accuracy("multiclass", num_classes=C), acc_update,
         acc_forward, (logits, labels)),
        ("F1 macro (C=10)", F1Score("multiclass", num_classes=C, average="macro"), f1_update,
         f1_forward, (logits, labels)),
        ("MSE", MeanSquaredError(), mse_update, mse_forward, (x, y)),
        ("AUROC binary (exact)", AUROC("binary"), au_update, au_forward, (probs, binary)),
        ("AUROC binary (200 bins)", AUROC("binary", thresholds=200), bin_update, bin_forward,
         (probs, binary)),
    ]


def torchmetrics_counterparts() -> dict[str, object] | None:
    """The same metrics from torchmetrics (for --torchmetrics), or None if not installed."""
    try:
        from torchmetrics.classification import (
            BinaryAUROC,
            MulticlassAccuracy,
            MulticlassF1Score,
        )
        from torchmetrics.regression import MeanSquaredError as TMMeanSquaredError
    except ImportError:
        return None
    return {
        "accuracy (multiclass, C=10)": MulticlassAccuracy(num_classes=C, average="micro"),
        "F1 macro (C=10)": MulticlassF1Score(num_classes=C, average="macro"),
        "MSE": TMMeanSquaredError(),
        "AUROC binary (exact)": BinaryAUROC(),
        "AUROC binary (200 bins)": BinaryAUROC(thresholds=200),
    }


def bench_local(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"batch {args.batch} | {args.iters} calls x {args.repeats} runs (median) | "
          f"{args.clock} clock")
    header = (f"{'metric':<26} {'hand upd':>9} {'update':>9} {'upd/hand':>9} "
              f"{'hand fwd':>9} {'forward':>9} {'fwd/upd':>8} {'hand f/u':>9}")
    print(header)
    print("-" * len(header))
    tm = torchmetrics_counterparts() if args.torchmetrics else None
    tm_rows = []
    for label, metric, hand_upd, hand_fwd, inputs in cases(args.batch, device):
        metric = metric.to(device)  # type: ignore[attr-defined]
        # the hand-written forward computes the same statistic: its batch value equals the
        # metric's (checked once, on fresh states)
        ref, got = float(hand_fwd(*inputs)), float(metric(*inputs))  # type: ignore[operator]
        if abs(ref - got) > 1e-5:
            raise SystemExit(f"{label}: the hand-written forward gives {ref}, the metric {got}")
        metric.reset()  # type: ignore[attr-defined]

        def upd(metric=metric, inputs=inputs):
            metric.update(*inputs)
            if metric.update_count > 1000:  # bound the cat states
                metric.reset()

        def fwd(metric=metric, inputs=inputs):
            metric(*inputs)
            if metric.update_count > 1000:
                metric.reset()

        h_u, m_u, h_f, m_f = timeit_many(
            [lambda f=hand_upd, i=inputs: f(*i), upd, lambda f=hand_fwd, i=inputs: f(*i), fwd],
            args.iters, args.repeats, device)
        print(f"{label:<26} {h_u:9.1f} {m_u:9.1f} {m_u / h_u:8.2f}x {h_f:9.1f} {m_f:9.1f} "
              f"{m_f / m_u:7.2f}x {h_f / h_u:8.2f}x")
        if tm is not None:
            other = tm[label].to(device)  # type: ignore[attr-defined]

            def t_upd(other=other, inputs=inputs):
                other.update(*inputs)
                if other.update_count > 1000:
                    other.reset()

            def t_fwd(other=other, inputs=inputs):
                other(*inputs)
                if other.update_count > 1000:
                    other.reset()

            t_u, t_f = timeit_many([t_upd, t_fwd], args.iters, args.repeats, device)
            tm_rows.append((label, h_u, t_u, t_f))
    print("(µs per call; upd/hand target ≤ 2x, fwd/upd target ≤ 1.2x; hand f/u = the hand-written "
          "forward over the hand-written update)")
    if tm is None and args.torchmetrics:
        print("torchmetrics is not installed: no comparison")
    if tm_rows:
        import torchmetrics

        print(f"\ntorchmetrics {torchmetrics.__version__}, same inputs and run:")
        print(f"{'metric':<26} {'hand upd':>9} {'update':>9} {'upd/hand':>9} {'forward':>9} "
              f"{'fwd/upd':>8}")
        for label, h_u, t_u, t_f in tm_rows:
            print(f"{label:<26} {h_u:9.1f} {t_u:9.1f} {t_u / h_u:8.2f}x {t_f:9.1f} "
                  f"{t_f / t_u:7.2f}x")



def _sync_worker(rank: int, init_file: str, iters: int, out: str, use_tm: bool = False) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    import torch.distributed as dist

    from trainer.metrics import MetricCollection, Precision, Recall

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    calls: list[str] = []
    for fname in ("all_reduce", "all_gather", "broadcast", "barrier", "all_gather_object",
                  "all_gather_into_tensor", "gather", "reduce"):
        orig = getattr(dist, fname)

        def wrapped(*a, __o=orig, __n=fname, **k):
            calls.append(__n)
            return __o(*a, **k)

        setattr(dist, fname, wrapped)
    if use_tm:
        import torchmetrics
        from torchmetrics import classification as tmc

        mc = torchmetrics.MetricCollection({
            "acc": tmc.MulticlassAccuracy(num_classes=C, average="micro"),
            "prec": tmc.MulticlassPrecision(num_classes=C, average="macro"),
            "rec": tmc.MulticlassRecall(num_classes=C, average="macro"),
            "f1": tmc.MulticlassF1Score(num_classes=C, average="macro"),
            "auroc": tmc.MulticlassAUROC(num_classes=C),
        })
    else:
        mc = MetricCollection({
            "acc": Accuracy("multiclass", num_classes=C),
            "prec": Precision("multiclass", num_classes=C, average="macro"),
            "rec": Recall("multiclass", num_classes=C, average="macro"),
            "f1": F1Score("multiclass", num_classes=C, average="macro"),
            "auroc": AUROC("multiclass", num_classes=C),
        })
    g = torch.Generator().manual_seed(rank)
    times = []
    counts = []
    for i in range(iters + 2):
        mc.update(torch.randn(256, C, generator=g).softmax(1), torch.randint(0, C, (256,),
                                                                            generator=g))
        calls.clear()
        t0 = time.perf_counter()
        mc.compute()
        dt = time.perf_counter() - t0
        if i >= 2:  # the first compute creates the sync group
            times.append(dt * 1e3)
            counts.append(len(calls))
        mc.reset() if i % 10 == 9 else None
    if rank == 0:
        with open(out, "w") as f:
            f.write(f"{statistics.median(times):.2f} {max(counts)} {calls}")
    dist.barrier()
    dist.destroy_process_group()


def bench_sync(args: argparse.Namespace, use_tm: bool = False) -> None:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "sync.txt")
        ctx = mp.start_processes(_sync_worker, args=(os.path.join(tmp, "init"), args.sync_iters,
                                                     out, use_tm), nprocs=2, join=False,
                                 start_method="spawn")
        deadline = time.time() + 300
        while not ctx.join(timeout=1):
            if time.time() > deadline:
                for p in ctx.processes:
                    p.kill()
                raise SystemExit("sync benchmark: workers did not finish within 300 s")
        ms, n, calls = open(out).read().split(" ", 2)
    who = "torchmetrics" if use_tm else "trainer.metrics"
    if len(calls) > 120:
        calls = calls[:117] + "...]"
    print(f"\n{who}: sync, 2 gloo processes (CPU), 5-metric collection (acc, prec, rec, "
          f"macro F1, AUROC; C={C}, 256..2560 samples/rank): median compute {float(ms):.2f} ms, "
          f"{n} collective calls per compute {calls}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="thread: CPU time of this thread (steadier on a shared CPU machine; "
                        "not for CUDA, whose waits it does not count)")
    parser.add_argument("--sync-iters", type=int, default=50)
    parser.add_argument("--no-sync", action="store_true", help="skip the 2-process sync bench")
    parser.add_argument("--torchmetrics", action="store_true",
                        help="also time torchmetrics' counterparts, where it is installed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    if args.clock == "thread" and args.device != "cpu":
        parser.error("--clock thread measures CPU time only: use the wall clock on a GPU")
    if args.clock == "thread":
        CLOCK = time.thread_time
    bench_local(args)
    if not args.no_sync:
        bench_sync(args)
        if args.torchmetrics:
            try:
                import torchmetrics  # noqa: F401
            except ImportError:
                return
            bench_sync(args, use_tm=True)


if __name__ == "__main__":
    main()
