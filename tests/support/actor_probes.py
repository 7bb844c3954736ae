"""Test-only probes that run inside a pool's actor, through Ray's
`actor.__ray_call__.remote(probe)` (which calls `probe(the actor instance)`): the
product's actor carries no code that only tests use.

This module is pickled by value, so an actor's worker needs no import path to tests/.
"""

from __future__ import annotations

import os
import sys

import ray.cloudpickle

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def memory_regions() -> list[tuple[int, int, int, str]]:
    """(start, end, file offset, backing file) of every mapping of this process."""
    regions = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            start, end = (int(x, 16) for x in parts[0].split("-"))
            regions.append((start, end, int(parts[2], 16),
                            parts[5] if len(parts) > 5 else "<anonymous>"))
    return regions


def region_of(regions, address: int) -> tuple[str, int]:
    """The backing file of `address` and its offset in that file."""
    for start, end, offset, name in regions:
        if start <= address < end:
            return name, offset + address - start
    return "<unmapped>", address


def weight_storage(actor) -> dict:
    """Where the actor's CPU weights live: bytes per mapped file holding them.

    Object-store-backed weights sit in the plasma store's shared mapping, not in the
    process's private heap ("<anonymous>" or "[heap]")."""
    regions = memory_regions()
    backing: dict[str, int] = {}
    params = list(actor.runner.module.parameters())
    for tensor in params:
        where = ("<device>" if tensor.device.type != "cpu"
                 else region_of(regions, tensor.data_ptr())[0])
        backing[where] = backing.get(where, 0) + tensor.nbytes
    return {"pid": os.getpid(), "backing": backing,
            "param_bytes": sum(t.nbytes for t in params)}


def first_param_location(actor) -> dict:
    """The file the actor's first parameter is mapped from, and the offset in that
    file. Two actors at the same file and offset read the very same bytes: one copy,
    whatever their virtual addresses."""
    address = next(actor.runner.module.parameters()).data_ptr()
    name, offset = region_of(memory_regions(), address)
    return {"file": name, "offset": offset}


def probe(actors, fn) -> list:
    """`fn(actor instance)` inside each of `actors`, in order."""
    return ray.get([actor.__ray_call__.remote(fn) for actor in actors])
