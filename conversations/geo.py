"""Detect a visitor's location from the client IP or, failing that, the browser's time zone.

Sources, tried in order (SPEC §3 "Visitors"):

1. a MaxMind GeoIP2/GeoLite2 City database at ``settings.GEOIP_PATH`` (city, region, country);
2. the offline country database shipped inside the ``geoip2fast`` package (country only);
3. the browser's IANA time zone, mapped through the tz database's ``zone.tab`` (city, country).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import threading
import zoneinfo
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import geoip2.database
import geoip2.errors
import maxminddb
from django.conf import settings

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Django's own GEOIP_PATH convention is a directory; accept that too, with MaxMind's file name.
DEFAULT_CITY_FILENAME = "GeoLite2-City.mmdb"

# The IPv6 file of geoip2fast holds IPv4 networks as well; the IPv4-only file is the fallback.
GEOIP2FAST_FILES = ("geoip2fast-ipv6.dat.gz", "geoip2fast.dat.gz")

# The longest IANA zone name is ~32 characters; anything much longer is not a zone.
MAX_TIMEZONE_LENGTH = 64
TIMEZONE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9_+-]+){0,2}")
# Bare legacy names that are links to a real place ("Japan", "Singapore"). Abbreviations such
# as "CET" or "EST5EDT" are links too since tzdata 2024b, but to an arbitrary city.
BARE_PLACE_RE = re.compile(r"[A-Z][a-z]+")
COUNTRY_CODE_RE = re.compile(r"[A-Z]{2}")
# Codes that geoip2fast uses for a continent rather than a country.
NOT_COUNTRIES = frozenset({"EU", "AP"})
XFF_HEADER = "x-forwarded-for"


@dataclass(frozen=True)
class Location:
    """A detected visitor location; empty strings when unknown."""

    city: str = ""
    region: str = ""
    country: str = ""
    source: str = ""  # "city_db" | "country_db" | "timezone" | ""

    def as_dict(self) -> dict[str, str]:
        """Return the fields stored on a Visitor."""
        return {"city": self.city, "region": self.region, "country": self.country}


# --------------------------------------------------------------------------- client IP


def _text(value: Any) -> str | None:
    """Decode an ASGI header name or value (bytes per the spec, str from lenient callers)."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, str):
        return value
    return None


def _parse_ip(value: Any) -> IPAddress | None:
    """Parse one address as a server or proxy writes it; return None if it is not one."""
    text = _text(value)
    if text is None:
        return None
    text = text.strip()
    if not text or len(text) > 64:
        return None
    # Some proxies append the client port: "203.0.113.7:5123" or "[2001:db8::1]:5123".
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    # Dual-stack servers report IPv4 clients as ::ffff:a.b.c.d; the databases key them as IPv4.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _peer_ip(scope: dict) -> str | None:
    """Return the address of the TCP peer, i.e. the client or the nearest proxy."""
    client = scope.get("client")
    if not client:
        return None
    addr = _parse_ip(client[0])
    return str(addr) if addr is not None else None


def client_ip(scope: dict, *, trusted_proxy_count: int) -> str | None:
    """Return the client's IP address for an ASGI scope, or None if it cannot be told.

    With ``trusted_proxy_count`` N > 0 the N-th ``X-Forwarded-For`` entry from the right is
    the address the outermost trusted proxy saw; everything left of it is client-supplied.
    """
    if trusted_proxy_count <= 0:
        # Without trusted proxies any X-Forwarded-For header is the client's own invention.
        return _peer_ip(scope)
    values = [
        _text(value) or ""
        for name, value in scope.get("headers") or ()
        if (_text(name) or "").lower() == XFF_HEADER
    ]
    # Repeated headers are one list (RFC 9110 §5.3). Blank items are dropped: trusted proxies
    # never write one, so only client-supplied items to the left could shift. Non-blank
    # garbage ("unknown") keeps its position so that it cannot move the count.
    hops = [hop.strip() for hop in ",".join(values).split(",") if hop.strip()]
    if len(hops) < trusted_proxy_count:
        # Fewer proxies than configured (e.g. a direct request): the peer is the best answer.
        return _peer_ip(scope)
    addr = _parse_ip(hops[-trusted_proxy_count])
    # An unparseable entry at the trusted position means the client is unknown; anything
    # further left is attacker-controlled, so do not search for another candidate.
    return str(addr) if addr is not None else None


# --------------------------------------------------------------------------- locate


def _public_address(ip: str | None) -> IPAddress | None:
    """Parse ``ip``; return None for addresses no database can place (private, loopback…)."""
    addr = _parse_ip(ip)
    if addr is None or not addr.is_global or addr.is_multicast:
        return None
    return addr


def _geoip_path() -> str | None:
    """Return the configured City database file, if any."""
    # Settings may be unconfigured in scripts and isolated tests: then there is no database.
    path = getattr(settings, "GEOIP_PATH", None) if settings.configured else None
    if not path:
        return None
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, DEFAULT_CITY_FILENAME)
    return path


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(key: str, message: str, *args: object) -> None:
    """Log a warning the first time ``key`` is seen, so a bad database does not flood logs."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message, *args)


# A reader (or None when the file could not be opened) per path: opening mmaps the file once.
_city_readers: dict[str, geoip2.database.Reader | None] = {}
_city_readers_lock = threading.Lock()


def _city_reader(path: str) -> geoip2.database.Reader | None:
    """Return the cached reader for ``path``, opening it on first use."""
    try:
        return _city_readers[path]
    except KeyError:
        pass
    with _city_readers_lock:
        if path not in _city_readers:
            try:
                reader = geoip2.database.Reader(path, locales=["en"])
            except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
                reader = None
                _warn_once(f"open:{path}", "GeoIP City database %s cannot be opened: %s", path, exc)
            _city_readers[path] = reader
        return _city_readers[path]


def _locate_city_db(path: str, addr: IPAddress) -> Location | None:
    """Look ``addr`` up in the City database at ``path``."""
    reader = _city_reader(path)
    if reader is None:
        return None
    try:
        response = reader.city(str(addr))
    except geoip2.errors.AddressNotFoundError:
        return None
    except (ValueError, TypeError, maxminddb.InvalidDatabaseError) as exc:
        # TypeError: the file is not a City database; the others: corrupt data section.
        _warn_once(f"lookup:{path}", "GeoIP City database %s cannot be read: %s", path, exc)
        return None
    city = response.city.name or ""
    region = (response.subdivisions[0].name or "") if response.subdivisions else ""
    country = response.country.name or ""
    if not (city or region or country):
        return None
    return Location(city=city, region=region, country=country, source="city_db")


class _CountryDB:
    """The geoip2fast country database, loaded once on first use.

    geoip2fast keeps its tables in module globals that every load reassigns one by one, so
    loading and lookups share one lock; a lookup takes microseconds, so contention is moot.
    Nothing else in the project may create a ``GeoIP2Fast`` instance for the same reason.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded = False
        self._db: Any = None
        self.names: dict[str, str] = {}

    def _load(self) -> None:
        """Load the database; called with the lock held."""
        saved_env = {key: os.environ.get(key) for key in ("PYTHONWARNINGS", "PYTHONIOENCODING")}
        try:
            import geoip2fast
            import geoip2fast.geoip2fast as g2f_module
        except ImportError as exc:
            _warn_once("geoip2fast", "geoip2fast is not installed: %s", exc)
            return
        finally:
            # Importing geoip2fast overwrites these for the whole process; put them back.
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        package_dir = os.path.dirname(geoip2fast.__file__)
        for filename in GEOIP2FAST_FILES:
            # An absolute path: with a bare name geoip2fast prefers a file in the CWD.
            try:
                self._db = geoip2fast.GeoIP2Fast(
                    geoip2fast_data_file=os.path.join(package_dir, filename)
                )
                break
            except Exception as exc:  # GeoIPError wraps whatever pickle or gzip raised
                _warn_once(
                    f"geoip2fast:{filename}", "geoip2fast %s failed to load: %s", filename, exc
                )
        if self._db is None:
            return
        # Its code → English name table, the same names MaxMind's City database uses.
        table = getattr(g2f_module, "geoipCountryNamesDict", None) or {}
        self.names = {
            code: name
            for code, name in table.items()
            if COUNTRY_CODE_RE.fullmatch(code) and code not in NOT_COUNTRIES and name
        }

    def ensure_loaded(self) -> None:
        """Load the database unless that was already tried."""
        if self._loaded:
            return
        with self._lock:
            if not self._loaded:
                try:
                    self._load()
                finally:
                    # Set last: readers outside the lock must not see a half-loaded state.
                    self._loaded = True

    def country_code(self, addr: IPAddress) -> str:
        """Return the ISO country code for ``addr``, or "" if unknown."""
        self.ensure_loaded()
        if self._db is None:
            return ""
        with self._lock:
            result = self._db.lookup(str(addr))
        code = getattr(result, "country_code", "") or ""
        if getattr(result, "is_private", False) or not COUNTRY_CODE_RE.fullmatch(code):
            return ""  # "--" for reserved or unknown networks, "" for errors
        return "" if code in NOT_COUNTRIES else code


_country_db = _CountryDB()


def _locate_country_db(addr: IPAddress) -> Location | None:
    """Look ``addr`` up in the geoip2fast country database."""
    code = _country_db.country_code(addr)
    country = _country_name(code) if code else ""
    return Location(country=country, source="country_db") if country else None


@dataclass(frozen=True)
class _ZoneTables:
    """The parts of the tz database needed to place a zone name."""

    zone_country: dict[str, str]  # lower-cased zone name → country code
    zone_names: dict[str, str]  # lower-cased zone name → zone name as IANA spells it
    links: dict[str, str]  # lower-cased legacy name → target zone name
    iso_names: dict[str, str]  # country code → name from iso3166.tab (fallback only)


def _zoneinfo_dirs() -> list[Any]:
    """Return candidate tz database directories, in the order ``zoneinfo`` itself uses."""
    dirs: list[Any] = [Path(p) for p in zoneinfo.TZPATH]
    # The tzdata PyPI package, for hosts without a system tz database (slim containers).
    with contextlib.suppress(ModuleNotFoundError):
        dirs.append(resources.files("tzdata").joinpath("zoneinfo"))
    return dirs


def _read(directory: Any, name: str) -> str:
    """Return a text file of the tz database, or "" if absent."""
    try:
        return directory.joinpath(name).read_text(encoding="utf-8")
    except (OSError, ValueError):
        return ""


def _rows(text: str) -> list[list[str]]:
    """Split a tab-separated tz table into rows, skipping comments."""
    return [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]


def _parse_zone_tables(directory: Any) -> _ZoneTables | None:
    """Parse zone.tab, zone1970.tab, tzdata.zi and iso3166.tab in ``directory``."""
    zone_tab = _read(directory, "zone.tab")
    if not zone_tab:
        return None
    zone_country: dict[str, str] = {}
    zone_names: dict[str, str] = {}
    # zone1970.tab lists each zone once with the most populous country first; zone.tab has a
    # row per country (Europe/Oslo → NO, where zone1970.tab folds Oslo into Berlin), so it wins.
    for text in (_read(directory, "zone1970.tab"), zone_tab):
        for row in _rows(text):
            if len(row) >= 3:
                zone_country[row[2].lower()] = row[0].split(",")[0]
                zone_names[row[2].lower()] = row[2]
    links: dict[str, str] = {}
    for line in _read(directory, "tzdata.zi").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "L":
            links[parts[2].lower()] = parts[1]
    iso_names = {row[0]: row[1] for row in _rows(_read(directory, "iso3166.tab")) if len(row) >= 2}
    return _ZoneTables(zone_country, zone_names, links, iso_names)


@lru_cache(maxsize=1)
def _zone_tables() -> _ZoneTables | None:
    """Load the tz tables from the first directory that has them."""
    for directory in _zoneinfo_dirs():
        tables = _parse_zone_tables(directory)
        if tables is not None:
            return tables
    _warn_once("zone.tab", "No tz database zone.tab found; install the tzdata package")
    return None


def _country_name(code: str) -> str:
    """Return the English name of a country code, preferring geoip2fast's (MaxMind) names."""
    _country_db.ensure_loaded()
    if code in _country_db.names:
        return _country_db.names[code]
    # iso3166.tab names differ in places ("Britain (UK)"), so they are only the fallback.
    tables = _zone_tables()
    return tables.iso_names.get(code, "") if tables is not None else ""


def _locate_timezone(timezone: str | None) -> Location | None:
    """Place an IANA zone name such as ``America/New_York`` at its principal city."""
    if not isinstance(timezone, str) or len(timezone) > MAX_TIMEZONE_LENGTH:
        return None
    name = timezone.strip()
    if not TIMEZONE_RE.fullmatch(name):
        return None
    if "/" not in name and not BARE_PLACE_RE.fullmatch(name):
        return None  # UTC, GMT, CET, EST5EDT…
    tables = _zone_tables()
    if tables is None:
        return None
    key = name.lower()
    # Legacy names (Asia/Calcutta, US/Eastern) resolve to their canonical zone and its city.
    for _ in range(4):
        if key in tables.zone_country or key not in tables.links:
            break
        key = tables.links[key].lower()
    code = tables.zone_country.get(key)
    if code is None:
        return None  # Etc/GMT+3, Etc/UTC, garbage
    country = _country_name(code)
    city = tables.zone_names[key].rsplit("/", 1)[-1].replace("_", " ")
    return Location(city=city, country=country, source="timezone")


def locate(ip: str | None, timezone: str | None = None) -> Location:
    """Return the best location for a client IP, falling back to its browser time zone."""
    addr = _public_address(ip)
    if addr is not None:
        path = _geoip_path()
        found = _locate_city_db(path, addr) if path else None
        found = found or _locate_country_db(addr)
        if found is not None:
            return found
    return _locate_timezone(timezone) or Location()
