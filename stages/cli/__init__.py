"""The stages' commands plugged into the `pipeline` CLI (search, collections, classifier) and the demo."""
