"""Start-up reconcile: adopt, replace or remove our containers."""

from __future__ import annotations

from dataclasses import dataclass

from byoc_orch.reconcile import Plan, plan


@dataclass(frozen=True)
class Box:
    id: str
    worker_id: str
    spec_hash: str
    running: bool = True


def test_running_with_matching_hash_is_adopted() -> None:
    result = plan({"w1": "h1"}, [Box("c1", "w1", "h1")])
    assert result == Plan(adopt={"w1": "c1"}, launch=(), remove=())


def test_changed_hash_is_replaced() -> None:
    result = plan({"w1": "h2"}, [Box("c1", "w1", "h1")])
    assert result.adopt == {}
    assert result.remove == ("c1",)
    assert result.launch == ("w1",)


def test_not_running_is_replaced() -> None:
    result = plan({"w1": "h1"}, [Box("c1", "w1", "h1", running=False)])
    assert result.adopt == {}
    assert result.remove == ("c1",)
    assert result.launch == ("w1",)


def test_unwanted_container_is_removed() -> None:
    result = plan({}, [Box("c1", "gone", "h1"), Box("c2", "gone-too", "h2", running=False)])
    assert result == Plan(adopt={}, launch=(), remove=("c1", "c2"))


def test_two_containers_for_one_worker_keep_one() -> None:
    result = plan({"w1": "h1"}, [Box("c1", "w1", "h1"), Box("c2", "w1", "h1")])
    assert result.adopt == {"w1": "c1"}
    assert result.remove == ("c2",)
    assert result.launch == ()


def test_a_stale_duplicate_does_not_block_adopting_the_good_one() -> None:
    result = plan(
        {"w1": "h1"},
        [Box("old", "w1", "h0"), Box("dead", "w1", "h1", running=False), Box("good", "w1", "h1")],
    )
    assert result.adopt == {"w1": "good"}
    assert sorted(result.remove) == ["dead", "old"]
    assert result.launch == ()


def test_wanted_with_nothing_existing_is_launched() -> None:
    result = plan({"w1": "h1", "w2": "h2"}, [])
    assert result == Plan(adopt={}, launch=("w1", "w2"), remove=())


def test_mixed() -> None:
    result = plan(
        {"keep": "k", "change": "new", "fresh": "f"},
        [
            Box("c-keep", "keep", "k"),
            Box("c-change", "change", "old"),
            Box("c-orphan", "orphan", "o"),
        ],
    )
    assert result.adopt == {"keep": "c-keep"}
    assert result.launch == ("change", "fresh")
    assert result.remove == ("c-change", "c-orphan")


def test_accepts_any_iterable() -> None:
    result = plan({"w1": "h1"}, (box for box in [Box("c1", "w1", "h1")]))
    assert result.adopt == {"w1": "c1"}


def test_reload_plan_applies_only_the_difference() -> None:
    from byoc_orch.reconcile import Running, plan_reload

    current = {
        "same": Running({"v": 1}, "h1", True),
        "price": Running({"price": 1}, "h2", True),
        "image": Running({"image": "a"}, "h3", True),
        "cooled": Running({"warm": True}, "h4", True),
        "external": Running({"url": "x"}, None, True),
        "gone": Running({}, "h5", True),
    }
    wanted = {
        "same": Running({"v": 1}, "h1", True),
        "price": Running({"price": 2}, "h2", True),
        "image": Running({"image": "b"}, "h3b", True),
        "cooled": Running({"warm": False}, "h4", False),
        "external": Running({"url": "x", "container": "c"}, "h6", True),
        "new": Running({}, "h7", True),
    }
    result = plan_reload(current, wanted)
    assert result.keep == ("same",)
    assert result.update == ("price",)
    assert set(result.replace) == {"image", "cooled", "external"}
    assert result.add == ("new",)
    assert result.remove == ("gone",)
    assert result.changed
    assert not plan_reload(current, current).changed


def test_a_changed_replica_count_alone_is_scaling_not_replacing() -> None:
    from byoc_orch.reconcile import Running, plan_reload

    three = ((0, "a"), (1, "b"), (2, "c"))
    current = {
        "down": Running({"replicas": 3}, three, True),
        "up": Running({"replicas": 2}, three[:2], True),
        "both": Running({"replicas": 3}, three, True),
    }
    wanted = {
        "down": Running({"replicas": 2}, three[:2], True),
        "up": Running({"replicas": 3}, three, True),
        # Fewer replicas *and* a new image: every container changes, a replacement.
        "both": Running({"replicas": 2, "image": 2}, ((0, "x"), (1, "y")), True),
    }
    result = plan_reload(current, wanted)
    assert result.scale == ("down", "up")
    assert result.replace == ("both",)
    assert result.reconfigured == ("both", "down", "up")
    assert result.summary()["scaled"] == ["down", "up"]
