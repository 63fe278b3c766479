"""nsnet: container networks from the kernel's own parts, with Docker's face."""

__version__ = "0.1.0"

# Where an engine keeps its state when neither --root nor NSNET_ROOT says otherwise.
DEFAULT_ROOT = "/var/lib/nsnet"
