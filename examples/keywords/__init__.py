"""A fifth stage, made with `pipeline stage new`: keywords of each passage (YAKE), stored and searchable."""
