"""The CLI's command groups, one module each; `pipeline.cli` puts them together."""
