"""Gateway addresses: pool allocation, stability across reloads, static addresses."""

from __future__ import annotations

from status_builders import cond, config, gateway, listener, status_of

from gatewayd.routing.config.model import GatewayAddress
from gatewayd.routing.control.bindings import Resolution
from gatewayd.routing.control.resolve import resolve


def addresses(res: Resolution, name: str) -> list[str]:
    st = status_of(res, "Gateway", name)
    return [a["value"] for a in st.get("addresses", [])]


def bound(res: Resolution, name: str) -> set[str]:
    return {b.address for b in res.listeners if b.gateway_name == name}


def test_pool_starts_at_dot_one_in_creation_order() -> None:
    res = resolve(
        config(
            gateway("b", creation_timestamp="2024-01-02T00:00:00Z"),
            gateway("a", creation_timestamp="2024-01-03T00:00:00Z"),
            gateway("c", creation_timestamp="2024-01-01T00:00:00Z"),
        )
    )
    assert addresses(res, "c") == ["127.0.10.1"]
    assert addresses(res, "b") == ["127.0.10.2"]
    assert addresses(res, "a") == ["127.0.10.3"]
    assert res.gateway_addresses == {
        ("default", "c"): "127.0.10.1",
        ("default", "b"): "127.0.10.2",
        ("default", "a"): "127.0.10.3",
    }
    assert bound(res, "a") == {"127.0.10.3"}


def test_allocation_is_stable_across_reloads() -> None:
    first = resolve(config(gateway("a"), gateway("b"), gateway("c")))
    assert addresses(first, "b") == ["127.0.10.2"]
    # "a" is deleted and a new, older-looking Gateway appears: b and c keep theirs.
    second = resolve(
        config(gateway("b"), gateway("c"), gateway("new", creation_timestamp="")),
        previous_addresses=first.gateway_addresses,
    )
    assert addresses(second, "b") == ["127.0.10.2"]
    assert addresses(second, "c") == ["127.0.10.3"]
    assert addresses(second, "new") == ["127.0.10.1"]  # the freed address
    assert ("default", "a") not in second.gateway_addresses


def test_previous_address_outside_the_pool_is_reallocated() -> None:
    res = resolve(
        config(gateway("a")),
        previous_addresses={("default", "a"): "10.1.2.3"},
    )
    assert addresses(res, "a") == ["127.0.10.1"]


def test_other_subnet_skips_network_address() -> None:
    res = resolve(config(gateway("a"), gateway("b")), address_pool="10.20.0.0/30")
    assert addresses(res, "a") == ["10.20.0.1"]
    assert addresses(res, "b") == ["10.20.0.2"]


def test_pool_exhausted_is_address_not_assigned_and_others_still_serve() -> None:
    res = resolve(config(gateway("a"), gateway("b")), address_pool="127.0.10.1/32")
    assert addresses(res, "a") == ["127.0.10.1"]
    st = status_of(res, "Gateway", "b")
    assert cond(st, "Accepted") == ("True", "Accepted")
    assert cond(st, "Programmed") == ("False", "AddressNotAssigned")
    assert bound(res, "b") == set()
    assert bound(res, "a") == {"127.0.10.1"}


def test_static_address() -> None:
    res = resolve(config(gateway("a", addresses=["127.0.0.7"])))
    assert addresses(res, "a") == ["127.0.0.7"]
    assert bound(res, "a") == {"127.0.0.7"}
    assert res.gateway_addresses == {}  # only pool addresses are remembered


def test_static_address_claimed_twice_loses_for_the_younger_gateway() -> None:
    res = resolve(
        config(
            gateway("young", addresses=["127.0.0.7"], creation_timestamp="2024-02-01T00:00:00Z"),
            gateway("old", addresses=["127.0.0.7"], creation_timestamp="2024-01-01T00:00:00Z"),
            gateway("other"),
        )
    )
    assert cond(status_of(res, "Gateway", "old"), "Programmed") == ("True", "Programmed")
    young = status_of(res, "Gateway", "young")
    assert cond(young, "Programmed") == ("False", "AddressNotUsable")
    assert "default/old" in young["conditions"][1]["message"]
    assert bound(res, "young") == set()
    assert bound(res, "other") == {"127.0.10.1"}


def test_static_address_cannot_take_a_held_pool_address() -> None:
    res = resolve(
        config(gateway("dyn"), gateway("static", addresses=["127.0.10.1"])),
        previous_addresses={("default", "dyn"): "127.0.10.1"},
    )
    assert addresses(res, "dyn") == ["127.0.10.1"]
    assert cond(status_of(res, "Gateway", "static"), "Programmed") == (
        "False",
        "AddressNotUsable",
    )


def test_pool_skips_static_addresses() -> None:
    res = resolve(
        config(
            gateway("static", addresses=["127.0.10.1"], creation_timestamp="2024-01-01T00:00:00Z"),
            gateway("dyn", creation_timestamp="2024-01-02T00:00:00Z"),
        )
    )
    assert addresses(res, "static") == ["127.0.10.1"]
    assert addresses(res, "dyn") == ["127.0.10.2"]


def test_not_local_static_address_is_not_usable() -> None:
    res = resolve(
        config(gateway("a", addresses=["192.0.2.10", "127.0.0.8"]), gateway("b")),
        is_local_address=lambda a: a.startswith("127."),
    )
    st = status_of(res, "Gateway", "a")
    assert cond(st, "Accepted") == ("True", "Accepted")
    assert cond(st, "Programmed") == ("False", "AddressNotUsable")
    assert "192.0.2.10" in st["conditions"][1]["message"]
    assert addresses(res, "a") == []  # nothing is bound while not programmed
    assert bound(res, "a") == set()
    assert bound(res, "b") == {"127.0.10.1"}


def test_not_local_pool_address() -> None:
    res = resolve(config(gateway("a")), is_local_address=lambda a: False)
    assert cond(status_of(res, "Gateway", "a"), "Programmed") == ("False", "AddressNotUsable")
    assert res.listeners == ()


def test_unsupported_address_type_is_not_accepted() -> None:
    gw = gateway("a", addresses=[GatewayAddress(type="Hostname", value="gw.example.com")])
    res = resolve(config(gw))
    st = status_of(res, "Gateway", "a")
    assert cond(st, "Accepted") == ("False", "UnsupportedAddress")
    assert cond(st, "Programmed") == ("False", "Invalid")
    assert "addresses" not in st
    assert res.listeners == ()


def test_empty_ip_address_value_gets_a_pool_address() -> None:
    res = resolve(config(gateway("a", addresses=[GatewayAddress(value="")])))
    assert addresses(res, "a") == ["127.0.10.1"]
    assert res.gateway_addresses == {("default", "a"): "127.0.10.1"}


def test_every_listener_binds_every_address() -> None:
    res = resolve(
        config(
            gateway("a", listener("h1", 80), listener("h2", 8080), addresses=["127.0.0.7", "::1"])
        )
    )
    assert {(b.listener_name, b.address) for b in res.listeners} == {
        ("h1", "127.0.0.7"),
        ("h1", "::1"),
        ("h2", "127.0.0.7"),
        ("h2", "::1"),
    }
