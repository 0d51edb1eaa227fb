"""FHIR R4: resource builders for the engine's canonical records and a REST client.

- options.py: identifier systems and reference style (shared with the `fhir` destination's config).
- report.py: an AI result -> transaction Bundle (DiagnosticReport + Observations), idempotent.
- priority.py: a priority update -> JSON Patch of ServiceRequest.priority (or Task.priority).
- bundle.py: record reading, validation with fhir.resources (R4B models), deterministic JSON.
- client.py: the HTTP client (auth, TLS, timeouts) and the mapping of answers to the engine's errors.

The canonical record models stay in engine.mapping.records (a layer above): the builders read validated
records through Protocols (report.ResultRecord, priority.PriorityRecord) and never import them.
"""
