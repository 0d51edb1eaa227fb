from pathlib import Path

from engine.hl7v2.validate import validate_structure

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "hl7"


def test_valid_samples_pass_including_choice_groups() -> None:
    # ORM^O01 carries OBR in the ORM_O01_CHOICE group: hl7apy alone reports a missing RQD here.
    for name in ("orm-o01-ct-head.hl7", "orm-o01-two-orders.hl7", "omi-o23-mr-knee.hl7", "adt-a40-merge.hl7"):
        assert validate_structure((SAMPLES / name).read_text(encoding="latin-1")) is None, name


def test_structure_errors_name_elements_not_values() -> None:
    text = (SAMPLES / "orm-o01-ct-head.hl7").read_text(encoding="latin-1")
    without_pid = "\r".join(s for s in text.replace("\n", "\r").split("\r") if not s.startswith("PID"))
    problem = validate_structure(without_pid)
    assert problem == "ValidationError: Missing required child ORM_O01_PATIENT.PID"
    assert validate_structure("not hl7 at all").startswith("ParserError")
