"""Errors of the hub. Each says what is wrong and where; the server maps each type to one HTTP status."""

from __future__ import annotations


class HubError(Exception):
    """Base class: a hub operation was refused, and nothing it would have stored was kept."""


class InvalidAdapterError(HubError):
    """The adapter's files cannot be served over this base (format, safety, compatibility)."""


class TooLargeError(InvalidAdapterError):
    """An upload, archive or adapter is over a size or file-count cap."""


class InvalidNameError(HubError):
    """A name (adapter or alias) does not follow the naming rule."""


class NotFoundError(HubError):
    """No adapter, version, alias or key by that name."""


class GoneError(HubError):
    """The version exists but is deprecated: it is no longer served to new requests."""


class ConflictError(HubError):
    """The operation contradicts the hub's state (e.g. purging a version an alias still points at)."""


class SourceError(HubError):
    """An adapter source (folder, upload, Hugging Face repo) could not be read."""


class InvalidInputError(HubError):
    """A value given to the hub (a rating, a policy, a filter) is out of range; the message names it."""
