"""Weights on the wire: `safetensors_header` (the one defensive header reader), `bundle`, `routing_bundle`, `unet_layout`."""
