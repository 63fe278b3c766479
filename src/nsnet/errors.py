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


class KernelError(NsnetError):
    """The kernel refused a request; `code` is its errno. Raised by kernel/ in place of the netlink library's
    own errors, so that no layer above kernel/ speaks pyroute2."""

    status = 500

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class KernelFeatureMissing(NsnetError):
    """The running kernel lacks something a request needs (e.g. CONFIG_IPVLAN)."""

    status = 501
