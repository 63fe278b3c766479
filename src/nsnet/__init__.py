"""nsnet: container networks from the kernel's own parts, with Docker's face."""

__version__ = "0.1.0"
