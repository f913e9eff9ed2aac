"""The stage runtime: the stage contract, a Faust app per stage, batches, metrics, supervision, backfill."""
