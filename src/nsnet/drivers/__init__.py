"""Network drivers: one module each, one small protocol (see base.Driver)."""
from __future__ import annotations

from ..errors import NsnetError
from .base import Driver
from .bridge import BridgeDriver
from .host import HostDriver, NullDriver
from .ipvlan import IpvlanDriver
from .macvlan import MacvlanDriver
from .overlay import OverlayDriver

_DRIVERS: dict[str, type[Driver]] = {
    "bridge": BridgeDriver,
    "host": HostDriver,
    "null": NullDriver,
    "macvlan": MacvlanDriver,
    "ipvlan": IpvlanDriver,
    "overlay": OverlayDriver,
}
ALIASES = {"none": "null"}
DEFAULT = "bridge"   # a network created without --driver


def registered() -> dict[str, type[Driver]]:
    """Every driver, by name, in the order their built-in networks are made."""
    return dict(_DRIVERS)


def driver_class(name: str) -> type[Driver]:
    cls = _DRIVERS.get(ALIASES.get(name, name))
    if cls is None:
        raise NsnetError(f'plugin "{name}" not found: nsnet has the drivers {", ".join(sorted(_DRIVERS))}', 404)
    return cls
