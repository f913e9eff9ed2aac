"""Kafka TLS/SASL settings for librdkafka (every client of the pipeline), secrets from the environment."""

from __future__ import annotations

import os

from pipeline.config import KafkaSecurity
from pipeline.errors import ConfigError


def credentials(security: KafkaSecurity) -> tuple[str, str]:
    """(username, password) from the environment variables the topology names; never from the file."""
    found = [os.environ.get(security.username_env), os.environ.get(security.password_env)]
    if not all(found):
        raise ConfigError(
            f"{security.protocol} needs a user and password: set the environment variables "
            f"{security.username_env} and {security.password_env}"
        )
    return found[0], found[1]


def librdkafka_security(security: KafkaSecurity) -> dict[str, str]:
    conf = {"security.protocol": security.protocol}
    if security.protocol.startswith("SASL"):
        username, password = credentials(security)
        conf.update({"sasl.mechanism": security.sasl_mechanism, "sasl.username": username,
                     "sasl.password": password})
    if security.protocol.endswith("SSL") and security.ca_file:
        conf["ssl.ca.location"] = security.ca_file
    return conf
