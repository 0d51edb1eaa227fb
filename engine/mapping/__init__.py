"""The mapping language: declarative YAML turning HL7 v2 messages into canonical records (and
records into outbound HL7), compiled once at load. See docs/mapping.md.

    compiled = load_mapping(Path("mappings/orm-to-order.yaml"), root)
    records = compiled.apply(Message.parse(raw), site_tz=ZoneInfo("Europe/Berlin"))

`apply` raises MappingRefused (type not accepted; HL7 0357 code 200/201, answer AR) or
MappingError (content; code 101/102/103/100, answer AE); both carry `.problem()`.
"""

from engine.mapping.apply import CompiledMapping
from engine.mapping.compiler import compile_checked, compile_mapping
from engine.mapping.errors import MappingError, MappingRefused
from engine.mapping.functions import FUNCTIONS
from engine.mapping.lint import check_mapping_text, lint_mapping_file, load_mapping
from engine.mapping.records import MODELS, FinalReport, Order, PatientEvent, Record

__all__ = [
    "FUNCTIONS",
    "MODELS",
    "CompiledMapping",
    "FinalReport",
    "MappingError",
    "MappingRefused",
    "Order",
    "PatientEvent",
    "Record",
    "check_mapping_text",
    "compile_checked",
    "compile_mapping",
    "lint_mapping_file",
    "load_mapping",
]
