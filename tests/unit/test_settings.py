"""Settings by lifetime: the pool key derived from what actors compute, the parts'
validation, infer()'s grouped parameters, and how mode="udf" treats actor settings.
No Spark or Ray here."""

from __future__ import annotations

from dataclasses import asdict, fields, replace

import pytest

from hybrid_infer.api import JobOptions, ModelSource, infer
from hybrid_infer.errors import ConfigurationError, InputError
from hybrid_infer.pool.settings import (
    PARTS,
    ActorSettings,
    ClientSettings,
    PlacementSettings,
    PoolKey,
    PoolSettings,
)

#: A valid value other than the default, for every field of every part. A new field
#: fails test_every_field_has_a_changed_value until it is listed here.
CHANGED = {
    "batch_size": 7, "device": "cpu", "precision": "bf16", "channels_last": True,
    "optimize": "compile", "torch_threads": 3, "streams": 1, "decode_threads": 5,
    "max_batch_bytes": 1 << 20, "embedding_layer": "avgpool", "decode": "gpu",
    "num_actors": 3, "min_actors": 1, "max_actors": 4, "num_cpus_per_actor": 0.5, "num_gpus_per_actor": 0.25,
    "idle_timeout_s": 5.0, "build_timeout_s": 7.0, "place_timeout_s": 9.0,
    "grow_after_s": 2.0, "shrink_after_s": 20.0,
    "max_in_flight": 4, "batch_timeout_s": 11.0, "rows_per_batch": 13, "plan_lease_s": 15.0,
    "tls_cert": "pool.crt", "tls_key": "pool.key", "flight_port_range": (40000, 40099),
}
#: Settings that are only valid together: changing one changes the other too.
TOGETHER = {"tls_cert": "tls_key", "tls_key": "tls_cert"}


def _changed(name: str) -> dict:
    other = TOGETHER.get(name)
    return {name: CHANGED[name], **({other: CHANGED[other]} if other else {})}


def _key(settings: PoolSettings) -> str:
    return PoolKey.derive("torchvision:resnet18", "random-seed-0", settings.actor).name


def test_every_field_has_a_changed_value():
    for part in (ActorSettings, PlacementSettings, ClientSettings):
        for f in fields(part):
            assert f.name in CHANGED, f"{part.__name__}.{f.name}: add it to CHANGED"


@pytest.mark.parametrize("name", [f.name for f in fields(ActorSettings)])
def test_every_actor_setting_changes_the_pool_key(name):
    assert _key(PoolSettings(**_changed(name))) != _key(PoolSettings())


@pytest.mark.parametrize("name", [f.name for f in fields(PlacementSettings)]
                         + [f.name for f in fields(ClientSettings)])
def test_placement_and_client_settings_leave_the_pool_key_alone(name):
    assert _key(PoolSettings(**_changed(name))) == _key(PoolSettings())


def test_the_key_is_every_actor_field_and_nothing_else():
    settings = PoolSettings(**CHANGED)
    assert set(PoolKey.derive("m", "d", settings.actor).compute) == {
        f.name for f in fields(ActorSettings)}
    assert PoolKey.derive("m", "d", settings.actor).compute == asdict(settings.actor)


def _field(settings: PoolSettings, name: str):
    """A field read from the part that owns it: the one way settings are read."""
    part = next(part for part in PARTS if name in {f.name for f in fields(PARTS[part])})
    return getattr(getattr(settings, part), name)


def test_flat_keywords_go_to_their_part_and_are_read_from_it():
    settings = PoolSettings(**CHANGED)
    for name, value in CHANGED.items():
        assert _field(settings, name) == value
    with pytest.raises(AttributeError):  # one way to read a field: from its part
        settings.batch_size  # noqa: B018
    assert settings.actor.batch_size == 7 and settings.placement.num_actors == 3
    assert settings.client.rows_per_batch == 13
    # parts given whole, keywords on top; replace() keeps the rest
    whole = PoolSettings(actor=ActorSettings(batch_size=4), client=ClientSettings(
        max_in_flight=3), batch_size=6)
    assert (whole.actor.batch_size, whole.client.max_in_flight) == (6, 3)
    # routed parts applied as they are, without routing again (infer()'s keywords)
    assert whole.with_parts({"actor": {"batch_size": 9}, "client": {}}) == whole.replace(
        batch_size=9)
    assert whole.replace(num_actors=2) == replace(whole, placement=PlacementSettings(
        num_actors=2))
    # the old idiom of copying through __dict__ still works
    assert PoolSettings(**{**whole.__dict__, "batch_size": 9}) == whole.replace(batch_size=9)


@pytest.mark.parametrize("settings, message", [
    ({"start_timeout_s": 5}, "'start_timeout_s' is gone; use build_timeout_s .* place_timeout_s"),
    ({"num_actor": 2}, "no setting 'num_actor': did you mean num_actors"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"device": "tpu"}, r"device must be one of \('auto', 'cpu', 'cuda'\), got 'tpu'"),
    ({"precision": "int8"}, "precision must be one of"),
    ({"optimize": "freeze", "precision": "bf16"}, "runs in fp32 only"),
    ({"optimize": "compile", "streams": 2}, "not safe to call from several threads"),
    ({"decode_threads": 0}, "decode_threads must be >= 1"),
    ({"num_actors": 0}, "num_actors must be >= 1"),
    ({"num_gpus_per_actor": -1}, "num_gpus_per_actor must be >= 0"),
    ({"place_timeout_s": 0}, "place_timeout_s must be > 0"),
    ({"build_timeout_s": -1}, "build_timeout_s must be > 0"),
    ({"batch_timeout_s": 0}, "batch_timeout_s must be > 0"),
    ({"max_in_flight": 0}, "max_in_flight must be >= 1"),
    ({"rows_per_batch": 0}, "rows_per_batch must be >= 1"),
    ({"min_actors": -1}, "min_actors must be >= 0, got -1"),
    ({"max_actors": 0}, "max_actors must be >= 1, got 0"),
    ({"min_actors": 3, "max_actors": 2}, r"min_actors \(3\) must be <= max_actors \(2\): "
                                         "lower min_actors or raise max_actors"),
    ({"num_actors": 5, "max_actors": 2}, r"num_actors \(5\) must be within"),
    ({"num_actors": 1, "min_actors": 2}, r"num_actors \(1\) must be within"),
    ({"plan_lease_s": -1}, "plan_lease_s must be >= 0"),
    ({"tls_cert": "pool.crt"}, "TLS needs both tls_cert and tls_key"),
    ({"tls_key": "pool.key"}, "TLS needs both tls_cert and tls_key"),
    ({"actor": PlacementSettings()}, "takes ActorSettings, got PlacementSettings"),
])
def test_validation_names_the_setting_and_the_fix(settings, message):
    with pytest.raises(ConfigurationError, match=message):
        PoolSettings(**settings)


def test_infer_groups_its_keywords_by_owner():
    # Unknown names fail before anything runs (no DataFrame needed), naming the groups.
    with pytest.raises(ConfigurationError, match="infer\\(\\) has no setting 'topk': did "
                                                 "you mean top_k"):
        infer(None, "resnet18", topk=3)
    with pytest.raises(ConfigurationError, match="'start_timeout_s' is gone"):
        infer(None, "resnet18", start_timeout_s=3)
    with pytest.raises(InputError, match="pass input_col= too"):
        JobOptions(input_shape=(3, 8, 8))
    assert JobOptions(input_col="x", input_shape=[3, 8, 8]).input_shape == (3, 8, 8)
    assert ModelSource().weights is None  # a named torchvision model: its DEFAULT pretrained weights


@pytest.mark.parametrize("optimize", ["freeze", "compile"])
def test_udf_mode_refuses_what_it_cannot_honour(optimize):
    with pytest.raises(ConfigurationError, match=f"mode='udf' cannot run optimize='{optimize}'"
                                                 ".*use mode='hybrid'"):
        infer(None, "resnet18", mode="udf", optimize=optimize)


def test_pool_sizes_are_bounded_and_a_bad_one_is_a_value_error():
    from hybrid_infer.pool.settings import check_actor_count

    placement = PlacementSettings(min_actors=1, max_actors=3)
    assert [placement.bounded(n) for n in (0, 1, 2, 3, 9)] == [1, 1, 2, 3, 3]
    assert PlacementSettings().bounded(0) == 0 and PlacementSettings().bounded(9) == 9
    assert check_actor_count(0) == 0 and check_actor_count(2, placement) == 2
    # the Python API's usage errors are ValueErrors that say what to do
    for size in (-1, 1.5, "2"):
        with pytest.raises(ValueError, match="whole number >= 0.*pass 0 to free every actor"):
            check_actor_count(size)
    with pytest.raises(ValueError, match="between 1 .* and 3 .* cannot scale to 4"):
        check_actor_count(4, placement)
    with pytest.raises(ValueError, match="min_actors must be >= 0"):
        PoolSettings(min_actors=-2)


def test_a_lease_counts_until_released_or_expired_and_idleness_counts_from_its_end():
    from hybrid_infer.pool.leases import LeaseBook

    now = [100.0]
    book = LeaseBook(clock=lambda: now[0])
    assert book.last_end == 100.0 and book.active() == 0
    assert book.hold("task-a", 30) is True and book.hold("plan", 5) is True
    now[0] = 110.0
    assert book.hold("task-a", 30) is False  # a renewal: now until 140
    assert book.active() == 1 and book.last_end == 105.0  # the plan's lease expired at 105
    now[0] = 120.0
    book.release("task-a")
    assert book.active() == 0 and book.last_end == 120.0
    book.release("task-a")  # twice: nothing changes
    assert book.last_end == 120.0
