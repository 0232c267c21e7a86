"""W1: a plain Flower app used to compare simulation engines."""
