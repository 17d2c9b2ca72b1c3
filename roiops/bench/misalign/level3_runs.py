"""Level 3's runs: every (stride, seed, op) trained and scored, in worker processes when asked.

The runs are independent and each is seeded, so spreading them over processes (one torch thread each) changes
only the wall time: every number is the one a serial run gives. A worker gets the datasets once, when it
starts, and sends back the scores of each run.
"""

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from .data import L3Data
from .level3_learned import Config, PoolOp, Scorer, detect, fixed_test_proposals, make_datasets, train

# A worker's datasets, scorer and test proposals (built once, in the parent), set by _start_worker.
_STATE: Optional[Tuple[L3Data, L3Data, Scorer, list, Config]] = None


def _start_worker(state: Tuple[L3Data, L3Data, Scorer, list, Config], threads: int) -> None:
    global _STATE
    torch.set_num_threads(threads)
    _STATE = state


def _one_run(op: PoolOp, stride: int, seed: int):
    """Train and score one run: its scores with the image resamples (of the EMA weights at the nominal steps),
    its learning curve (point estimates at the checkpoints, past the nominal steps for the plateau check's
    runs) and its seconds (training and scoring the curve to the nominal steps, without the final bootstrap
    and the plateau check's extra steps, so they measure the cost of a run, not of the statistics)."""
    train_set, test_set, scorer, proposals, cfg = _STATE
    nominal = cfg.steps_at(stride)
    extended = cfg.extends(op, seed)
    t0 = time.perf_counter()
    curve, out = [], {}

    def at_checkpoint(step, model):
        if step == nominal:  # the run's result, whether or not it trains on
            out["seconds"] = time.perf_counter() - t0
            out["values"] = scorer.score(detect(model, test_set, proposals))
            v = out["values"]
        else:
            v = scorer.score(detect(model, test_set, proposals), resamples=False)
        curve.append(dict(step=step, AP=float(v["AP"][0]), mIoU=float(v["mIoU"][0])))

    model = train(op, stride, seed, train_set, cfg, at_checkpoint, extended)
    at_checkpoint(cfg.checkpoints(stride, extended)[-1], model)
    return out["values"], curve, out["seconds"]


def run_level3(
    strides: Sequence[int],
    ops: Sequence[PoolOp],
    cfg: Config,
    log: Callable[[str], None] = print,
    workers: int = 1,
) -> Dict[str, object]:
    """Train and score every (stride, seed, op) that ``cfg`` asks for (``cfg.trains``, ``cfg.seeds_for``) in
    ``workers`` processes (1: in this one); returns the runs (point estimates and learning curves) in a fixed
    order, the bootstrap values (kept for the statistics, not written to JSON) and the settings."""
    global _STATE
    t0 = time.perf_counter()
    train_set, test_set = make_datasets(cfg)
    scorer = Scorer(test_set, cfg)
    state = (train_set, test_set, scorer, fixed_test_proposals(test_set, cfg.jitter), cfg)
    jobs = [
        (op, stride, seed)
        for seed in range(max(cfg.seeds_for(op) for op in ops))
        for stride in strides
        for op in ops
        if cfg.trains(op, stride) and seed < cfg.seeds_for(op)
    ]
    results = {}

    def record(index, values, curve, seconds):
        op, stride, seed = jobs[index]
        results[index] = (values, curve, seconds)
        log(
            f"level 3 {cfg.dataset} [{len(results)}/{len(jobs)}] stride {stride} seed {seed} {op.name}: "
            f"AP {values['AP'][0]:.1f}, mIoU {values['mIoU'][0]:.1f}; AP by step "
            + ", ".join(f"{p['step']}: {p['AP']:.1f}" for p in curve)
            + f" ({seconds:.0f} s; "
            f"{time.perf_counter() - t0:.0f} s so far)"
        )

    if workers <= 1:
        _start_worker(state, torch.get_num_threads())
        for i, job in enumerate(jobs):
            record(i, *_one_run(*job))
    else:
        # spawn, not fork: a forked child of a process that has run OpenMP regions can hang in its own.
        context = multiprocessing.get_context("spawn")
        args = (state, torch.get_num_threads())
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=args) as pool:
            futures = {pool.submit(_one_run, *job): i for i, job in enumerate(jobs)}
            for done in as_completed(futures):
                record(futures[done], *done.result())
    _STATE = None
    runs, boot = [], {}
    for i, (op, stride, seed) in enumerate(jobs):
        values, curve, seconds = results[i]
        boot[(stride, op.name, seed)] = values
        runs.append(
            dict(
                stride=stride,
                op=op.name,
                seed=seed,
                steps=cfg.steps_at(stride),
                trained=cfg.checkpoints(stride, cfg.extends(op, seed))[-1],
                seconds=seconds,
                curve=curve,
                **{k: float(v[0]) for k, v in values.items()},
            )
        )
    return dict(
        dataset=cfg.dataset,
        config=asdict(cfg),
        data=dict(
            train_images=len(train_set.images), train_objects=sum(len(b) for b in train_set.boxes), **scorer.describe()
        ),
        ops=[asdict(o) for o in ops],
        ops_at={str(s): [o.name for o in ops if cfg.trains(o, s)] for s in strides},
        strides=list(strides),
        steps={str(s): cfg.steps_at(s) for s in strides},
        seeds={o.name: cfg.seeds_for(o) for o in ops},
        workers=workers,
        runs=runs,
        bootstrap=boot,
        n_bins=scorer.n_bins,
    )
