"""The foundation every other layer builds on: errors, registries, schema parsing, seeding,
wire keys, record access, array views and plug-in loading.

Imports only the standard library, numpy, torch and ``flwr.app``; nothing here knows
about the simulated world, the engine or the command line.
"""
