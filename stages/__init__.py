"""The pipeline's stages: small modules of domain code on top of the framework."""
