"""`make serve` / `make stop`: the vLLM server of a run."""
