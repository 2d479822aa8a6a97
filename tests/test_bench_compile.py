"""scripts/bench_compile.py (issue #32's torch.compile lever): bad input stops before any work, naming the fix. Its
measurement compiles for minutes on a cold cache, so it is a benchmark's to run (results/bench_compile.json), not
the suite's."""

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import bench_compile  # noqa: E402


def test_bad_input_stops_with_the_fix_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bench_compile.main(["--pairs", "0", "--out", str(out)]) == 2
    assert "--pairs must be >= 1" in capsys.readouterr().err
    assert bench_compile.main(["--data-dir", str(tmp_path), "--out", str(out)]) == 2
    assert "make data-tinyshakespeare" in capsys.readouterr().err
    assert not out.exists()
