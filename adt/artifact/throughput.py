"""Whether ``adt.prepare``'s one-thread worker processes beat one process on every thread:
training images per second of a method on this CPU, both ways (``python -m adt.prepare
--measure``)."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from adt.config.profiles import Profile
from adt.core.runtime import one_thread_worker

__all__ = ["worker_throughput"]


def _images_per_second(profile: Profile, method: str, steps: int) -> float:
    from adt.artifact.costs import time_train_steps

    row = time_train_steps(profile, (method,), batch_size=profile.recipe.batch_size_for(method),
                           device="cpu", warmup=2, steps=steps, repeats=1, reference=False)[0]
    return float(row["images_per_second"])


def worker_throughput(profile: Profile, method: str = "pgd_at", workers: int | None = None,
                      steps: int = 20, repeats: int = 3) -> dict[str, Any]:
    """Training images per second of ``method`` on this CPU (random data of the profile's
    shapes): one process on ``workers`` threads, against ``workers`` one-thread processes
    stepping at once (their sum), alternated ``repeats`` times."""
    import torch

    workers = workers or os.cpu_count() or 1
    threads = torch.get_num_threads()
    one, many = [], []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=one_thread_worker) as pool:
        for _ in range(repeats):
            torch.set_num_threads(workers)
            one.append(_images_per_second(profile, method, steps))
            many.append(sum(pool.map(_images_per_second, [profile] * workers,
                                     [method] * workers, [steps] * workers)))
    torch.set_num_threads(threads)
    return {"profile": profile.name, "method": method, "workers": workers, "steps": steps,
            "one_process_images_per_s": one, "workers_images_per_s": many,
            "speedup": [b / a for a, b in zip(one, many, strict=True)]}
