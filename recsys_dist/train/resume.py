"""The optimizer and learning-rate state a checkpoint carries, so a restart resumes exactly.

Without it a worker failure restarts Adam's moments from zero and the schedule from its
configured shape (a time budget's moved decay would be lost): the resumed run takes a
different path from the one it interrupted. DeepSpeed's own ``save_checkpoint`` writes that
state with ``torch.save``, i.e. pickles, which a loader must never read; so it is stored here
as tensors in safetensors and everything else in JSON:

    resume.safetensors  "rank{r}/state/{param}/{name}" Adam's moments and step, per rank
                        "rank{r}/master/{param}"      the fp32 master weights a ZeRO or bf16
                                                      optimizer keeps beside the model's
    resume.json         world size, the optimizer's param groups (lr, betas, ...), and the
                        learning-rate scheduler's fields

ZeRO partitions the optimizer state across ranks (each holds an equal slice), so every rank's
tensors are gathered to rank 0, which writes them into the checkpoint it reports. A restart
with the same number of workers gives each rank its own slice back; with another number the
slices no longer match and the optimizer restarts (logged).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from recsys_dist import storage
from recsys_dist.checkpoint import RESUME_STATE_FILE as STATE_FILE
from recsys_dist.checkpoint import RESUME_TENSORS_FILE as TENSORS_FILE

logger = logging.getLogger(__name__)


@dataclass
class ResumeState:
    """What rank 0 writes into a checkpoint: every rank's tensors and the shared fields."""

    tensors: dict[str, torch.Tensor]
    fields: dict[str, Any]

    def save(self, directory: str | Path) -> None:
        """Write both files; before ``save_checkpoint``, whose ``sha256.json`` covers them."""
        save_file(self.tensors, str(Path(directory) / TENSORS_FILE))
        storage.write_json(Path(directory) / STATE_FILE, self.fields)


def gather(engine, rank: int, world: int, device) -> ResumeState | None:
    """Collect every rank's optimizer state on rank 0 (a collective: every rank calls it).

    Returns the state on rank 0 and None elsewhere.
    """
    mine = _rank_tensors(engine)
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(mine):  # the same order on every rank
        parts = _gather_to_rank0(mine[name], rank, world, device)
        for source, part in enumerate(parts):
            tensors[f"rank{source}/{name}"] = part.detach().to("cpu").contiguous()
    if rank != 0:
        return None
    optimizer = _base_optimizer(engine)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    scheduler = {k: v for k, v in vars(engine.lr_scheduler).items() if k != "optimizer"}
    fields = {"world_size": world, "param_groups": groups, "scheduler": scheduler}
    return ResumeState(tensors, _jsonable(fields))


def read(directory: str | Path, rank: int, world: int) -> ResumeState | None:
    """This rank's part of a checkpoint's optimizer state (names without the rank prefix).

    None when the checkpoint has none, or was saved by another number of workers: the
    optimizer then starts afresh (logged) and the schedule is stepped to where the run was.
    """
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file():
        logger.warning("%s holds no optimizer state: Adam's moments restart", directory)
        return None
    fields = storage.read_json(directory / STATE_FILE)
    if fields["world_size"] != world:
        logger.warning(
            "the checkpoint's optimizer state was saved by %d workers, not %d: it restarts",
            fields["world_size"],
            world,
        )
        return None
    prefix = f"rank{rank}/"  # only this rank's slice is read, not every rank's
    with safe_open(str(directory / TENSORS_FILE), framework="pt") as stored:
        tensors = {
            name[len(prefix) :]: stored.get_tensor(name)
            for name in stored.keys()
            if name.startswith(prefix)
        }
    return ResumeState(tensors, fields)


def apply(engine, saved: ResumeState) -> None:
    """Put this rank's saved optimizer state, master weights and schedule into ``engine``."""
    optimizer = _base_optimizer(engine)
    optimizer.load_state_dict(_optimizer_state_dict(optimizer, saved))
    with torch.no_grad():
        for index, param in _master_params(engine):
            param.copy_(saved.tensors[f"master/{index}"])
    for name, value in saved.fields["scheduler"].items():
        setattr(engine.lr_scheduler, name, value)


def _base_optimizer(engine) -> torch.optim.Optimizer:
    """The torch optimizer itself: ZeRO and bf16 wrap it (``.optimizer``); fp32 stage 0 not."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def _master_params(engine) -> list[tuple[int, torch.Tensor]]:
    """The fp32 master weights when the optimizer keeps its own copy (ZeRO partitions, bf16);
    none when it updates the model's parameters, which the checkpoint already holds."""
    optimizer = _base_optimizer(engine)
    if optimizer is engine.optimizer:
        return []
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return list(enumerate(params))


def _rank_tensors(engine) -> dict[str, torch.Tensor]:
    state = _base_optimizer(engine).state_dict()["state"]
    tensors = {
        f"state/{index}/{name}": value
        for index, values in state.items()
        for name, value in values.items()
        if torch.is_tensor(value)
    }
    tensors.update({f"master/{index}": param for index, param in _master_params(engine)})
    return tensors


def _optimizer_state_dict(optimizer, saved: ResumeState) -> dict:
    """Rebuild ``optimizer.state_dict()``'s shape from the flat names."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in saved.tensors.items():
        kind, *rest = name.split("/")
        if kind == "state":
            state.setdefault(int(rest[0]), {})[rest[1]] = tensor
    current = optimizer.state_dict()["param_groups"]
    groups = saved.fields["param_groups"]
    param_groups = [{**g, "params": c["params"]} for g, c in zip(groups, current, strict=True)]
    return {"state": state, "param_groups": param_groups}


def _gather_to_rank0(tensor: torch.Tensor, rank: int, world: int, device) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped tensor, on rank 0 (ZeRO's slices are equal); on
    the collective's device (NCCL moves CUDA tensors only; Adam keeps its step on the CPU)."""
    if world == 1 or not dist.is_initialized():
        return [tensor]
    tensor = tensor.to(device)
    parts = [torch.empty_like(tensor) for _ in range(world)] if rank == 0 else None
    dist.gather(tensor.contiguous(), parts, dst=0)
    return parts or []


def _jsonable(value: Any) -> Any:
    """Tuples become lists (betas); tensors or other objects would be a bug here."""
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"resume state: cannot store {type(value).__name__} in JSON")
