"""Exceptions with messages meant for people.

Every error a user can cause (bad input files, a wrong option, a model that does not fit the data)
is raised as a :class:`CascadesegError` subclass with a one-line message that names the file and
what is wrong. The command line prints that line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations


class CascadesegError(Exception):
    """Base class of errors whose message is shown to the user as is."""


class InputError(CascadesegError):
    """Input data is missing, unreadable or inconsistent (names the file and the problem)."""


class ConfigError(CascadesegError):
    """A configuration file or a ``key=value`` override is invalid."""


class ModelError(CascadesegError):
    """A model or checkpoint cannot be used (wrong channels, label space, unknown name...)."""
