"""How Ray Train hands the datasets to the workers: every training row, exactly once per epoch.

Ray's ``DataConfig`` splits with ``streaming_split(world_size, equal=True)``, which drops up
to ``world_size - 1`` rows per epoch so that every shard has the same length. Here the split
datasets use ``equal=False``: Ray Data hands each block to the worker that has received the
fewest rows so far, so shards together hold every row and differ by at most a block. Blocks
are cut to ``rows_per_block`` rows (one batch) first: a small split is often a single Parquet
block, which would otherwise all go to one worker. The training loop keeps DeepSpeed's
collectives in step across the unequal shards (see ``recsys_dist.train.loop._train_epoch``).

Ray Data's ingest default lets blocks arrive in whatever order their read tasks finish, so a
seeded run can differ from the last one by no more than a busier machine. With
``preserve_order`` the blocks of every dataset, split or whole, keep file order, and one
worker repeats a run bit for bit; with several workers, which rank gets a block of a split
dataset still depends on which asks first. The whole datasets matter too: validation sums
its users' figures in the order the rows arrive, and batches them as they come, so unordered
blocks move its NDCG in the last bits, enough to make an unchanged model "improve".
"""

from __future__ import annotations

import copy
from typing import Any

import ray.data
import ray.train


class CoveringDataConfig(ray.train.DataConfig):
    """A ``DataConfig`` whose split datasets drop no rows (Ray documents overriding ``configure``).

    Args:
        datasets_to_split: Datasets to shard; the others reach every worker whole.
        rows_per_block: Blocks of the sharded datasets hold at most this many rows, so shard
            sizes differ by at most this much.
        preserve_order: Stream every dataset's blocks in file order.
    """

    def __init__(
        self, datasets_to_split: list[str], rows_per_block: int, preserve_order: bool = True
    ) -> None:
        if rows_per_block < 1:
            raise ValueError(f"rows_per_block must be >= 1, got {rows_per_block}")
        ingest = self.default_ingest_options()  # as the parent's, but for the order
        ingest.preserve_order = preserve_order
        super().__init__(datasets_to_split=list(datasets_to_split), execution_options=ingest)
        self.split_names = frozenset(datasets_to_split)
        self.rows_per_block = rows_per_block
        self.ingest = ingest

    def configure(
        self,
        datasets: dict[str, ray.data.Dataset],
        world_size: int,
        worker_handles: Any,
        worker_node_ids: list[str] | None,
        **kwargs: Any,
    ) -> list[dict[str, ray.data.DataIterator]]:
        whole = {name: ds for name, ds in datasets.items() if name not in self.split_names}
        output = super().configure(whole, world_size, worker_handles, worker_node_ids, **kwargs)
        for name, dataset in datasets.items():
            if name not in self.split_names:
                continue
            dataset = dataset.repartition(target_num_rows_per_block=self.rows_per_block)
            if dataset.name is None:
                dataset.set_name(name)
            dataset.context.execution_options = copy.deepcopy(self.ingest)
            shards = dataset.streaming_split(
                world_size, equal=False, locality_hints=worker_node_ids
            )
            for rank, shard in enumerate(shards):
                output[rank][name] = shard
        return output
