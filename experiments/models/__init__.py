"""Models the repository builds itself (no hub): the tiny random Qwen2 model."""
