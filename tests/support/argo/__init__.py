"""Argo Workflows' published JSON schema (schema.json, see README.md) and the render helper of the Kubernetes tests."""
