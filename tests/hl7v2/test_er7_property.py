"""Property test: our reader and python-hl7 agree on every addressable value.

Messages are generated with random (valid) delimiter sets, Z-segments, repetitions, components,
sub-components and values holding escaped delimiters and hex escapes. python-hl7's tree is walked
and each node's unescaped text compared with `Message.get` at the matching path (a field or
component path returns the whole repetition/component, as python-hl7's `str()` of that node does).
"""

from __future__ import annotations

import hl7
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.hl7v2 import Message
from tests.hl7v2 import samples

DELIMITER_CHARS = "|^~\\&#$*@!%+:;/?=<>{}`'\""
PLAIN = "ABCXYZabcxyz0189 .-_,ÄéΩ漢"
SEGMENT_IDS = ["PID", "PV1", "ORC", "OBR", "OBX", "NTE", "IPC", "ZPI", "ZDS", "Z01"]


def _children(node: object) -> list:
    return [node] if isinstance(node, str) else list(node)  # type: ignore[call-overload]


def compare(text: str) -> int:
    """Assert agreement over the whole message; returns how many values were compared."""
    theirs = hl7.parse(text)
    ours = Message.parse(text)
    assert len(ours) == len(theirs)
    seen: dict[str, int] = {}
    checked = 0
    for seg in theirs:
        name = str(seg[0])
        k = seen[name] = seen.get(name, 0) + 1
        for f in range(1, len(seg)):
            base = f"{name}[{k}]-{f}"
            if name == "MSH" and f <= 2:
                assert ours.get(base) == str(seg[f])
                continue
            reps = _children(seg[f])
            expected_all = [v for v in (theirs.unescape(str(r)) for r in reps) if v]
            assert ours.get_all(base) == expected_all, base
            assert ours.get(base) == ((theirs.unescape(str(reps[0])) or None) if reps else None), base
            if k == 1:
                assert ours.get(f"{name}-{f}") == ours.get(base)
            for r, rep in enumerate(reps, 1):
                assert ours.get(f"{base}[{r}]") == (theirs.unescape(str(rep)) or None), (base, r)
                comps = _children(rep)
                for c, comp in enumerate(comps, 1):
                    path = f"{base}[{r}].{c}"
                    assert ours.get(path) == (theirs.unescape(str(comp)) or None), path
                    subs = _children(comp)
                    for s, sub in enumerate(subs, 1):
                        assert ours.get(f"{path}.{s}") == (theirs.unescape(str(sub)) or None), (path, s)
                        checked += 1
                    assert ours.get(f"{path}.{len(subs) + 1}") is None
                assert ours.get(f"{base}[{r}].{len(comps) + 1}") is None
            assert ours.get(f"{base}[{len(reps) + 1}]") is None
    return checked


@st.composite
def messages(draw: st.DrawFn) -> str:
    chosen = draw(st.permutations(DELIMITER_CHARS))
    fs, comp, rep, esc, sub = chosen[:5]
    truncation = chosen[5] if draw(st.booleans()) else ""
    used = set(chosen[:5]) | set(truncation)
    safe = [c for c in PLAIN + DELIMITER_CHARS if c not in used]
    run = st.text(alphabet=st.sampled_from(safe), min_size=1, max_size=5)
    escaped = st.sampled_from("FSTRE").map(lambda n: f"{esc}{n}{esc}")
    hexed = st.binary(min_size=1, max_size=3).map(lambda b: bytes(0x20 + x % 0x5F for x in b))
    hex_escape = hexed.map(lambda b: f"{esc}X{b.hex().upper()}{esc}")
    value = st.lists(st.one_of(run, run, escaped, hex_escape), max_size=3).map("".join)

    def join(sep: str, inner: st.SearchStrategy[str], most: int) -> st.SearchStrategy[str]:
        return st.lists(inner, min_size=1, max_size=most).map(sep.join)

    field = join(rep, join(comp, join(sub, value, 2), 3), 3)
    fields = st.lists(field, min_size=1, max_size=5).map(fs.join)
    letters, alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    random_id = st.tuples(*(st.sampled_from(c) for c in (letters, alnum, alnum))).map("".join)
    seg_id = st.one_of(st.sampled_from(SEGMENT_IDS), random_id.filter(lambda s: s not in ("MSH", "BHS", "FHS", "ZZE")))
    body = st.lists(st.tuples(seg_id, fields).map(lambda t: t[0] + fs + t[1]), min_size=1, max_size=4)
    msh = "MSH" + fs + comp + rep + esc + sub + truncation + fs + draw(fields)
    # A closing segment keeps python-hl7's whole-message strip() away from generated trailing spaces.
    return "\r".join([msh, *draw(body), f"ZZE{fs}END"]) + "\r"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_agrees_with_python_hl7(text: str) -> None:
    compare(text)
    # Bytes (UTF-8, no MSH-18) and LF line ends read the same.
    assert Message.parse(text.replace("\r", "\n").encode()).get_all("ZZE-1") == ["END"]


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_agrees_on_samples(name: str) -> None:
    assert compare(samples.ALL[name]) > 20
