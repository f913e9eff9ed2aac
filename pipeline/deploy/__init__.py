"""Deploying to Kubernetes: manifests rendered from topics.yaml, and offline validation of k8s/."""
