"""Personalisation algorithms on torch models: inside (IOP-FL, FedBN, Ditto, FedProx) and outside (routing)."""
