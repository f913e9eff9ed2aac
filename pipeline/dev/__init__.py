"""Development tooling: a local Kafka broker and loopback servers (NATS, Redis, RabbitMQ), private topologies."""
