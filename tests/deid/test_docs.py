"""docs/deidentification.md holds to the code: every profile field with its default, the profile examples
and their method, the worked before/after example recomputed cell by cell, the HL7 field table against
the rules, the method rules and codes, and the documented `radbridge deid` command run on a project."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from typer.testing import CliRunner

from engine.core.errors import ConfigError
from engine.deid import (
    BurnedInConfig,
    BurnedInDevice,
    DeidProfile,
    DicomDeidentifier,
    Hl7DeidConfig,
    RegionRule,
    SafePrivateTag,
    deidentify_hl7,
    load_profile,
    load_table,
    method,
)
from engine.deid.hl7 import CLEAR, DATE, DOB, NAME, OBX_VALUE, PATIENT, PROVIDER, PSEUDO, RULES, TEXT, UID
from engine.deid.profile import SECONDARY_CAPTURE_SOP_CLASSES
from engine.deid.pseudonyms import uid_pseudonym
from engine.deid.report import METHOD_CODES, method_codes
from engine.hl7v2 import Message
from tests.deid.data import ACCESSION, MRN, PHI, image, instance
from tests.deid.data import DOB as TEST_DOB
from tests.dicomdata import part10_bytes
from tests.phi import leaks_in_bytes

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "deidentification.md"
DOC = DOC_PATH.read_text()
KEY = b"k" * 32  # the test key the worked example names
PROFILE_BLOCK = re.compile(r"<!-- example: profile -->\s*```yaml\n(.*?)```(.*?)(?=<!-- example|\n## |\Z)", re.S)
REPORT_MARKER = "holds tags and action codes, never values, file names or the crosswalk:"
CLI_BLOCK = re.compile(r"<!-- example: cli -->\s*```sh\n(.*?)```", re.S)
MODELS: list[type[BaseModel]] = [DeidProfile, SafePrivateTag, BurnedInConfig, BurnedInDevice, RegionRule, Hl7DeidConfig]


def table_after(marker: str) -> list[list[str]]:
    """The cells of the markdown table right after `marker` (header and separator rows left out)."""
    start = DOC.index(marker) + len(marker)
    rows = []
    for line in DOC[start:].lstrip("\n").splitlines():
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[2:]


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def profile_examples() -> list[tuple[str, str]]:
    """(yaml text, the text after it up to the next example or section)."""
    return PROFILE_BLOCK.findall(DOC)


# -- settings


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_field_is_documented_with_its_default(model: type[BaseModel]) -> None:
    rows = table_after(f"<!-- fields: {model.__name__} -->")
    documented = {ticked(r[0])[0]: r[1] for r in rows}
    assert set(documented) == set(model.model_fields), model.__name__  # nothing missing, nothing invented
    for name, cell in documented.items():
        field = model.model_fields[name]
        if cell == "required":
            assert field.is_required(), name
        elif cell.startswith("`"):
            default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
            assert yaml.safe_load(ticked(cell)[0]) == default, name
        else:  # prose: a list or a nested model too long to write in a cell
            assert field.default_factory is not None, name
        assert f"`{name}`" in DOC


def test_prose_defaults_say_what_the_code_has() -> None:
    from engine.deid.profile import DEFAULT_DESCRIPTOR_WORDS

    assert "125 words" in DOC and len(set(DEFAULT_DESCRIPTOR_WORDS)) == 125
    assert SECONDARY_CAPTURE_SOP_CLASSES == ["1.2.840.10008.5.1.4.1.1.7"] + [
        f"1.2.840.10008.5.1.4.1.1.7.{n}" for n in range(1, 5)
    ]
    assert "`2023`, `2024b` and `2026c`" in DOC and "655 rows" in DOC
    from engine.deid import editions

    assert editions() == ["2023", "2024b", "2026c"] and len(load_table("2026c").rows) == 655


def test_profile_examples_load_and_state_their_method(tmp_path: Path) -> None:
    examples = profile_examples()
    assert len(examples) == 2
    profiles = []
    for n, (text, after) in enumerate(examples):
        path = tmp_path / f"profile{n}.yaml"
        path.write_text(text)
        profile = load_profile(path)
        stated = re.search(r"Method: `([a-z-]+)`", after)
        assert stated is not None, text
        assert method(profile) == stated.group(1)
        profiles.append((profile, yaml.safe_load(text)))
    (complete, raw), (limited, _) = profiles
    assert set(raw) == set(DeidProfile.model_fields)  # the complete example writes every setting
    assert set(raw["burned_in"]) == set(BurnedInConfig.model_fields)
    assert set(raw["hl7"]) == set(Hl7DeidConfig.model_fields)
    assert method(complete) == "safe-harbor" and complete.burned_in.sop_classes == SECONDARY_CAPTURE_SOP_CLASSES
    assert complete.safe_private[0].group == 0x0019 and complete.safe_private[0].offset == 0x23
    assert method(limited) == "limited-data-set" and limited.retain_longitudinal_temporal


def test_invalid_profiles_are_refused_as_documented(tmp_path: Path) -> None:
    path = tmp_path / "deid.yaml"
    path.write_text("retain_uid: true\n")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    example = re.search(r"e\.g\. `deid\.yaml:(.*?)`", DOC)
    assert example is not None and str(info.value) == f"{path}:{example.group(1)}"
    for text, message in (
        ("table_edition: '1999'\n", "unknown edition"),
        ("safe_private: [{creator: X, tag: '(0019,xx23)'}]\n", "retain_safe_private is off"),
        ("retain_safe_private: true\nsafe_private: [{creator: X, tag: '(0018,xx23)'}]\n", "odd"),
        ("burned_in: {rules: [{modality: US, regions: [[10, 0, 5, 8]]}]}\n", "0 <= x0 < x1"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_profile(path)


# -- the worked example


def _value(cell: str) -> tuple[str | None, str]:
    """('D', '`x`') from 'D → `x`'; (None, cell) when no action is named."""
    m = re.match(r"^([A-Z]) → (.*)$", cell)
    return (m.group(1), m.group(2)) if m else (None, cell)


def _tag(name: str) -> int:
    m = re.match(r"^\(([0-9A-F]{4}),([0-9A-F]{4})\)$", name)
    return (int(m.group(1), 16) << 16) | int(m.group(2), 16) if m else int(Tag(name))


def _before(rows: list[list[str]]) -> Dataset:
    ds = Dataset()
    for cells in rows:
        name, before = ticked(cells[0])[0], cells[1]
        if before == "*absent*":
            continue
        value = ticked(before)[0]
        tag = _tag(name)
        if Tag(tag).is_private:
            ds.private_block(tag >> 16, "ACME PRIVATE", create=True).add_new(tag & 0xFF, "LO", value)
        else:
            setattr(ds, name, value)
    return ds


def _shown(ds: Dataset, name: str) -> str:
    elem = ds[_tag(name)]
    if elem.VR == "SQ":
        return "\\".join(str(item.CodeValue) for item in elem.value)
    if isinstance(elem.value, MultiValue | list):
        return "\\".join(str(v) for v in elem.value)
    return str(elem.value)


def test_worked_example_is_what_the_code_does() -> None:
    rows = table_after("<!-- example: before-after -->")
    assert len(rows) == 21 and "`ACME PRIVATE`" in DOC and 'test key `b"k" * 32`' in DOC
    source = _before(rows)
    limited = DeidProfile.model_validate(yaml.safe_load(profile_examples()[1][0]))
    table = load_table("2026c")
    for column, profile in ((3, DeidProfile()), (4, limited)):
        outcome = DicomDeidentifier(profile, KEY).apply(source)
        ds = outcome.dataset
        assert ds is not None
        actions = dict(outcome.actions)
        for cells in rows:
            name = ticked(cells[0])[0]
            listed = None if cells[2] == "—" else cells[2]
            if not Tag(_tag(name)).is_private:
                assert table.lookup(_tag(name)) == listed, name
            action, shown = _value(cells[column])
            assert actions.get(name) == action, (name, column)
            if shown == "*removed*":
                assert _tag(name) not in ds, name
            elif shown == "*empty*":
                assert _tag(name) in ds and not ds[_tag(name)].value, name
            else:
                assert _shown(ds, name) == ticked(shown)[0], (name, column)
        assert actions["(0029,0010)"] == "X"  # the creator goes with its block, as the text says
        assert leaks_in_bytes(str(ds).encode(), PHI) == []
    assert source.PatientName == "Testpatient^Alice"  # the input is untouched


# -- HL7


def test_hl7_field_table_matches_the_rules() -> None:
    columns = {PATIENT: 1, NAME: 1, PSEUDO: 2, UID: 3, DATE: 4, DOB: 4, CLEAR: 5, PROVIDER: 6, TEXT: 7}
    columns[OBX_VALUE] = 7
    expected = {seg: [set[int]() for _ in range(8)] for seg in RULES}
    for seg, rules in RULES.items():
        for number, (kind, _) in rules.items():
            expected[seg][columns[kind]].add(number)
    documented: dict[str, list[set[int]]] = {}
    for cells in table_after("<!-- hl7-fields -->"):
        numbers = [set()] + [{int(n) for n in re.findall(r"\d+", c)} for c in cells[1:]]
        for seg in cells[0].split(", "):
            documented[seg] = numbers
    assert documented == expected
    assert RULES["PID"][5][0] == NAME and RULES["PID"][7][0] == DOB and RULES["OBX"][5][0] == OBX_VALUE


def test_hl7_dropped_segments() -> None:
    dropped = ("NK1", "GT1", "IN1", "IN2", "IN3", "PD1", "ROL", "ACC", "BHS", "FHS")
    paragraph = DOC[DOC.index("**Dropped:**") :].split("\n\n")[0]
    assert all(s in paragraph for s in dropped) and not set(dropped) & set(RULES)
    message = (
        "MSH|^~\\&|RIS|GENHOSP|RADBRIDGE|AIHUB|20261121101500||ORM^O01|CTRL-1|P|2.3.1\r"
        f"PID|1||{MRN}^^^GENHOSP^MR||Testpatient^Alice||{TEST_DOB}|F\r"
        "NK1|1|Testrelative^Bob|SPO\r"
        "IN1|1|PLAN1|INS1|Fake Insurance|||||||||||||Testpatient^Alice\r"
        "ZPI|1|Testpatient\r"
        "ZDS|1.2.826.0.1.3680043.8.498.5^RADBRIDGE^Application^DICOM\r"
        f"OBR|1|PLC-1|{ACCESSION}\r"
    )
    out = Message.parse(deidentify_hl7(message, DeidProfile(), KEY))
    assert [s.name for s in out] == ["MSH", "PID", "ZDS", "OBR"]
    assert out.get("PID-7") == "1951" and out.get("MSH-7") == "2026" and out.get("PID-8") == "F"


# -- method and codes


def test_method_rules_are_the_documented_ones() -> None:
    section = DOC[DOC.index("## The method") :]
    limited = ticked(re.search(r"- `limited-data-set` when any of (.*?) is on", section, re.S).group(1))  # type: ignore[union-attr]
    safe = ticked(re.search(r"`safe-harbor` otherwise\.(.*?)keep it `safe-harbor`", section, re.S).group(1))  # type: ignore[union-attr]
    booleans = {n for n, f in DeidProfile.model_fields.items() if f.annotation is bool}
    booleans |= {f"hl7.{n}" for n in Hl7DeidConfig.model_fields}
    assert set(limited) | set(safe) == booleans and not set(limited) & set(safe)

    def with_option(name: str) -> DeidProfile:
        if name.startswith("hl7."):
            return DeidProfile(hl7={name[4:]: True})
        return DeidProfile(**{name: True})

    assert all(method(with_option(n)) == "limited-data-set" for n in limited)
    assert all(method(with_option(n)) == "safe-harbor" for n in safe)


def test_method_code_table() -> None:
    rows = table_after("<!-- method-codes -->")
    assert {r[0]: r[1] for r in rows} == METHOD_CODES
    for code, _, when in rows:
        if when == "always":
            assert code in method_codes(DeidProfile(), False)
        elif ticked(when):
            option = ticked(when)[0]
            assert code not in method_codes(DeidProfile(), False)
            assert code in method_codes(DeidProfile(**{option: True}), False), option
        else:  # Clean Pixel Data: set only when this instance's pixels were cleaned
            assert method_codes(DeidProfile(), True) == ["113100", code]


# -- the command


def test_documented_command_runs_on_a_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import select

    from engine.cli import app
    from engine.runtime.context import open_context
    from engine.security import keyring
    from engine.store.tables import Disclosure
    from tests.conftest import write_project

    commands = [shlex.split(line) for block in CLI_BLOCK.findall(DOC) for line in block.splitlines() if line.strip()]
    assert len(commands) == 1 and commands[0][:2] == ["radbridge", "deid"]
    args = commands[0][1:]
    in_dir, out_dir, profile_path = Path(args[1]), Path(args[2]), Path(args[args.index("--profile") + 1])
    synopsis = re.search(r"```\nradbridge deid IN_DIR OUT_DIR (.*?)\n```", DOC)
    assert synopsis is not None
    help_text = CliRunner().invoke(app, ["deid", "--help"]).output
    for option in re.findall(r"--[a-z]+", synopsis.group(1)):
        assert option in help_text, option

    root = write_project(tmp_path / "p")
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    monkeypatch.chdir(root)
    (root / profile_path).write_text(profile_examples()[0][0])  # the complete profile, project cxr-vendor
    src = root / in_dir / "Testpatient_Alice"
    src.mkdir(parents=True)
    sops = []
    for n in (1, 2):
        ds = instance(number=n)
        sops.append(str(ds.SOPInstanceUID))
        (src / f"{MRN}_{n}.dcm").write_bytes(part10_bytes(ds))
    (src / "us.dcm").write_bytes(part10_bytes(image("US")))  # 48x64: the profile's US rule wants 600x800
    (src / "notes.txt").write_text(f"Testpatient {MRN}\n")

    result = CliRunner().invoke(app, [*args, "--root", str(root)])
    assert result.exit_code == 0, result.output
    report_path = out_dir / "deid-report.json"
    expected = f"2 file(s) de-identified (safe-harbor), 1 blocked, 1 skipped; report: {report_path}"
    assert result.output.strip() == expected
    assert leaks_in_bytes(result.output.encode(), PHI) == []

    out = root / out_dir
    for path in out.rglob("*"):
        assert leaks_in_bytes(str(path.relative_to(out)).encode(), PHI) == [], path
        if path.is_file():
            assert leaks_in_bytes(path.read_bytes(), (*PHI, *sops)) == [], path
    ctx = open_context(root)
    try:
        key = ctx.keyring.derived_key("deid:cxr-vendor")  # the documented derivation
        names = sorted(p.name for p in out.rglob("*.dcm"))
        assert names == sorted(f"{uid_pseudonym(key, 'cxr-vendor', s)}.dcm" for s in sops)
        assert {p.parent.name[:2] for p in out.rglob("*.dcm")} == {"d-"}
        with ctx.db.connect() as conn:
            rows = conn.execute(select(Disclosure.__table__)).mappings().all()
        assert len(rows) == 1
        row = rows[0]
        assert row["patient_idx"] == ctx.index("mrn", MRN) and row["items"] == 2
        disclosed_as = ("Example University registry", "registry export", "safe-harbor")
        assert (row["recipient"], row["purpose"], row["method"]) == disclosed_as
        assert row["study_id"] is None and row["job_id"] is None
    finally:
        ctx.close()

    report = json.loads((root / report_path).read_text())
    documented = {tuple(ticked(r[0])): ticked(r[1]) for r in table_after(REPORT_MARKER)}
    assert set(report) == {k for keys in documented for k in keys}
    assert set(report["totals"]) == set(documented[("totals",)])
    for name in ("files", "blocked", "skipped"):
        assert report[name] and all(set(entry) == set(documented[(name,)]) for entry in report[name]), name
    assert len(report["options"]) == 7 and report["burned_in_mode"] == "clean" and report["project"] == "cxr-vendor"
    assert "no region rule matches (modality US, 48x64)" in report["blocked"][0]["reason"]
    assert report["skipped"][0]["note"] == "not a DICOM Part 10 file"
    assert "crosswalk" not in json.dumps(report) and "uids" not in report
