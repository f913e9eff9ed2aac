"""AI inference pipelines on Kafka. A stage author imports from here: the stage contract and its results."""

from pipeline.runtime.stage import Incoming, Reject, Result, Route, Stage, TransientError

__all__ = ["Incoming", "Reject", "Result", "Route", "Stage", "TransientError"]
