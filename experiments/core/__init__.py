"""Plumbing every stage uses: config, run folders, paths, environments, processes, memory, CLI."""
