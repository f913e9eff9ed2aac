"""The online gateway (`pipeline serve`): NATS request/reply answered by stages in-process, micro-batched, with
every exchange recorded to Kafka so online traffic can be replayed."""
