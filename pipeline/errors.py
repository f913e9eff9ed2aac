"""Errors a user can act on: each carries a message that says what to do next."""


class PipelineError(Exception):
    """An error the CLI reports as a plain message (no traceback) with a non-zero exit."""

    exit_code = 2


class ConfigError(PipelineError):
    """topics.yaml (or another config file) is missing or invalid."""


class KafkaUnavailable(PipelineError):
    """The broker could not be reached or refused a request."""
