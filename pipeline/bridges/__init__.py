"""Bridges between Kafka and NATS JetStream, RabbitMQ and Redis Streams: sources into a Kafka topic
(`pipeline bridge in`), sinks out of one (`pipeline bridge out`)."""
