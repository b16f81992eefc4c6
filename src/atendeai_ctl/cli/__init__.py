"""Thin Typer adapters: parse, call the library, render."""
