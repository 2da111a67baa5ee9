"""Past one machine: Kubernetes manifests from the same config."""
