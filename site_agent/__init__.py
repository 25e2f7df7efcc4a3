"""Site agent: local training, the federated client loop and inference, on the hospital side."""
