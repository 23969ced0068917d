"""Ranks: which process this is (from torchrun's environment), its device, its deterministic share of the pages,
and the one meeting point of the ranks, a barrier before rank 0 merges.

Without torchrun (no `WORLD_SIZE`), the process is rank 0 of 1 and no process group is made. With it, the ranks
join a gloo group (the barrier carries no tensor, so gloo serves CPU and GPU ranks alike); torch.distributed is
imported only then.

    >>> shard(["a", "b", "c", "d", "e"], Rank(1, 2, 1))
    ['b', 'd']
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence, TypeVar

T = TypeVar("T")
BARRIER_TIMEOUT = timedelta(days=7)  # ranks finish their shards at different times; a dead rank is seen sooner


@dataclass(frozen=True)
class Rank:
    """This process: `rank` of `world`, and its `local_rank` on its node (its GPU index)."""

    rank: int
    world: int
    local_rank: int

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def tag(self) -> str:
        return f"[rank {self.rank}/{self.world}] " if self.world > 1 else ""


def this_rank() -> Rank:
    """The rank torchrun gave this process (RANK, WORLD_SIZE, LOCAL_RANK), or rank 0 of 1."""
    env = os.environ
    return Rank(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def device_of(rank: Rank, asked: str) -> str:
    """`asked`, or for `auto` the rank's own GPU (`cuda:LOCAL_RANK`) when there are GPUs, else the CPU."""
    if asked != "auto":
        return asked
    import torch

    return f"cuda:{rank.local_rank}" if torch.cuda.is_available() else "cpu"


def shard(pages: Sequence[T], rank: Rank) -> list[T]:
    """Every `world`-th page from the rank's own index: the same pages on every run with this many ranks."""
    return list(pages[rank.rank::rank.world])


class Group:
    """The ranks' process group for the run (none for one rank); `barrier()` says whether every rank reached it."""

    def __init__(self, rank: Rank):
        self.rank = rank

    def __enter__(self) -> "Group":
        if self.rank.world > 1:
            import torch.distributed as dist

            dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
        return self

    def barrier(self) -> bool:
        """Wait for every rank; False when one died (its connection closed) instead of arriving."""
        if self.rank.world == 1:
            return True
        import torch.distributed as dist

        try:
            dist.barrier()
        except RuntimeError:  # gloo's error when a peer's connection closes (DistBackendError is one)
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        if self.rank.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
