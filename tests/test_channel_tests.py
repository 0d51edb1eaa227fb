"""`radbridge test` passes on the shipped channel tests and reports failures as `file [line N]: reason`."""

from pathlib import Path

from typer.testing import CliRunner

from engine.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_channel_tests_pass() -> None:
    result = CliRunner().invoke(app, ["test", "--root", str(ROOT)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("11 passed, 0 failed")


def test_failures_name_file_and_line(tmp_path: Path) -> None:
    case = tmp_path / "bad_test.yaml"
    case.write_text(
        "channel: ris-orders\ncases:\n  - name: fine\n    input: samples/hl7/orm-o01-ct-head.hl7\n    ack: AA\n"
        "  - name: wrong\n    input: samples/hl7/orm-o01-ct-head.hl7\n    ack: AE\n    sent: {orders: 2}\n"
    )
    result = CliRunner().invoke(app, ["test", str(case), "--root", str(ROOT)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == [
        f"{case} [line 6]: wrong: ack AA, expected AE",
        f"{case} [line 6]: wrong: destination orders received 1 message(s), expected 2",
        "1 passed, 1 failed",
    ]
