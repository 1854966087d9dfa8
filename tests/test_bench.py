"""``nsactor bench --quick`` runs end to end and writes a well-formed report.

Only the shape is checked: the numbers depend on the host and its load.
"""
from __future__ import annotations

import json
import math
import shutil

from nsactor._cli import main
from nsactor.sandbox.userns import userns_available

from conftest import require

ROW_FIELDS = {"name": str, "metric": str, "unit": str, "p50": float, "p90": float, "max": float, "n": int}


def test_bench_quick_writes_schema(tmp_path, capsys):
    ok, why = userns_available()
    require(ok, why)
    out = tmp_path / "b.json"
    assert main(["bench", "--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())

    assert isinstance(report["host"], dict) and report["host"]["python"]
    assert isinstance(report["ratios"], dict)
    results = report["results"]
    assert isinstance(results, list) and results
    for row in results:
        for field, kind in ROW_FIELDS.items():
            assert field in row, (field, row)
            value = row[field]
            if kind is float:
                assert isinstance(value, (int, float)) and not isinstance(value, bool), (field, row)
                assert math.isfinite(value), (field, row)
            else:
                assert isinstance(value, kind), (field, row)
        assert row["n"] >= 1, row
        if row["metric"] != "leftovers_after_teardown":  # a count that should be 0
            assert row["p50"] > 0, row

    seen = {(r["name"], r["metric"]) for r in results}
    for key in ("trio_trusted", "ns_main_default", "ns_main_untrusted", "ns_subint_default",
                "ns_subint_untrusted", "prewarm_subint_untrusted", "bare_python"):
        assert (key, "spawn") in seen, key
    assert ("prewarm_subint_untrusted", "burst_8_from_2") in seen
    assert ("prewarm_subint_untrusted", "pss_per_warm_process") in seen
    assert isinstance(report["ratios"]["spawn_prewarm_vs_cold_subint"], float)
    assert ("ns_main_untrusted", "rpc_round_trip") in seen
    assert ("scale_8", "teardown") in seen
    if shutil.which("bwrap"):
        assert isinstance(report["ratios"]["spawn_prewarm_vs_bwrap_python"], float)
    for key in ("spawn_ns_main_vs_trio", "spawn_ns_subint_vs_trio"):
        assert isinstance(report["ratios"][key], float), key
    printed = capsys.readouterr().out
    assert "spawn" in printed and "ratios" in printed
