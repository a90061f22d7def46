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


def test_bench_toy_is_the_command_and_toy_its_alias(tmp_path, capsys):
    """``bench toy`` and ``toy`` run the same benchmark: the same runs and results (timings aside)."""
    outs = [tmp_path / name for name in ("bench", "alias")]
    assert main(["bench", "toy", "--quick", "--dims", "2", "--samples", "20", "--bank", "40", "--out", str(outs[0])]) == 0
    assert main(["toy", "--quick", "--dims", "2", "--samples", "20", "--bank", "40", "--out", str(outs[1])]) == 0
    capsys.readouterr()
    results = [[(r["method"], r["value"], r["unsafe"], r["mmd"]) for r in json.loads((out / "toy.json").read_text())["records"]]
               for out in outs]
    assert results[0] == results[1] and len(results[0]) > 20


def test_cli_reports_bad_input_without_traceback(capsys):
    assert main(["toy", "--quick", "--dims", "2", "--samples", "0", "--out", "/tmp/unused-toy"]) == 2
    assert "error" in capsys.readouterr().err
