import json

from safedenoiser.cli import main


def test_toy_quick_writes_all_outputs(tmp_path):
    out = tmp_path / "toy"
    assert main(["toy", "--quick", "--dims", "2", "--out", str(out)]) == 0
    for name in ("toy.json", "toy.md", "tradeoff.png", "trajectories_2d.png", "runs.jsonl"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "toy.json").read_text())
    methods = {r["method"].split(" (")[0] for r in summary["records"]}
    assert {"plain", "oracle", "paper", "calibrated", "substitution", "reference", "spell", "negative guidance", "rejection"} <= methods
    plain = next(r for r in summary["records"] if r["method"] == "plain")
    oracle = next(r for r in summary["records"] if r["method"] == "oracle")
    assert plain["unsafe"] > 0.1 and oracle["unsafe"] < 0.05
    # resuming reuses every finished run instead of recomputing it
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert main(["toy", "--quick", "--dims", "2", "--out", str(out)]) == 0
    assert (out / "runs.jsonl").read_text().splitlines() == lines


def test_cli_reports_bad_input_without_traceback(capsys):
    assert main(["toy", "--quick", "--dims", "2", "--samples", "0", "--out", "/tmp/unused-toy"]) == 2
    assert "error" in capsys.readouterr().err
