"""Many independent Ray tasks with bounded concurrency, and a progress bar.

The data stages here are shuffles of whole files and buckets, one task each, whose results are
small summaries. Plain Ray tasks run them with less overhead than a Ray Data pipeline (on two
cores the scatter of a 20M-event log took 3.8 s as tasks and 6.2 s as ``map_batches`` over a
listing); at most twice as many tasks as CPUs are in flight, so their results never pile up.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray
from tqdm.auto import tqdm


def map_tasks(
    function: Callable[..., Any], calls: Sequence[tuple], desc: str, unit: str = "task"
) -> Iterator[Any]:
    """Run ``function(*call)`` for every call as a one-CPU Ray task; yield results as they end.

    A task that raises re-raises here, with the task's own exception type and message.
    """
    task = ray.remote(num_cpus=1)(function)
    limit = max(1, 2 * int(ray.cluster_resources().get("CPU", 1)))
    disable = os.environ.get("TQDM_DISABLE", "") not in ("", "0", "false", "False")
    pending: list[ray.ObjectRef] = []
    with tqdm(total=len(calls), desc=desc, unit=unit, disable=disable) as bar:
        for call in calls:
            if len(pending) >= limit:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
                bar.update(1)
            pending.append(task.remote(*call))
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
            bar.update(1)
