"""Load generator for the OpenAI-compatible server: per-request records -> metrics -> outputs."""
