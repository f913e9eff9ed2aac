"""AI inference pipelines on Kafka. A stage author imports from here: the stage contract, its results and its
typed options; `pipeline.testing` runs a stage in tests."""

from pipeline.runtime.stage import Incoming, Options, Reject, Result, Route, Stage, TransientError

__all__ = ["Incoming", "Options", "Reject", "Result", "Route", "Stage", "TransientError"]
