"""Deployment: the fedseg CLI root, the local federation launcher, TLS helpers, Dockerfiles."""
