"""Client side: the Flower ClientApp, local training, and the model registry."""
