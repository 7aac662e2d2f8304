"""The errors a user can meet, grouped by who has to act.

The grouping is the contract with both front ends: the CLI exits 1 for any
of them, and the gRPC server maps ``InvalidInput`` to INVALID_ARGUMENT and
``PreconditionFailed`` to FAILED_PRECONDITION, so virt-launcher puts the
message into the VMI's events unchanged. Messages are therefore written for
the person reading those events: what is wrong and what to change.
"""

from __future__ import annotations


class HookError(Exception):
    """Base of every error whose message is meant for a user."""


class InvalidInput(HookError):
    """The domain XML, the VMI or a value given to the hook cannot be used as is."""


class PreconditionFailed(HookError):
    """The input is fine, but the node or the configuration does not fit it."""
