"""Kafka TLS/SASL settings for both client libraries (librdkafka and Faust's aiokafka), secrets from the env."""

from __future__ import annotations

import os
import ssl
from typing import Any

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


def faust_credentials(security: KafkaSecurity) -> Any:
    """The same settings as Faust's broker_credentials, or None for PLAINTEXT."""
    import faust

    context = ssl.create_default_context(cafile=security.ca_file) if security.protocol.endswith("SSL") else None
    if security.protocol == "SSL":
        return faust.SSLCredentials(context)
    if security.protocol.startswith("SASL"):
        username, password = credentials(security)
        return faust.SASLCredentials(username=username, password=password, ssl_context=context,
                                     mechanism=security.sasl_mechanism)
    return None
