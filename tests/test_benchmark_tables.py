"""The benchmarks' csv files and the multi-seed table read back what was written."""
import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _common import write_csv  # noqa: E402
from seed_table import read_runs, table  # noqa: E402

KEYS = ["d", "key", "estimator", "score_err_avg_pct"]


def _write(directory: Path, values: dict[str, float], dim: int = 2) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rows = [{"d": dim, "key": key, "estimator": f"DiScoFormer ({key}, warm)", "score_err_avg_pct": v}
            for key, v in values.items()]
    write_csv(directory / "bkw.csv", rows, KEYS)


def test_labels_with_commas_round_trip(tmp_path):
    _write(tmp_path / "a", {"x": 1.5})
    rows = list(csv.DictReader((tmp_path / "a" / "bkw.csv").open()))
    assert rows == [{"d": "2", "key": "x", "estimator": "DiScoFormer (x, warm)", "score_err_avg_pct": "1.5"}]


def test_seed_table_merges_runs_and_pairs_by_seed(tmp_path):
    _write(tmp_path / "s0" / "warm", {"ref": 6.0})
    _write(tmp_path / "s0" / "tta", {"tta": 5.0})
    _write(tmp_path / "s1", {"ref": 3.0, "tta": 4.0})
    assert read_runs(tmp_path / "s0", "score_err_avg_pct")[0] == {"ref": 6.0, "tta": 5.0}
    text = table([tmp_path / "s0", tmp_path / "s1"], "score_err_avg_pct", "ref")
    # paired differences -1 and +1: mean 0, s.e. = sd/√2 = √2/√2 = 1
    assert "| DiScoFormer (tta, warm) | 5.000 | 4.000 | 4.500 ± 0.500 | 0.000 ± 1.000 |" in text
    assert "| DiScoFormer (ref, warm) | 6.000 | 3.000 | 4.500 ± 1.500 | 0.000 ± 0.000 |" in text


def test_seed_table_refuses_duplicates_and_unknown_metric(tmp_path):
    _write(tmp_path / "s0" / "a", {"ref": 1.0})
    _write(tmp_path / "s0" / "b", {"ref": 2.0})
    with pytest.raises(ValueError, match="more than one csv"):
        read_runs(tmp_path / "s0", "score_err_avg_pct")
    with pytest.raises(ValueError, match="no column"):
        read_runs(tmp_path / "s0" / "a", "nope")
    with pytest.raises(FileNotFoundError):
        read_runs(tmp_path / "empty", "score_err_avg_pct")


def test_seed_table_keeps_one_dimension(tmp_path):
    write_csv(tmp_path / "bkw.csv", [{"d": d, "key": "ref", "estimator": "ref", "score_err_avg_pct": v}
                                     for d, v in ((2, 1.0), (3, 2.0))], KEYS)
    with pytest.raises(ValueError, match="several dimensions"):
        read_runs(tmp_path, "score_err_avg_pct")
    assert read_runs(tmp_path, "score_err_avg_pct", dim=3)[0] == {"ref": 2.0}
