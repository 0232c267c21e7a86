"""The simulation engine: the Flower ``Grid`` over simulated clients (`grid`), the system
model around each message (`system`, `payload`), round policies, the virtual clock,
per-round records, executors and checkpoints.

Imports the foundation (`fedsim.core`) and the simulated world (`fedsim.scenarios`,
`fedsim.clients`, `fedsim.strategies`); never the app layer above it.
"""
