"""Visitor location: City database, geoip2fast country fallback, time zone, client IP."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import geoip2.database
import geoip2fast
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from conversations import geo
from conversations.geo import Location, client_ip, locate

# Records shaped like GeoIP2 City responses; addresses from MaxMind's own test data.
LONDON = {
    "city": {"geoname_id": 2643743, "names": {"en": "London"}},
    "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
    "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
}
LINKOPING = {
    "city": {"names": {"en": "Linköping", "de": "Linköping"}},
    "subdivisions": [
        {"iso_code": "E", "names": {"en": "Östergötland County"}},
        {"iso_code": "X", "names": {"en": "Second level"}},
    ],
    "country": {"iso_code": "SE", "names": {"en": "Sweden"}},
}
COUNTRY_ONLY = {"country": {"iso_code": "IT", "names": {"en": "Italy"}}}
# Present so that a lookup of a private address *would* find something.
PRIVATE = {"city": {"names": {"en": "Intranet"}}, "country": {"names": {"en": "Nowhere"}}}


def write_city_db(path):
    """Write a small GeoIP2-City database to ``path`` and return it as a string."""
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoIP2-City",
        languages=["en"],
        description="Human Handoff test City database",
    )
    writer.insert_network(IPSet(["81.2.69.0/24"]), LONDON)
    writer.insert_network(IPSet(["89.160.20.112/28"]), LINKOPING)
    writer.insert_network(IPSet(["2a02:ff40::/32"]), COUNTRY_ONLY)
    writer.insert_network(IPSet(["10.0.0.0/8", "127.0.0.0/8", "::1/128"]), PRIVATE)
    writer.to_db_file(str(path))
    return str(path)


@pytest.fixture
def city_db(tmp_path, settings):
    """Point GEOIP_PATH at a freshly written City database."""
    settings.GEOIP_PATH = write_city_db(tmp_path / "City.mmdb")
    return settings.GEOIP_PATH


@pytest.fixture
def no_city_db(settings):
    """Run without a City database."""
    settings.GEOIP_PATH = None


@pytest.fixture
def databases_unused(monkeypatch):
    """Fail the test if either IP database is consulted."""

    def fail(*args, **kwargs):
        raise AssertionError("an IP database was consulted")

    monkeypatch.setattr(geo, "_city_reader", fail)
    monkeypatch.setattr(geo._country_db, "country_code", fail)


# --------------------------------------------------------------------------- City database


def test_the_written_test_database_is_a_city_database_geoip2_accepts(tmp_path):
    path = write_city_db(tmp_path / "City.mmdb")
    with geoip2.database.Reader(path) as reader:
        response = reader.city("81.2.69.160")
        assert reader.metadata().database_type == "GeoIP2-City"
    assert response.city.name == "London"
    assert response.country.iso_code == "GB"


def test_city_database_gives_city_region_and_country(city_db):
    assert locate("81.2.69.160") == Location("London", "England", "United Kingdom", "city_db")


def test_city_database_region_is_the_first_subdivision_and_keeps_accents(city_db):
    found = locate("89.160.20.115")
    assert (found.city, found.region, found.country) == (
        "Linköping",
        "Östergötland County",
        "Sweden",
    )


def test_city_database_wins_over_the_time_zone(city_db):
    assert locate("81.2.69.160", "America/New_York").city == "London"


def test_city_database_record_without_a_city_still_gives_the_country(city_db):
    assert locate("2a02:ff40::1") == Location(country="Italy", source="city_db")


def test_ipv4_mapped_ipv6_addresses_are_looked_up_as_ipv4(city_db):
    assert locate("::ffff:81.2.69.160").city == "London"


def test_address_missing_from_the_city_database_falls_back_to_the_country_database(city_db):
    assert locate("8.8.8.8") == Location(country="United States", source="country_db")


def test_geoip_path_may_be_a_directory_holding_geolite2_city(tmp_path, settings):
    write_city_db(tmp_path / "GeoLite2-City.mmdb")
    settings.GEOIP_PATH = str(tmp_path)
    assert locate("81.2.69.160").source == "city_db"


def test_city_database_reader_is_opened_once_per_path(city_db, monkeypatch):
    opened = []
    real_reader = geoip2.database.Reader

    def counting_reader(*args, **kwargs):
        opened.append(args[0])
        return real_reader(*args, **kwargs)

    monkeypatch.setattr(geoip2.database, "Reader", counting_reader)
    for _ in range(3):
        assert locate("81.2.69.160").city == "London"
    assert opened == [city_db]


def test_missing_city_database_falls_back_and_warns_once(tmp_path, settings, caplog):
    settings.GEOIP_PATH = str(tmp_path / "absent.mmdb")
    with caplog.at_level(logging.WARNING, logger="conversations.geo"):
        assert locate("8.8.8.8").source == "country_db"
        assert locate("8.8.8.8").source == "country_db"
    assert len([r for r in caplog.records if "absent.mmdb" in r.getMessage()]) == 1


def test_corrupt_city_database_falls_back_and_warns_once(tmp_path, settings, caplog):
    corrupt = tmp_path / "corrupt.mmdb"
    corrupt.write_bytes(b"not a maxmind database" * 50)
    settings.GEOIP_PATH = str(corrupt)
    with caplog.at_level(logging.WARNING, logger="conversations.geo"):
        assert locate("8.8.8.8", "Europe/Berlin").country == "United States"
        assert locate("10.0.0.1", "Europe/Berlin").city == "Berlin"
        assert locate("8.8.8.8").country == "United States"
    assert len([r for r in caplog.records if "corrupt.mmdb" in r.getMessage()]) == 1


# --------------------------------------------------------------------------- country database


@pytest.mark.parametrize(
    ("ip", "country"),
    [
        ("8.8.8.8", "United States"),
        ("::ffff:8.8.8.8", "United States"),
        ("2001:4860:4860::8888", "United States"),
        ("81.2.69.160", "United Kingdom"),
        ("193.99.144.80", "Germany"),
    ],
)
def test_without_a_city_database_the_country_comes_from_geoip2fast(no_city_db, ip, country):
    assert locate(ip, "Asia/Tokyo") == Location(country=country, source="country_db")


def test_country_database_loads_once_and_answers_many_threads(no_city_db, monkeypatch):
    loads = []
    real_class = geoip2fast.GeoIP2Fast

    def counting_class(*args, **kwargs):
        loads.append(threading.get_ident())
        return real_class(*args, **kwargs)

    monkeypatch.setattr(geoip2fast, "GeoIP2Fast", counting_class)
    monkeypatch.setattr(geo, "_country_db", geo._CountryDB())  # not loaded yet
    ips = ["8.8.8.8", "81.2.69.160", "193.99.144.80"] * 40
    with ThreadPoolExecutor(max_workers=8) as pool:
        countries = list(pool.map(lambda ip: locate(ip).country, ips))
    assert countries == ["United States", "United Kingdom", "Germany"] * 40
    assert len(loads) == 1


def test_country_names_fall_back_to_iso3166_tab_without_geoip2fast_names(no_city_db, monkeypatch):
    geo._country_db.ensure_loaded()
    monkeypatch.setattr(geo._country_db, "names", {})
    assert locate("8.8.8.8").country == "United States"
    assert locate(None, "Europe/London").country == "Britain (UK)"


# --------------------------------------------------------------------------- no IP answer


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "::1",
        "10.1.2.3",
        "172.16.5.4",
        "192.168.1.20",
        "100.64.0.1",
        "169.254.10.1",
        "fe80::1",
        "fd00::1",
        "192.0.2.1",
        "0.0.0.0",
        "224.0.0.1",
        "::ffff:10.0.0.1",
    ],
)
def test_private_and_loopback_addresses_skip_the_databases_and_use_the_time_zone(
    city_db, databases_unused, ip
):
    assert locate(ip, "Europe/Berlin") == Location(
        city="Berlin", country="Germany", source="timezone"
    )


@pytest.mark.parametrize("ip", [None, "", "not-an-ip", "999.1.1.1", "8.8.8.8.8"])
def test_missing_or_invalid_ips_use_the_time_zone(databases_unused, ip):
    assert locate(ip, "America/New_York").source == "timezone"


def test_nothing_known_gives_an_empty_location(databases_unused):
    assert locate("127.0.0.1", "UTC") == Location()
    assert locate(None) == Location()


# --------------------------------------------------------------------------- time zone


@pytest.mark.parametrize(
    ("timezone", "city", "country"),
    [
        ("Europe/Berlin", "Berlin", "Germany"),
        ("America/New_York", "New York", "United States"),
        ("America/Argentina/Buenos_Aires", "Buenos Aires", "Argentina"),
        ("America/Port_of_Spain", "Port of Spain", "Trinidad and Tobago"),
        ("Europe/London", "London", "United Kingdom"),
        ("Europe/Oslo", "Oslo", "Norway"),
        ("Asia/Ho_Chi_Minh", "Ho Chi Minh", "Vietnam"),
        ("Australia/Sydney", "Sydney", "Australia"),
        # Legacy names that browsers still report resolve to the canonical zone's city.
        ("Asia/Calcutta", "Kolkata", "India"),
        ("America/Buenos_Aires", "Buenos Aires", "Argentina"),
        ("US/Eastern", "New York", "United States"),
        ("Japan", "Tokyo", "Japan"),
        ("europe/paris", "Paris", "France"),
    ],
)
def test_time_zone_gives_its_principal_city_and_country(databases_unused, timezone, city, country):
    assert locate(None, timezone) == Location(city=city, country=country, source="timezone")


@pytest.mark.parametrize(
    "timezone",
    [
        None,
        "",
        "UTC",
        "Etc/UTC",
        "Etc/GMT+3",
        "GMT",
        "CET",
        "EST5EDT",
        "Factory",
        "garbage",
        "Europe/Atlantis",
        "../../etc/passwd",
        "Europe/Berlin/../../x",
        "Europe/" + "Berlin" * 20,
        "Europe/Berlin" + " " * 100,
        42,
    ],
)
def test_time_zones_without_a_place_give_nothing(databases_unused, timezone):
    assert locate(None, timezone) == Location()


# --------------------------------------------------------------------------- client IP


def scope(client=("203.0.113.9", 50123), *forwarded, name=b"x-forwarded-for"):
    """Build an ASGI HTTP scope with the given peer and X-Forwarded-For headers."""
    headers = [(b"host", b"example.com")] + [(name, value.encode()) for value in forwarded]
    return {"type": "http", "client": client, "headers": headers}


def test_without_trusted_proxies_the_peer_is_the_client_and_forwarded_headers_are_ignored():
    spoofed = scope(("203.0.113.9", 50123), "6.6.6.6")
    assert client_ip(spoofed, trusted_proxy_count=0) == "203.0.113.9"


def test_without_a_peer_address_the_client_is_unknown():
    assert client_ip(scope(None), trusted_proxy_count=0) is None
    assert client_ip({"type": "http", "headers": []}, trusted_proxy_count=0) is None
    assert client_ip(scope(("/run/daphne.sock", 0)), trusted_proxy_count=0) is None


def test_one_trusted_proxy_takes_the_rightmost_forwarded_address():
    assert client_ip(scope(("10.0.0.2", 1), "198.51.100.7"), trusted_proxy_count=1) == (
        "198.51.100.7"
    )


def test_one_trusted_proxy_ignores_addresses_the_client_prepended():
    forged = scope(("10.0.0.2", 1), "6.6.6.6, 198.51.100.7")
    assert client_ip(forged, trusted_proxy_count=1) == "198.51.100.7"


def test_two_trusted_proxies_take_the_second_address_from_the_right():
    chain = scope(("10.0.0.3", 1), "6.6.6.6, 198.51.100.7, 10.0.0.2")
    assert client_ip(chain, trusted_proxy_count=2) == "198.51.100.7"


def test_repeated_forwarded_headers_are_joined_in_order():
    repeated = scope(("10.0.0.3", 1), "6.6.6.6", "198.51.100.7, 10.0.0.2")
    assert client_ip(repeated, trusted_proxy_count=2) == "198.51.100.7"
    assert client_ip(repeated, trusted_proxy_count=1) == "10.0.0.2"


def test_header_names_are_matched_without_regard_to_case():
    mixed = scope(("10.0.0.2", 1), "198.51.100.7", name=b"X-Forwarded-For")
    assert client_ip(mixed, trusted_proxy_count=1) == "198.51.100.7"


def test_fewer_forwarded_entries_than_proxies_fall_back_to_the_peer():
    assert client_ip(scope(("10.0.0.3", 1), "198.51.100.7"), trusted_proxy_count=2) == "10.0.0.3"
    assert client_ip(scope(("10.0.0.3", 1)), trusted_proxy_count=1) == "10.0.0.3"


def test_invalid_entry_at_the_trusted_position_gives_no_client():
    assert client_ip(scope(("10.0.0.2", 1), "198.51.100.7, unknown"), trusted_proxy_count=1) is None


def test_invalid_entries_keep_their_position_and_are_never_returned():
    chain = scope(("10.0.0.3", 1), "<script>, 198.51.100.7, unknown")
    assert client_ip(chain, trusted_proxy_count=2) == "198.51.100.7"
    assert client_ip(chain, trusted_proxy_count=3) is None


def test_blank_forwarded_entries_are_skipped():
    assert client_ip(scope(("10.0.0.2", 1), "198.51.100.7, ,", ""), trusted_proxy_count=1) == (
        "198.51.100.7"
    )


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        ("198.51.100.7:5123", "198.51.100.7"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
    ],
)
def test_forwarded_addresses_are_normalised(forwarded, expected):
    assert client_ip(scope(("10.0.0.2", 1), forwarded), trusted_proxy_count=1) == expected


def test_ipv4_mapped_peer_addresses_are_reported_as_ipv4():
    assert client_ip(scope(("::ffff:203.0.113.9", 1)), trusted_proxy_count=0) == "203.0.113.9"


# --------------------------------------------------------------------------- Location


def test_location_as_dict_holds_the_visitor_fields_only():
    found = Location("London", "England", "United Kingdom", "city_db")
    assert found.as_dict() == {"city": "London", "region": "England", "country": "United Kingdom"}
