"""Scans and masks: `imageio`, `mask_io`, `dicom_seg`, `label_mapping`, the MONAI `transforms` and torch `datasets` (heavy imports stay inside these modules)."""
