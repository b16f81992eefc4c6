"""The stack: compose model, dependency graph, probes and the runtimes that run it.

Nothing here imports Typer or Rich; the CLI adapts it.
"""
