"""The contract harness: a registry of every public callable and shared tests run over it."""
