"""Which replica takes new work: routing.choose over the replicas' loads (pure)."""

from __future__ import annotations

from byoc_orch.routing import Refusal, RefusalReason, ReplicaLoad, choose


def load(index: int, in_use: int = 0, capacity: int = 2, routable: bool = True) -> ReplicaLoad:
    return ReplicaLoad(f"w-{index}", index, routable, in_use, capacity)


def test_the_least_loaded_replica_is_chosen() -> None:
    chosen = choose(
        [load(0, in_use=2, capacity=4), load(1, in_use=1), load(2, in_use=3, capacity=8)]
    )
    assert chosen == load(1, in_use=1)


def test_among_equally_loaded_the_lowest_index_wins_whatever_the_order() -> None:
    replicas = [load(2, 1), load(0, 1), load(1, 1)]
    assert choose(replicas) == load(0, 1)
    assert choose(list(reversed(replicas))) == load(0, 1)


def test_load_is_slots_in_use_not_the_share_free() -> None:
    # Replica 1 has more room left but runs more: the one running less takes the call.
    chosen = choose([load(0, in_use=1, capacity=2), load(1, in_use=2, capacity=10)])
    assert chosen == load(0, in_use=1)


def test_full_replicas_are_skipped() -> None:
    assert choose([load(0, in_use=2), load(1, in_use=2), load(2, in_use=1)]) == load(2, in_use=1)


def test_draining_or_unroutable_replicas_are_skipped_even_when_idle() -> None:
    chosen = choose([load(0, routable=False), load(1, in_use=1)])
    assert chosen == load(1, in_use=1)


def test_every_routable_replica_full_is_refused_as_full() -> None:
    refusal = choose([load(0, in_use=2), load(1, in_use=3, capacity=3), load(2, routable=False)])
    assert refusal == Refusal(RefusalReason.FULL, routable=2, in_use=5, capacity=5)


def test_no_routable_replica_is_refused_as_not_warm() -> None:
    refusal = choose([load(0, routable=False), load(1, in_use=1, routable=False)])
    assert refusal == Refusal(RefusalReason.NOT_WARM, routable=0, in_use=0, capacity=0)
    assert choose([]) == Refusal(RefusalReason.NOT_WARM, routable=0, in_use=0, capacity=0)


def test_a_replica_over_its_capacity_counts_as_full() -> None:
    # After a reload lowered capacity below the sessions already running.
    assert choose([load(0, in_use=3, capacity=2)]) == Refusal(
        RefusalReason.FULL, routable=1, in_use=3, capacity=2
    )
