"""Experiment repository for tool-calling LLM fine-tunes: train -> merge -> serve -> eval -> bench -> report."""
