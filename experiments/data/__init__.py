"""Datasets -> OpenAI-style `messages` + `tools` rows (the schema every stage trains, serves and scores)."""
