"""The benchmark: model ceiling, naive baseline, each stage alone and the whole pipeline on a real broker."""
