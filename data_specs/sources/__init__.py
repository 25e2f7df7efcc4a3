"""Data generators and folder readers: `synth` (synthetic hospitals), `acdc`, `folder_pairing`, `partition` (virtual sites)."""
