"""Correlation: studies assembled from DICOM instances, the order registry, and the matcher that
joins an order and a stable study into exactly one `study.ready`."""
