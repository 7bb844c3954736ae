"""A pool's live actors, as one collection keyed by their index (the `-actor-<i>` of
their name), with what the manager knows of each: its Flight URI and its node."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Member:
    index: int
    actor: object  # its Ray handle
    uri: str | None = None  # its Flight service, once serving
    node_id: str | None = None  # where it was placed on purpose (None: where Ray chose)


class ActorSet:
    """The manager's actors, in start order. Not thread-safe: the manager's lock guards
    changes; readers take a copy (`members()`)."""

    def __init__(self):
        self._members: dict[int, Member] = {}

    def add(self, member: Member) -> None:
        self._members[member.index] = member

    def remove(self, indices) -> list[Member]:
        return [self._members.pop(index) for index in list(indices) if index in self._members]

    def members(self) -> list[Member]:
        return list(self._members.values())

    def handles(self) -> list:
        return [member.actor for member in self._members.values()]

    def uris(self) -> list[str]:
        return [member.uri for member in self._members.values() if member.uri]

    def indices(self) -> set[int]:
        return set(self._members)

    def per_node(self) -> dict[str, int]:
        """node id -> how many of these actors were placed there on purpose."""
        counts: dict[str, int] = {}
        for member in self._members.values():
            if member.node_id:
                counts[member.node_id] = counts.get(member.node_id, 0) + 1
        return counts

    def __len__(self) -> int:
        return len(self._members)
