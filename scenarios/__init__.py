"""The simulated world: datasets, partitions and (later) devices, links and attacks."""
