"""Broken STAR files give one UserError line naming the file, the line and the column; valid
variants (CRLF, comments and blank lines between rows, quoted names, NaN) still read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryopose.errors import UserError
from cryopose.io import read_star

# A RELION 3.1 file whose line numbers the tests below rely on.
HEADER = """
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnImagePixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
_rlnImageSize #7
1 opticsGroup1 1.5 300.0 2.7 0.1 64

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnAngleRot #2
_rlnAngleTilt #3
_rlnAnglePsi #4
_rlnOriginXAngst #5
_rlnOriginYAngst #6
_rlnDefocusU #7
_rlnOpticsGroup #8
"""
ROWS = [
    "000001@s.mrcs 10.0 20.0 30.0 1.5 -1.5 15000.0 1",
    "000002@s.mrcs 11.0 21.0 31.0 0.0 0.0 15100.0 1",
    "000003@s.mrcs 12.0 22.0 32.0 3.0 3.0 15200.0 1",
]
FIRST_ROW_LINE = HEADER.count("\n") + 1  # line 29
COLUMNS = [
    "rlnImageName",
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnAnglePsi",
    "rlnOriginXAngst",
    "rlnOriginYAngst",
    "rlnDefocusU",
    "rlnOpticsGroup",
]


def star_text(rows=ROWS, header=HEADER) -> str:
    return header + "".join(r + "\n" for r in rows)


def write(tmp_path: Path, text: str | bytes, name: str = "p.star") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


def user_error(path: Path) -> str:
    with pytest.raises(UserError) as exc:
        read_star(path)
    message = str(exc.value)
    assert "\n" not in message and "\r" not in message, message
    assert str(path) in message, message
    assert "np.float64" not in message and "Traceback" not in message
    return message


def test_the_reference_file_reads(tmp_path: Path) -> None:
    p = read_star(write(tmp_path, star_text()))
    assert list(p.table["rlnAngleRot"]) == [10.0, 11.0, 12.0]
    assert p.pixel_size.tolist() == [1.5] * 3
    assert HEADER.split("\n")[FIRST_ROW_LINE - 2] == "_rlnOpticsGroup #8"


def row(i: int, column: str, value: str) -> list[str]:
    rows = [r.split() for r in ROWS]
    rows[i][COLUMNS.index(column)] = value
    return [" ".join(r) for r in rows]


@pytest.mark.parametrize(
    "rows, line, fragments",
    [
        # a value that is not a number, in a column cryopose reads and in one it does not know
        (row(1, "rlnAngleTilt", "abc"), FIRST_ROW_LINE + 1, ["rlnAngleTilt", "'abc'", "not a number"]),
        (row(2, "rlnDefocusU", "1.2.3"), FIRST_ROW_LINE + 2, ["rlnDefocusU", "'1.2.3'"]),
        (row(0, "rlnOpticsGroup", "one"), FIRST_ROW_LINE, ["rlnOpticsGroup", "'one'"]),
        # rows with too few or too many values (first row: pandas infers the width from it)
        (
            [ROWS[0], "000002@s.mrcs 11.0 21.0 31.0 0.0 0.0 15100.0", ROWS[2]],
            FIRST_ROW_LINE + 1,
            ["7 values", "8 columns", "no value for rlnOpticsGroup"],
        ),
        (["000001@s.mrcs 10.0 20.0", *ROWS[1:]], FIRST_ROW_LINE, ["3 values", "no value for rlnAnglePsi"]),
        ([ROWS[0], ROWS[1] + " 7", ROWS[2]], FIRST_ROW_LINE + 1, ["9 values", "1 too many"]),
        ([ROWS[0] + " 7 8", *ROWS[1:]], FIRST_ROW_LINE, ["10 values", "2 too many"]),
        ([*ROWS, "garbage"], FIRST_ROW_LINE + 3, ["1 values", "no value for rlnAngleRot"]),
        # quotes and '#' inside values would be changed by the parser underneath
        (row(0, "rlnImageName", '000001@s"x.mrcs'), FIRST_ROW_LINE, ["quote or '#'"]),
        (row(1, "rlnImageName", "000002@s#x.mrcs"), FIRST_ROW_LINE + 1, ["quote or '#'"]),
        (row(2, "rlnImageName", '"000003@s.mrcs'), FIRST_ROW_LINE + 2, ["quote or '#'"]),
        # a header line among the rows
        ([ROWS[0], "_rlnClassNumber #9", *ROWS[1:]], FIRST_ROW_LINE + 1, ["_rlnClassNumber", "after the rows"]),
        # non-ASCII text in a number
        (row(0, "rlnAnglePsi", "3é0"), FIRST_ROW_LINE, ["rlnAnglePsi", "not a number"]),
    ],
)
def test_bad_rows_name_line_and_column(tmp_path: Path, rows, line, fragments) -> None:
    message = user_error(write(tmp_path, star_text(rows)))
    assert f"line {line}:" in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_truncated_file(tmp_path: Path) -> None:
    full = star_text()
    for cut in (len(full) - 1, len(full) - 5, len(full) - 30):  # no final newline / mid-value / mid-row
        message = user_error(write(tmp_path, full[:cut]))
        assert f"line {FIRST_ROW_LINE + 2}:" in message and "truncated" in message, message
    message = user_error(write(tmp_path, full[: len(full) - 5]))
    assert "rlnDefocusU" in message or "rlnOpticsGroup" in message  # the column that may be cut
    # cut at a line end: the rows before it read (nothing can tell the row is missing)
    assert len(read_star(write(tmp_path, full[: full.rindex(ROWS[2])]))) == 2


def test_duplicate_column_names(tmp_path: Path) -> None:
    header = HEADER.replace("_rlnAngleTilt #3\n", "_rlnAngleTilt #3\n_rlnAngleRot #3b\n")
    message = user_error(write(tmp_path, star_text(header=header)))
    line = header.split("\n").index("_rlnAngleRot #3b") + 1
    assert f"line {line}:" in message and "rlnAngleRot appears twice" in message and f"line {line - 2}" in message


@pytest.mark.parametrize(
    "mutate, line, fragment",
    [
        (lambda t: t.replace("\n", "\r", 1) + "", 1, "carriage return"),
        (lambda t: t.replace("1.5 300.0", "1.5\x00300.0"), 14, "control character"),
        (lambda t: "hello\n" + t, 1, "before the first data_ block"),
        (lambda t: t.replace("data_optics\n", "data_empty\n\ndata_optics\n"), 4, "data_empty is empty"),
        (lambda t: t + "\ndata_particles\n\nloop_\n_rlnX #1\n1\n", 33, "data_particles appears twice"),
        (lambda t: t.replace("_rlnVoltage #4", "_rlnVoltage 300"), 10, "_rlnVoltage is followed by '300'"),
        (lambda t: t.replace("loop_\n_rlnImageName", "loop_\n\n_rlnImageName"), 20, "no _name lines directly after"),
        (lambda t: t.replace("data_particles\n\nloop_\n", "data_particles\n\n"), 28, "loop_ line missing"),
        (
            lambda t: t.replace("data_optics\n\nloop_\n", "data_optics\n\n_rlnFoo 1\nloop_\n"),
            7,
            "loop_ after _name value",
        ),
        (lambda t: "data_general\n_rlnA 1 2\n" + t, 2, "one '_name value' pair"),
        (lambda t: t.replace("_rlnImageSize #7", "_ #7"), 13, "column name is empty"),
    ],
)
def test_broken_structure(tmp_path: Path, mutate, line, fragment) -> None:
    message = user_error(write(tmp_path, mutate(star_text())))
    assert f"line {line}:" in message and fragment in message, message


def test_not_utf8_and_empty(tmp_path: Path) -> None:
    text = star_text().encode().replace(b"opticsGroup1", b"optics\xe9")
    message = user_error(write(tmp_path, text))
    assert "line 14:" in message and "0xe9" in message
    assert "no data blocks" in user_error(write(tmp_path, b""))
    assert "no data blocks" in user_error(write(tmp_path, "\n\n# only a comment\n"))
    assert "no particle block" in user_error(write(tmp_path, star_text().split("# version 30001\n\ndata_particles")[0]))
    message = user_error(write(tmp_path, star_text(rows=[])))
    assert "data_particles" in message and "no particle rows" in message


def test_valid_variants_still_read(tmp_path: Path) -> None:
    reference = read_star(write(tmp_path, star_text(), "ref.star")).table
    variants = {
        "crlf": star_text().replace("\n", "\r\n"),
        "bom": "\ufeff" + star_text(),
        "comments and blank lines between rows": star_text([ROWS[0], "", "# a comment", ROWS[1], "  ", ROWS[2]]),
        "tabs and trailing blanks": star_text([r.replace(" ", "\t") + "   " for r in ROWS]),
        "no blank line before the rows, comment after": star_text() + "# the end\n",
        "header comments": star_text(header=HEADER.replace("_rlnVoltage #4", "_rlnVoltage #4 [kV]")),
    }
    for label, text in variants.items():
        table = read_star(write(tmp_path, text)).table
        assert list(table.columns) == list(reference.columns), label
        assert table.astype(str).equals(reference.astype(str)), label


def test_line_numbers_count_comment_and_blank_lines(tmp_path: Path) -> None:
    rows = [ROWS[0], "", "# comment", *row(1, "rlnAngleRot", "x")[1:2], ROWS[2]]
    message = user_error(write(tmp_path, star_text(rows)))
    assert f"line {FIRST_ROW_LINE + 3}:" in message and "rlnAngleRot" in message


def test_quoted_values_and_nan(tmp_path: Path) -> None:
    rows = [
        ROWS[0].replace("000001@s.mrcs", '"000001@my stack.mrcs"'),
        ROWS[1].replace("000002@s.mrcs", "'000002@b c.mrcs'"),
        ROWS[2],
    ]
    p = read_star(write(tmp_path, star_text(rows)))
    assert p.table["rlnImageName"].tolist() == ["000001@my stack.mrcs", "000002@b c.mrcs", "000003@s.mrcs"]
    # NaN written as nan is the file's own value: read as NaN (the accessors refuse it where used)
    p = read_star(write(tmp_path, star_text(row(1, "rlnOriginXAngst", "nan"))))
    assert np.isnan(p.table["rlnOriginXAngst"].iloc[1])


def test_unknown_text_columns_stay_text(tmp_path: Path) -> None:
    header = HEADER.replace("_rlnOpticsGroup #8\n", "_rlnOpticsGroup #8\n_rlnMyNote #9\n")
    rows = [r + f" {v}" for r, v in zip(ROWS, ["a", "1", "b"])]  # mostly text: a text column
    p = read_star(write(tmp_path, star_text(rows, header)))
    assert p.table["rlnMyNote"].astype(str).tolist() == ["a", "1", "b"]
    rows = [r + f" {v}" for r, v in zip(ROWS, ["1.5", "oops", "2.5"])]  # mostly numbers: a numeric column
    message = user_error(write(tmp_path, star_text(rows, header)))
    assert f"line {FIRST_ROW_LINE + 2}:" in message and "rlnMyNote is 'oops'" in message  # one more header line


def test_cli_reports_one_line(tmp_path: Path, capsys) -> None:
    from cryopose.cli.main import main

    src = write(tmp_path, star_text()[:-10])
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(src), str(tmp_path / "out.star")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "truncated" in err and "Traceback" not in err
    assert not (tmp_path / "out.star").exists()
