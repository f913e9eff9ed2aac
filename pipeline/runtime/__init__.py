"""The stage runtime: the stage contract, the pipelined loop and the Faust app per stage, batches, the process
shell, metrics, supervision, backfill."""
