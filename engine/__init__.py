"""radbridge: an HL7/FHIR integration engine for AI radiology."""

__version__ = "0.1.0"
