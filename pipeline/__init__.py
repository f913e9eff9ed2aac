"""AI inference pipelines on Kafka: the framework (Kafka, Avro, Faust, offsets, CLI)."""
