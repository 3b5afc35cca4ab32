"""The Arrow fast paths of ingest give exactly what the pandas definitions give.

Each fast path skips work only where it can prove the answer (plain digit strings, well-formed
timestamps, strings without blanks at their ends) and hands everything else to the pandas
definition, so these tests feed both the easy and the awkward inputs.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest

from pipelines.adapters.base import (
    ISO_SECONDS,
    _parse_json_native,
    epoch_to_utc,
    epoch_to_utc_array,
    local_to_utc,
    local_to_utc_array,
    numeric_value,
    numeric_value_array,
    read_jsonl,
    read_jsonl_table,
)
from pipelines.contract import (
    EVENTS_SCHEMA,
    _hash_fields,
    bot_mask,
    clean_strings,
    conform_events,
    conform_table,
    content_event_ids,
    content_ids,
    first_occurrences,
    flag_bots,
    numpy_bool,
)
from pipelines.identity import Pseudonymiser
from pipelines.ingest import _repeated
from pipelines.lake import Lake
from tests.conftest import native_or_skip


def _same_times(arrow: pa.Array, pandas: pd.Series) -> bool:
    """Arrow microseconds against pandas nanoseconds (rounded down to microseconds)."""
    got = [None if v is None else pd.Timestamp(v) for v in arrow.to_pylist()]
    want = [None if pd.isna(v) else v.floor("us") for v in pandas]
    return got == want


def test_content_ids_are_stable_across_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids computed by the original implementation: existing lakes must keep deduplicating."""
    rows = pd.DataFrame(
        [
            {"platform": "web", "user_id": "u1", "item_id": "i1", "action": "view", "value": 1.0, "text": None},
            {
                "platform": "ios",
                "user_id": "uabc",
                "item_id": None,
                "action": "search",
                "value": np.nan,
                "text": "red shoes",
            },
            {"platform": "miniapp", "user_id": "o1", "item_id": "g9", "action": "purchase", "value": -0.0, "text": ""},
        ]
    ).assign(
        ts=pd.to_datetime(
            ["2024-05-01T12:00:00Z", "2024-05-01T12:00:00.123456Z", "1999-12-31T23:59:59Z"], utc=True, format="ISO8601"
        )
    )
    expected = [
        "h7c8f73cad759585879a05151b75665bf",
        "h6855ada599f2b9e1545be5d80d2a4033",
        "heb11c676f7d331ef8ba702f04252b9c0",
    ]
    events = conform_events(rows)
    assert content_event_ids(events).tolist() == expected
    assert content_ids(conform_table(rows)).to_pylist() == expected
    monkeypatch.setenv("XINTEREST_NATIVE", "0")  # the Python fallback gives the same ids
    assert content_ids(conform_table(rows)).to_pylist() == expected


def _hash64(data: bytes) -> int:
    """pipelines/_native.c's hash64 of one string, in Python: FNV-1a's steps over the 8-byte
    little-endian words (the length folded into the start), then over the last bytes, then
    MurmurHash3's fmix64."""
    mask, prime, n = (1 << 64) - 1, 0x100000001B3, len(data)
    h = 0xCBF29CE484222325 ^ n
    whole = n - n % 8
    for i in range(0, whole, 8):
        h = ((h ^ int.from_bytes(data[i : i + 8], "little")) * prime) & mask
    for byte in data[whole:]:
        h = ((h ^ byte) * prime) & mask
    for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h = ((h ^ (h >> 33)) * multiplier) & mask
    return h ^ (h >> 33)


def _random_strings(seed: int, longest: int) -> tuple[list[bytes], bytes, np.ndarray]:
    """Random byte strings of every length from 0 to ``longest``, joined, with int64 offsets."""
    rng = np.random.default_rng(seed)
    strings = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in range(longest + 1)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in strings])]).astype(np.int64)
    return strings, b"".join(strings), offsets


def test_native_kernels_match_their_python_definitions_at_every_length_around_the_block() -> None:
    """pipelines/_native.c against hashlib's BLAKE2b and the Python hash64, on strings of 0 to
    400 bytes (one, two and three 128-byte blocks, and their edges) and on sliced Arrow arrays
    with nulls; the extension must be built where CI runs."""
    native = native_or_skip()
    strings, data, offsets = _random_strings(0, 400)
    one_field = native.blake2b_128_joined([(data, offsets, None)], b"\x1f", b"\x00")
    assert one_field == b"".join(hashlib.blake2b(s, digest_size=16).digest() for s in strings)
    # three fields, joined across block edges, with missing values
    rng = np.random.default_rng(1)
    valid = np.frombuffer(rng.integers(0, 2, 401, dtype=np.uint8).astype(bool).tobytes(), dtype=bool)
    reversed_ = b"".join(strings[::-1])
    reversed_offsets = np.concatenate([[0], np.cumsum([len(s) for s in strings[::-1]])]).astype(np.int64)
    three = native.blake2b_128_joined(
        [(data, offsets, None), (reversed_, reversed_offsets, valid), (data, offsets, None)], b"--", b"?"
    )
    joined = [
        a + b"--" + (b if ok else b"?") + b"--" + a for a, b, ok in zip(strings, strings[::-1], valid, strict=True)
    ]
    assert three == b"".join(hashlib.blake2b(s, digest_size=16).digest() for s in joined)
    assert np.frombuffer(native.hash64(data, offsets), dtype=np.uint64).tolist() == [_hash64(s) for s in strings]
    # content ids as ingest computes them: a slice of an Arrow array, nulls replaced
    column = pa.array(["a", None, "\u00e9" * 70, "", "x" * 300, "b"]).slice(1, 4)
    texts = ["\x00", "\u00e9" * 70, "", "x" * 300]
    assert _hash_fields([column]).to_pylist() == [
        "h" + hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in texts
    ]
    with pytest.raises(ValueError, match="not a range"):
        native.hash64(b"abc", np.array([0, 4], dtype=np.int64))
    with pytest.raises(ValueError, match="another number of rows"):
        native.blake2b_128_joined([(data, offsets, None), (b"ab", np.array([0, 1, 2]), None)], b"", b"")


def test_hmac_sha256_matches_hmac_for_keys_and_strings_around_the_block_sizes() -> None:
    """The C HMAC-SHA256 against the hmac module, with the SHA extensions and without: keys
    shorter than, equal to and longer than SHA-256's 64-byte block, prefixes, and strings of 0
    to 200 bytes (padding edges at 55/56/64)."""
    native = native_or_skip()
    strings, data, offsets = _random_strings(4, 200)
    for key in (b"k", b"x" * 64, b"y" * 65, "clé".encode()):
        for prefix in (b"", b"person\x1f", b"p" * 70):
            want = [hmac.new(key, prefix + s, hashlib.sha256).digest() for s in strings]
            for portable in (False, True):  # the x86 SHA extensions (where the CPU has them), and not
                assert native.hmac_sha256(key, prefix, data, offsets, 32, portable) == b"".join(want)
                assert native.hmac_sha256(key, prefix, data, offsets, 12, portable) == b"".join(w[:12] for w in want)
    with pytest.raises(ValueError, match="width"):
        native.hmac_sha256(b"k", b"", data, offsets, 33)


def test_pseudonyms_are_the_same_with_and_without_the_c_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    platforms = pa.array(["web", "ios", None, "web", "web", "app"])
    users = pa.array(["a", "b", "c", None, "a", "\u00e9" * 40])
    representatives = ["u1", "", "u" + "f" * 80]
    got = {}
    for native in ("1", "0"):
        monkeypatch.setenv("XINTEREST_NATIVE", native)
        p = Pseudonymiser("a key")
        got[native] = (p.user_array(platforms, users).to_pylist(), p.persons(representatives).to_pylist())
    assert got["1"] == got["0"]
    p = Pseudonymiser("a key")
    assert got["1"][0] == [
        p.user("web", "a"),
        p.user("ios", "b"),
        None,
        None,
        p.user("web", "a"),
        p.user("app", "\u00e9" * 40),
    ]
    assert got["1"][1] == [p.person(r) for r in representatives]


def test_repeated_finds_the_same_rows_with_and_without_the_c_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeats by value among chosen rows, the first of each value kept, nulls never repeats;
    tiny buckets force every string through the exact comparison."""
    rng = np.random.default_rng(1)
    values = [None if v == 7 else f"id-{v}" + "x" * int(v % 11) for v in rng.integers(0, 400, 3000)]
    column = pa.chunked_array([pa.array(values[:1000]), pa.array(values[1000:])])
    among = rng.random(3000) < 0.8
    seen: set[str] = set()
    want = np.zeros(3000, dtype=bool)
    for i, v in enumerate(values):
        if among[i] and v is not None:
            want[i] = v in seen
            seen.add(v)
    for native in ("1", "0"):
        monkeypatch.setenv("XINTEREST_NATIVE", native)
        assert (_repeated(column, among) == want).all()
        assert (_repeated(column, among, bits=3) == want).all()
        # one hash for every row: every row is a candidate and only the strings decide
        assert (_repeated(column, among, hashed=np.zeros(3000, dtype=np.uint64)) == want).all()


def test_repeated64_marks_every_row_whose_hash_another_chosen_row_has() -> None:
    native = native_or_skip()
    rng = np.random.default_rng(2)
    for n, distinct in ((0, 1), (1, 1), (5000, 50), (5000, 10**12), (40000, 30000)):
        hashes = rng.integers(0, distinct, n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        rows = np.flatnonzero(rng.random(n) < 0.7)
        chosen = hashes[rows]
        _, inverse, counts = np.unique(chosen, return_inverse=True, return_counts=True)
        got = np.frombuffer(native.repeated64(hashes, rows), dtype=bool)
        assert got.tolist() == (counts[inverse] > 1).tolist()
    with pytest.raises(ValueError, match="not a position"):
        native.repeated64(np.zeros(3, dtype=np.uint64), np.array([0, 3], dtype=np.int64))


def test_clean_strings_trims_exactly_like_utf8_trim_whitespace() -> None:
    def reference(table: pa.Table) -> pa.Table:
        columns = []
        for column in table.columns:
            trimmed = pc.utf8_trim_whitespace(column)
            columns.append(pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, column.type), trimmed))
        return pa.Table.from_arrays(columns, names=table.column_names)

    rng = random.Random(0)
    alphabet = ["a", "b", " ", "\t", "\x1f", "é", "\u3000", "\u00a0", "中", ""]
    for _ in range(200):
        values = [
            None if rng.random() < 0.1 else "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4)))
            for _ in range(rng.randint(0, 20))
        ]
        for kind in (pa.string(), pa.large_string()):
            array = pa.array(values, kind)
            half = len(values) // 2
            table = pa.table({"s": pa.chunked_array([array.slice(0, half), array.slice(half)], type=kind)})
            assert clean_strings(table).to_pylist() == reference(table).to_pylist(), values


def test_local_times_match_pandas_for_any_string() -> None:
    rng = random.Random(1)
    values: list[str | None] = [
        "2024-01-15T08:00:00",
        "2024-02-29T23:59:59",
        "2023-02-29T00:00:00",
        "2024-04-31T00:00:00",
        "2024-13-01T00:00:00",
        "2024-01-01T24:00:00",
        "2024-01-01T23:59:60",
        "1677-09-22T00:00:00",
        "2262-04-12T00:00:00",
        "1900-02-29T12:00:00",
        "2000-02-29T12:00:00",
        "2024-1-15T08:00:00",
        "2024-01-15 08:00:00",
        "2024-01-15T08:00:00Z",
        "２０２４-01-15T08:00:00",
        "2024-11-03T01:30:00",
        "2024-03-10T02:30:00",
        "not-a-time",
        "",
        None,
    ]
    for _ in range(3000):
        values.append(
            f"{rng.randint(1650, 2300):04d}-{rng.randint(0, 13):02d}-{rng.randint(0, 32):02d}"
            f"T{rng.randint(0, 25):02d}:{rng.randint(0, 61):02d}:{rng.randint(0, 61):02d}"
        )
    zones = ["Asia/Shanghai", "America/New_York", "+05:30", "Mars/Olympus", None]
    tz = [rng.choice(zones) for _ in values]
    # Stay clear of pandas' own overflow at the very ends of its range (it wraps around there).
    local = pd.Series([v if v is None or not v.startswith(("1677", "2262")) else None for v in values], dtype=object)
    got = local_to_utc_array(pa.array(local, pa.string()), pa.array(tz, pa.string()), fmt=ISO_SECONDS)
    assert _same_times(got, local_to_utc(local, pd.Series(tz, dtype=object), fmt=ISO_SECONDS))


def test_epochs_and_numbers_match_pandas_for_any_string() -> None:
    texts = ["1708270657", "0001708270657", "+5", "-5", "1e9", "1708270657.5", " 7", "abc", "", None, "9223372036",
             "9223372037", "999999999999999", "-9223372037", "nan", "0x10", "1_000", "١٢"]  # fmt: skip
    ts, _ = epoch_to_utc(pd.Series(texts, dtype=object), "s")
    assert _same_times(epoch_to_utc_array(pa.array(texts, pa.string()), "s"), ts)
    texts += ["inf", "-inf", "99999999999999999999"]  # not epochs pandas can take, but numbers
    numbers, invalid = numeric_value(pd.Series(texts, dtype=object))
    values, flags = numeric_value_array(pa.array(texts, pa.string()))
    want = [None if pd.isna(v) else float(v) for v in numbers]
    assert values.to_pylist() == want
    assert flags.to_pylist() == invalid.tolist()


def test_bots_are_the_same_with_dense_and_sparse_user_keys() -> None:
    start = pd.Timestamp("2024-05-01T12:00:00Z")
    rows = [("web", "bot", "view", start + pd.Timedelta(seconds=0.5 * i)) for i in range(100)]
    rows += [("web", "busy", "view", start + pd.Timedelta(seconds=59 * i)) for i in range(200)]
    rows += [("ios", "bot", "rate", start + pd.Timedelta(seconds=0.1 * i)) for i in range(100)]
    frame = pd.DataFrame(rows, columns=["platform", "user_id", "action", "ts"])
    expected = frame["user_id"].eq("bot") & frame["platform"].eq("web")
    assert bot_mask(frame).tolist() == expected.tolist()
    keys = np.where(frame["user_id"].eq("bot"), 0, 1) + np.where(frame["platform"].eq("web"), 0, 2)
    table = pa.Table.from_pandas(frame)
    assert flag_bots(keys, table["action"], table["ts"]).tolist() == expected.tolist()
    assert flag_bots(keys * 10**12, table["action"], table["ts"]).tolist() == expected.tolist()


def test_first_occurrences() -> None:
    codes = np.array([0, 1, 0, 2, 1, 3])
    assert first_occurrences(codes, 4).tolist() == [True, True, False, True, False, True]
    # codes not numbered by first appearance still give the first row of each
    assert first_occurrences(np.array([1, 0, 1, 0]), 2).tolist() == [True, True, False, False]


def test_jsonl_reader_edge_cases(tmp_path: Path) -> None:
    schema = pa.schema([("a", pa.int64()), ("b", pa.string())])
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\n{"a":1}\n   \n{"a": "x"}\n{"a":2,"b":" y "}\r\n{"a":3}')  # no final newline
    frame, bad = read_jsonl(path, schema)
    assert frame["a"].tolist() == [1, 3]
    assert bad == ["   ", '{"a":2,"b":" y "}\r', '{"a": "x"}']  # shape first, then parse failures
    path.write_bytes(b"")
    frame, bad = read_jsonl(path, schema)
    assert frame.empty and bad == []


# Lines the C reader (json_lines) takes, and lines it leaves to pyarrow; either way the table and
# the unparsed lines must be pyarrow's.
_JSON_LINES = [
    b'{"s":"plain","i":1706931696591,"f":28.9,"x":"ignored"}',
    b'{ "s" : "spaced" , "i" : -0 , "f" : -0.0 }',
    b"{}",
    b'{"f":0.30000000000000004,"i":-123456789012345678}',
    b'{"f":12345678901234567,"i":123456789012345678}',
    b'{"s":"esc \\" \\\\ \\/ \\b \\f \\n \\r \\t end"}',
    b'{"s":"\\u00e9\\u0000\\u20ac\\ud83d\\ude00 caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"}',
    b'{"s":null,"i":null,"f":null,"x":null}',
    b'{"x":true,"y":false,"z":-1.5,"w":"\\u00e9"}',
    b'{"s":"","i":0,"f":0}',
    b'{"S":"other case","ss":"longer name"}',
    b'{"i":1.0}',  # from here on: lines pyarrow reads otherwise, or not at all
    b'{"i":1e3}',
    b'{"f":1e-400}',
    b'{"f":1.5E2}',
    b'{"f":123456789012345678}',
    b'{"i":9223372036854775807}',
    b'{"i":"12"}',
    b'{"s":12}',
    b'{"s":true}',
    b'{"f":"1.5"}',
    b'{"f":NaN}',
    b'{"s":"a","s":"b"}',
    b'{"x":1,"x":2}',
    b'{"x":{"y":[1,2]}}',
    b'{"x":[]}',
    b'{"a":1}{"b":2}',
    b'{"s":"\\ud83d"}',
    b'{"s":"\\ude00"}',
    b'{"s":"\\u00"}',
    b'{"s":"\\q"}',
    b'{"s":"\xff"}',
    b'{"s":"\xc0\xaf"}',
    b'{"s":"\xed\xa0\x80"}',
    b'{"s":"tab\there"}',
    b'{"\\u0073":"escaped key"}',
    b'{"f":01}',
    b'{"f":1.}',
    b'{"f":-}',
    b'{"f":.5}',
    b'{"s":"x",}',
    b'{"s" "x"}',
    b'{"s":"unterminated}',
    b'{"i":12345678901234567890123}',
]


@pytest.mark.parametrize("line", _JSON_LINES)
def test_jsonl_reader_reads_each_line_as_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: bytes) -> None:
    native_or_skip()
    schema = pa.schema([("s", pa.string()), ("i", pa.int64()), ("f", pa.float64())])
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"s":"first","i":1}\n' + line + b"\n")

    def read() -> tuple[pa.Table, list[str]] | type[Exception]:
        try:
            table, bad = read_jsonl_table(path, schema)
        except Exception as error:  # pyarrow fails on some invalid UTF-8 with a decoding error
            return type(error)
        return table.combine_chunks(), bad

    fast = read()
    monkeypatch.setenv("XINTEREST_NATIVE", "0")
    slow = read()
    if isinstance(slow, tuple):
        assert isinstance(fast, tuple) and fast[0].schema == slow[0].schema
        # NaN as a string (it equals nothing), strings as bytes (pyarrow keeps some invalid UTF-8)
        values = [
            [v if v == v else "nan" for v in (c.cast(pa.binary()) if c.type == pa.string() else c).to_pylist()]
            for c in (*fast[0].columns, *slow[0].columns)
        ]
        assert values[:3] == values[3:]
        assert fast[1] == slow[1]
    else:
        assert fast is slow


def test_json_lines_reads_plain_lines_exactly_as_pyarrow() -> None:
    """Random plain lines (strings with escapes and any character, numbers of every length it
    takes, nulls, absent and other keys) through the C reader and through pyarrow."""
    native = native_or_skip()
    rng = random.Random(3)
    alphabet = [
        "a",
        "Z",
        " ",
        "é",
        "€",
        "😀",
        '\\"',
        "\\\\",
        "\\/",
        "\\n",
        "\\t",
        "\\u00e9",
        "\\ud83d\\ude00",
        "\\u0000",
    ]

    def number(digits: int, fraction: bool) -> str:
        text = "".join(rng.choice("0123456789") for _ in range(digits)).lstrip("0") or "0"
        if fraction and len(text) > 1:
            cut = rng.randint(1, len(text) - 1)
            text = text[:cut] + "." + text[cut:]
        elif fraction:
            text = "0." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 16)))
        return ("-" if rng.random() < 0.3 else "") + text

    lines = []
    for _ in range(20000):
        fields = {
            "s": '"' + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) + '"',
            "i": number(rng.randint(1, 18), False),
            "f": number(rng.randint(1, 17), rng.random() < 0.8),
            "other": rng.choice(['"x"', "1.5", "true", "false", "null", "-7"]),
        }
        keys = [k for k in fields if rng.random() < 0.85]
        rng.shuffle(keys)
        lines.append("{" + ",".join(f'"{k}":{fields[k] if rng.random() < 0.9 else "null"}' for k in keys) + "}")
    data = "\n".join(lines).encode()
    schema = pa.schema([("s", pa.string()), ("i", pa.int64()), ("f", pa.float64())])
    ends = np.array([i for i, b in enumerate(data) if b == 10] + [len(data)], dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    assert native.json_lines(data, starts, ends, [b"s", b"i", b"f"], b"sif") is not None  # all plain
    fast = _parse_json_native(data, starts, ends, schema)
    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    slow = pajson.read_json(pa.py_buffer(data), parse_options=options)
    assert fast is not None and fast.equals(slow.combine_chunks())


@pytest.mark.parametrize("presorted", [True, False])
def test_commit_writes_the_same_bytes_for_sorted_and_unsorted_partitions(tmp_path: Path, presorted: bool) -> None:
    ts = pd.to_datetime(["2024-01-01T10:00:00Z", "2024-01-01T10:00:00Z", "2024-01-01T09:00:00Z"], utc=True)
    frame = pd.DataFrame(
        {
            "event_id": ["b", "a", "c"],
            "platform": "web",
            "user_id": "u",
            "person_id": "p",
            "item_id": "i",
            "action": "view",
            "value": [1.0, None, 2.0],
            "text": None,
            "ts": ts.astype("datetime64[us, UTC]"),
        }
    )
    table = pa.Table.from_pandas(frame, schema=EVENTS_SCHEMA, preserve_index=False)
    if presorted:
        table = table.sort_by([("ts", "ascending"), ("event_id", "ascending")])
    lake = Lake(tmp_path / "lake")
    assert lake.commit(partitions={"2024-01-01": table}, tables={})
    stored = lake.events()
    assert stored["event_id"].tolist() == ["c", "a", "b"]
    name = lake.manifest().partitions["2024-01-01"]
    # the same rows in either order make the same file
    other = Lake(tmp_path / "other")
    other.commit(partitions={"2024-01-01": table.take([2, 1, 0])}, tables={})
    assert other.manifest().partitions["2024-01-01"] == name
    assert pq.read_table(tmp_path / "lake" / name).num_rows == 3


@pytest.mark.parametrize("bits", [None, 1, 4])
def test_repeated_ids_match_one_pass_over_all_batches(bits: int | None) -> None:
    """Rows whose id an earlier kept row has, over batches (chunks) of ids of any length;
    few buckets (``bits``) make every row a candidate: the answer must not change."""
    from pipelines.ingest import _repeated

    rng = random.Random(3)
    for _ in range(50):
        chunks, everything, among = [], [], []
        for _ in range(rng.randint(1, 5)):
            prefix = rng.choice(["e", "h", "x", "longer-prefix-", "é"])
            ids = [None if rng.random() < 0.1 else f"{prefix}{rng.randint(0, 30)}" for _ in range(rng.randint(0, 40))]
            valid = [rng.random() > 0.2 for _ in ids]
            chunks.append(pa.array(["padding", *ids], pa.string()).slice(1))  # a chunk with an offset
            everything += [i if v else None for i, v in zip(ids, valid, strict=True)]
            among += valid
        seen: set[str] = set()
        expected = []
        for value in everything:
            expected.append(value is not None and value in seen)
            if value is not None:
                seen.add(value)
        values = pa.chunked_array(chunks, pa.string())
        assert _repeated(values, np.array(among, dtype=bool), bits=bits).tolist() == expected


@pytest.mark.parametrize("repeated_value", [False, True])
def test_dates_sharing_dictionaries_are_stored_alike_with_the_uniqueness_check_shared(repeated_value: bool) -> None:
    """Slices of one dictionary-encoded table (a commit's dates) give the same stored tables
    whether each dictionary is checked once for the commit or once per date, also when a
    dictionary holds a value twice."""
    from pipelines.lake import _lake_order, _UniqueDictionaries

    rng = random.Random(5)
    n = 300
    values = pa.array(["a", "b", "c", "a" if repeated_value else "d"], pa.string())

    def column() -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(pa.array([rng.randrange(4) for _ in range(n)], pa.int32()), values)

    table = pa.table(
        {
            "event_id": pa.array([f"e{i:04d}" for i in range(n)], pa.string()),
            "platform": column(),
            "user_id": column(),
            "person_id": column(),
            "item_id": column(),
            "action": column(),
            "value": pa.array([float(i % 7) for i in range(n)], pa.float64()),
            "text": column(),
            "ts": pa.array(sorted(rng.randrange(10**12) for _ in range(n)), pa.timestamp("us", tz="UTC")),
        }
    )
    checked = _UniqueDictionaries()
    for lo, hi in ((0, 100), (100, 180), (180, n)):
        part = table.slice(lo, hi - lo)
        stored = _lake_order(part, checked)
        assert stored.equals(_lake_order(part))
        assert stored.equals(_lake_order(part.cast(EVENTS_SCHEMA)))


def test_first_appearance_renumbers_alike_with_and_without_the_c_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dictionary column with nulls, sliced at an offset and in several chunks, comes out as
    dictionary-encoding its plain strings gives it (entries in order of first appearance), in
    C and in Arrow; out-of-range indices are refused."""
    from pipelines.lake import _first_appearance

    rng = np.random.default_rng(6)
    dictionary = pa.array([f"v{i}" for i in range(50)], pa.string())
    codes = rng.integers(0, 50, 700).astype(np.int32)
    indices = pa.array(codes, mask=rng.random(700) < 0.1)
    whole = pa.DictionaryArray.from_arrays(indices, dictionary)
    column = pa.chunked_array([whole.slice(3, 200), whole.slice(203, 300), whole.slice(503, 0), whole.slice(503)])
    want = pc.dictionary_encode(pc.cast(column, pa.string()).combine_chunks())
    for native in ("1", "0"):
        monkeypatch.setenv("XINTEREST_NATIVE", native)
        got = _first_appearance(column)
        assert got.dictionary.equals(want.dictionary)
        assert got.indices.equals(want.indices)
    monkeypatch.setenv("XINTEREST_NATIVE", "1")
    kernel = native_or_skip()
    with pytest.raises(ValueError, match="not an entry"):
        kernel.first_appearance(np.array([0, 5], dtype=np.int32), None, 5)


def test_first_appearance_renumbers_each_run_as_alone() -> None:
    """With run starts, the kernel numbers each run (empty ones too) as a call on that run alone."""
    kernel = native_or_skip()
    rng = np.random.default_rng(9)
    codes = rng.integers(0, 30, 500).astype(np.int32)
    valid = rng.random(500) > 0.1
    starts = np.array([0, 0, 120, 120, 121, 400], dtype=np.int64)  # empty runs, a one-row run
    new, used, ends = kernel.first_appearance(codes, valid, 30, starts)
    new, used, ends = np.frombuffer(new, np.int32), np.frombuffer(used, np.int32), np.frombuffer(ends, np.int64)
    bounds = [*starts.tolist(), 500]
    for r in range(len(starts)):
        lo, hi = bounds[r], bounds[r + 1]
        alone_new, alone_used = kernel.first_appearance(codes[lo:hi], valid[lo:hi], 30)
        np.testing.assert_array_equal(new[lo:hi], np.frombuffer(alone_new, np.int32))
        np.testing.assert_array_equal(used[(ends[r - 1] if r else 0) : ends[r]], np.frombuffer(alone_used, np.int32))
    with pytest.raises(ValueError, match="starts"):
        kernel.first_appearance(codes, None, 30, np.array([0, 200, 100], dtype=np.int64))
    with pytest.raises(ValueError, match="starts"):
        kernel.first_appearance(codes, None, 30, np.array([5], dtype=np.int64))


def _ordered_events(n: int, seed: int, values: pa.Array) -> pa.Table:
    """Events in the lake's order with dictionary columns (nulls in item_id and text), one plain."""
    rng = random.Random(seed)

    def column(nulls: bool = False) -> pa.DictionaryArray:
        codes = [None if nulls and rng.random() < 0.2 else rng.randrange(len(values)) for _ in range(n)]
        return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), values)

    return pa.table(
        {
            "event_id": pa.array([f"e{i:04d}" for i in range(n)], pa.string()),
            "platform": column(),
            "user_id": column(),
            "person_id": column(),
            "item_id": column(nulls=True),
            "action": pa.array([rng.choice(["view", "click"]) for _ in range(n)], pa.string()),  # plain strings
            "value": pa.array([float(i % 7) for i in range(n)], pa.float64()),
            "text": column(nulls=True),
            "ts": pa.array(sorted(rng.randrange(10**12) for _ in range(n)), pa.timestamp("us", tz="UTC")),
        }
    )


@pytest.mark.parametrize(("native", "repeated_value"), [("1", False), ("1", True), ("0", False)])
def test_stored_slices_are_what_the_commit_makes_of_each_slice(
    monkeypatch: pytest.MonkeyPatch, native: str, repeated_value: bool
) -> None:
    """Dates built at once as stored are the tables the commit's ordering makes of each date's
    kept rows (empty dates too), so the lake's bytes do not change: with the C kernels, and where
    each date is ordered on its own (no C kernels, a dictionary holding a value twice)."""
    from pipelines.lake import _lake_order, stored_slices

    monkeypatch.setenv("XINTEREST_NATIVE", native)
    if native == "1":
        native_or_skip()
    n = 400
    values = pa.array(["a", "b", "a"] if repeated_value else [f"v{i}" for i in range(12)], pa.string())
    table = _ordered_events(n, 10, values)
    kept = np.random.default_rng(11).random(n) > 0.15
    kept[150:170] = False  # a date with no kept row
    starts = np.array([0, 90, 150, 170, 171, 300])
    ends = np.append(starts[1:], n)
    stored = stored_slices(table, kept, starts, ends)
    assert len(stored) == len(starts)
    for part, lo, hi in zip(stored, starts, ends, strict=True):
        got = part()
        want = _lake_order(table.slice(lo, hi - lo).filter(pa.array(kept[lo:hi])))
        assert got.schema.equals(want.schema) and got.equals(want)
        for name in ("platform", "item_id", "action", "text"):  # the same dictionaries, in the same order
            assert got[name].chunk(0).dictionary.equals(want[name].chunk(0).dictionary)


def test_distinct_days_are_numpy_unique() -> None:
    from pipelines.ingest import _distinct_days

    rng = np.random.default_rng(8)
    for days in (np.zeros(0, dtype=np.int64), np.array([-3, 5, -3]), rng.integers(19000, 19400, 5000)):
        assert _distinct_days(days).tolist() == np.unique(days).tolist()


def test_numpy_bool_unpacks_like_arrow_converts() -> None:
    """Bits unpacked per chunk equal Arrow's value-by-value conversion (null as False), for
    sliced arrays at any bit offset, several chunks, no chunk, and all-null arrays."""
    rng = np.random.default_rng(9)
    for trial in range(200):
        n = int(rng.integers(0, 70))
        values = pa.array(rng.random(n) < 0.5, mask=(rng.random(n) < 0.2) if trial % 2 else None)
        a, b = sorted(int(x) for x in rng.integers(0, n + 1, 2))
        for column in (
            values,
            values.slice(a, b - a),
            pa.chunked_array([values.slice(0, a), values.slice(a)], pa.bool_()),
            pa.chunked_array([], pa.bool_()),
            pa.nulls(n, pa.bool_()),
        ):
            want = np.asarray(pc.fill_null(column, False).to_numpy(zero_copy_only=False), dtype=bool)
            assert numpy_bool(column).tolist() == want.tolist()
