"""benchmarks/beta_ratio.py --rule-judge independent (issue 24): the toy rule's trials counted by an MLP refit of
classifier B's classes (another seed, soft count), B's own count and the exact judge's share kept beside it."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from safedenoiser.bench import toy
from safedenoiser.methods import holdout_size
from safedenoiser.methods import ratio as ratio_module
from safedenoiser.methods.ratio import RatioFit

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "beta_ratio.py"


def load_script():
    spec = importlib.util.spec_from_file_location("beta_ratio", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_independent_judge_counts_the_rules_trials(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    script = load_script()
    tiny = lambda cfg: RatioFit(sigma_max=cfg.sigma_max, steps=300, hidden=32)
    monkeypatch.setattr(toy, "ratio_fit", tiny)
    monkeypatch.setattr(script, "ratio_fit", tiny)
    monkeypatch.setattr(script, "ToyConfig", lambda **kw: toy.ToyConfig(samples=60, negation=100, bank=400, steps=8, **kw))
    cfg = script.ToyConfig(dims=(2,), family="mostly", ratio=True)
    problem = toy.build_problem(2, cfg)
    fits: list = []
    drawn: list = []
    real_fit_judge, real_sample = ratio_module.fit_judge, toy.sample
    monkeypatch.setattr(ratio_module, "fit_judge", lambda *a, **kw: fits.append(real_fit_judge(*a, **kw)) or fits[-1])
    monkeypatch.setattr(toy, "sample", lambda *a, **kw: drawn.append(real_sample(*a, **kw)) or drawn[-1])
    judge = ratio_module.rule_judge(problem.negation, replace(tiny(cfg), net="mlp"))
    result = toy.default_rule(problem, script.RULE, cfg, judge=judge)

    judge, = fits  # one judge per rule: an MLP, not B's network, on B's split of the 3/4 bank, another seed
    assert isinstance(judge.net, ratio_module.RatioNet) and judge.fit.net == "mlp"
    held = holdout_size(cfg.bank)
    assert judge.covered.shape[0] == cfg.bank - held and judge.net is not problem.ratio.ratio.net
    gen = torch.Generator().manual_seed(5)  # fresh samples, exact labels: the judge tells negated from safe content
    safe = [k for k in range(problem.mixture.means.shape[0]) if k not in problem.unsafe]
    negated = problem.mixture.restrict(problem.unsafe).sample(200, gen)[0].float()
    assert judge.posterior(negated).mean() > 0.8 and judge.posterior(problem.mixture.restrict(safe).sample(200, gen)[0].float()).mean() < 0.2
    trials = result["trials"]
    assert [t["knobs"] for t in trials] == toy.default_candidates("substitution") and len(drawn) == len(trials)
    for trial, samples in zip(trials, drawn):  # the judge's soft count decides; B's count and the exact share are records
        assert trial["covered"] == pytest.approx(float(judge.posterior(samples.float()).double().mean()), abs=1e-6)
        assert trial["exact_unsafe"] == float(problem.is_unsafe(samples).double().mean()) and "covered_by_calibration" in trial
    meeting = [t for t in trials if t["covered"] <= 0.01]
    best = min(meeting, key=lambda t: t["mmd"]) if meeting else min(trials, key=lambda t: (t["covered"], t["mmd"]))
    assert result["knobs"] == best["knobs"] and result["meets_target"] == bool(meeting)

    rows = script.run("mostly", 2, tmp_path, lambda rows: None, "independent")  # the CLI path: keys name the judge
    log = (tmp_path / "mostly" / "runs.jsonl").read_text()
    assert "D=2|default rule v2, independent judge|substitution (ratio)" in log
    assert any(r["method"] == "substitution (ratio, default rule)" for r in rows) and "|independent judge" in log
