"""Errors that reach the user: one line, saying what is wrong and what to do next."""


class NsnetError(Exception):
    """A refused request. `status` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFound(NsnetError):
    status = 404


class Conflict(NsnetError):
    status = 409


class KernelFeatureMissing(NsnetError):
    """The running kernel lacks something a request needs (e.g. CONFIG_IPVLAN)."""

    status = 501
