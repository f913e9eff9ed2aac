"""Avro: the schemas kept in schemas/, single-object and Schema Registry framing, codecs per topic, compatibility."""
