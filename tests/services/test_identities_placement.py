"""The placement rules on their own (no servers): similarity, tokens, exclusions, going back, growing."""

from __future__ import annotations

import uuid

import numpy as np

from aima.services.clustering import Placement, Unit, Vectors, normalised

RNG = np.random.default_rng(7)


def direction(dimension: int = 16) -> Vectors:
    return normalised(RNG.normal(size=(1, dimension)).astype(np.float32))[0]


def like(base: Vectors, similarity: float) -> Vectors:
    other = RNG.normal(size=base.size).astype(np.float32)
    other -= other.dot(base) * base
    other /= np.linalg.norm(other)
    result: Vectors = (similarity * base + np.sqrt(1 - similarity**2) * other).astype(np.float32)
    return result


def face(vector: Vectors, token: str | None = None, **kwargs: object) -> Unit:
    member = uuid.uuid4()
    return Unit(
        members=(member,),
        vectors=vector[None, :],
        owner=f"member:{member}",
        tokens=frozenset({token} if token else ()),
        **kwargs,  # type: ignore[arg-type]
    )


def test_similar_units_join_and_others_open_clusters() -> None:
    alice, bob = direction(), direction()
    placement = Placement(0.5, 16)
    first = placement.place(face(like(alice, 0.9)))
    second = placement.place(face(like(alice, 0.9)))
    third = placement.place(face(like(bob, 0.9)))
    assert first.new and first.similarity is None
    assert second.cluster == first.cluster and second.similarity is not None and second.similarity > 0.5
    assert third.new and third.cluster != first.cluster
    assert placement.created == [first.cluster, third.cluster]


def test_a_token_held_by_another_owner_blocks_and_the_same_owner_does_not() -> None:
    twin = direction()
    placement = Placement(0.5, 16)
    first = placement.place(face(like(twin, 0.99), "m:frame:3"))
    assert placement.place(face(like(twin, 0.99), "m:frame:3")).cluster != first.cluster
    assert placement.place(face(like(twin, 0.99), "m:frame:4")).cluster == first.cluster
    speaker = dict(owner="m:speaker:S1", tokens=frozenset({"m:voice"}))
    voices = Placement(0.5, 16)
    s1 = voices.place(Unit(members=(uuid.uuid4(),), vectors=like(twin, 0.99)[None, :], **speaker))  # type: ignore[arg-type]
    again = voices.place(Unit(members=(uuid.uuid4(),), vectors=like(twin, 0.99)[None, :], **speaker))  # type: ignore[arg-type]
    assert again.cluster == s1.cluster


def test_exclusions_follow_people_not_cluster_ids() -> None:
    alice = direction()
    old, elsewhere = uuid.uuid4(), uuid.uuid4()
    placement = Placement(0.5, 16, reusable=[old])
    # Alice's face comes back to her (emptied) cluster; a face excluded from it may not join her, wherever she is.
    back = placement.place(face(like(alice, 0.9), previous=old))
    assert back.cluster == old and not back.new
    assert placement.place(face(like(alice, 0.9), excluded=frozenset({old}))).cluster != old
    # Members of another cluster whose people were excluded from `old` bar Alice's faces from it.
    barred = Placement(0.5, 16, staying=[elsewhere], barred={elsewhere: [old]})
    unit = face(like(alice, 0.9), previous=old, external={elsewhere: 0.95})
    assert barred.place(unit).cluster != elsewhere


def test_a_unit_that_fits_nowhere_goes_back_where_it_still_can() -> None:
    kept, emptied = uuid.uuid4(), uuid.uuid4()
    placement = Placement(0.5, 16, staying=[kept], reusable=[emptied])
    assert placement.place(face(direction(), previous=kept)).cluster == kept
    assert placement.place(face(direction(), previous=kept)).cluster == kept  # still there: any number go back
    assert placement.place(face(direction(), previous=emptied)).cluster == emptied
    assert placement.place(face(direction(), previous=emptied)).new  # taken back once; an unlike one opens anew
    assert placement.place(face(direction(), previous=kept, excluded=frozenset({kept}))).new


def test_seeds_attract_and_block_but_stay() -> None:
    bob = direction()
    pinned = uuid.uuid4()
    placement = Placement(0.5, 16, reusable=[pinned])
    placement.seed(pinned, like(bob, 0.9)[None, :], owner="member:x", tokens={"m:frame:0"})
    assert placement.place(face(like(bob, 0.9), "m:frame:1")).cluster == pinned
    assert placement.place(face(like(bob, 0.9), "m:frame:0")).cluster != pinned


def test_many_units_grow_the_buffer_and_repeat_exactly() -> None:
    people = [direction(64) for _ in range(30)]
    faces = [like(people[n % 30], 0.85) for n in range(600)]

    def run() -> list[int]:
        placement = Placement(0.5, 64)
        clusters: dict[uuid.UUID, int] = {}
        order = []
        for vector in faces:
            placed = placement.place(
                Unit(members=(uuid.UUID(int=len(order)),), vectors=vector[None, :], owner="x", tokens=frozenset())
            )
            order.append(clusters.setdefault(placed.cluster, len(clusters)))
        return order

    first = run()
    assert len(set(first)) == 30
    assert first == run()
