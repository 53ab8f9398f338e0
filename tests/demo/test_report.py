"""The demo report prints numbers as a reader expects: whole numbers whole, others to a useful precision."""

import re

from medmoe.demo.report import Section, Table, render_report


def test_report_cells_print_whole_numbers_whole_and_others_rounded():
    table = Table("numbers", ["value"], [[67.2], [6.0], [0.0], [0.12345], [float("nan")], ["a<b"]])
    page = render_report("t", "", [Section("s", tables=[table])])
    cells = re.findall(r"<td>([^<]*)</td>", page)
    assert cells == ["67.2", "6", "0", "0.123", "n/a", "a&lt;b"]
