"""nsnet's configuration: `<root>/config.toml`, optional.

    default-address-pools = [{base = "10.10.0.0/16", size = 24}]   # replaces Docker's defaults
    reserved = ["172.22.0.0/16", "10.8.0.0/24"]                      # office, VPN: never allocate
    swarm-address-grace = 86400    # s a swarm node may stay Down before its overlay addresses are freed
    swarm-key-rotation = 43200     # s between two WireGuard key rotations of an encrypted overlay's tunnel

Unknown keys are refused rather than ignored: a typo in `reserved` silently dropping the office
range is exactly the lockout this file exists to prevent.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass

from nsnet.errors import NsnetError
from nsnet.ipam.evidence import Network
from nsnet.ipam.pools import DEFAULT_POOLS, Pool, parse_network, parse_pools

FILENAME = "config.toml"
KEYS = ("default-address-pools", "reserved", "swarm-address-grace", "swarm-key-rotation")
ADDRESS_GRACE = 86400.0   # s: a day, as long as an outage of a host is likely to be fixed by its return
KEY_ROTATION = 43200.0    # s: 12 h, Docker's rotation of its encrypted overlays' keys


@dataclass(frozen=True)
class Config:
    pools: tuple[Pool, ...] = DEFAULT_POOLS
    reserved: tuple[Network, ...] = ()
    path: str | None = None          # the file read; None when there was none
    pools_from_file: bool = False    # False: Docker's default pools are in force
    address_grace: float = ADDRESS_GRACE   # s: a Down swarm node keeps its overlay addresses this long
    key_rotation: float = KEY_ROTATION     # s: between two WireGuard key rotations (encrypted overlays)

    def as_dict(self) -> dict:
        """What `nsnet info` shows."""
        return {
            "ConfigFile": self.path,
            "DefaultAddressPools": [p.as_dict() for p in self.pools],
            "DefaultAddressPoolsSource": "config" if self.pools_from_file else "default",
            "Reserved": [str(n) for n in self.reserved],
            "SwarmAddressGrace": self.address_grace,
            "SwarmKeyRotation": self.key_rotation,
        }


def load(root: str) -> Config:
    """Read `<root>/config.toml`; a missing file means the defaults."""
    path = os.path.join(root, FILENAME)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return Config()
    except tomllib.TOMLDecodeError as e:
        raise NsnetError(f"cannot parse {path}: {e}; fix the TOML syntax") from None
    except OSError as e:
        raise NsnetError(f"cannot read {path}: {e.strerror}; check its permissions") from None
    return from_dict(data, path)


def from_dict(data: dict, path: str = FILENAME) -> Config:
    for key in data:
        if key not in KEYS:
            raise NsnetError(f"unknown key {key!r} in {path}; known keys are {', '.join(KEYS)}")
    pools, from_file = DEFAULT_POOLS, False
    if "default-address-pools" in data:
        try:
            pools = parse_pools(data["default-address-pools"])
        except NsnetError as e:
            raise NsnetError(f"{path}: {e}") from None
        if not pools:
            raise NsnetError(f"{path}: default-address-pools is empty; list at least one pool or remove the key")
        from_file = True
    reserved = []
    raw = data.get("reserved", [])
    if not isinstance(raw, list):
        raise NsnetError(f"{path}: reserved must be a list of CIDR ranges, e.g. reserved = [\"172.22.0.0/16\"]")
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            raise NsnetError(f"{path}: reserved[{i}] must be a string such as \"172.22.0.0/16\", got {item!r}")
        try:
            reserved.append(parse_network(item, f"reserved[{i}]"))
        except NsnetError as e:
            raise NsnetError(f"{path}: {e}") from None
    grace = data.get("swarm-address-grace", ADDRESS_GRACE)
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0:
        raise NsnetError(f"{path}: swarm-address-grace must be a number of seconds, e.g. swarm-address-grace = 86400")
    rotation = data.get("swarm-key-rotation", KEY_ROTATION)
    if isinstance(rotation, bool) or not isinstance(rotation, (int, float)) or rotation < 1:
        raise NsnetError(f"{path}: swarm-key-rotation must be a number of seconds, at least 1, "
                         f"e.g. swarm-key-rotation = 43200")
    return Config(pools=pools, reserved=tuple(reserved), path=path, pools_from_file=from_file,
                  address_grace=float(grace), key_rotation=float(rotation))
