"""Kafka plumbing on confluent-kafka: clients, admin, offsets and resets, producing, consuming, dead letters."""
