"""The experiments end to end at toy size, and the pieces they rest on: the power-law fit, the
compute frontier, the FLOP count of a conversation turn."""
import json
import math

import numpy
import pytest

from minitx import experiments
from minitx.__main__ import main
from minitx.experiments import chat_cache, precision, report, scaling, speculative
from minitx.kernels.reference import visibility_mask


def run_toy(name, tmp_path, pngs):
    results = experiments.run(name, tmp_path, size="toy")
    for file in ["report.md", "results.json", *pngs]:
        assert (tmp_path / file).stat().st_size > 200, file
    saved = json.loads((tmp_path / "results.json").read_text())
    assert all(math.isfinite(x) for x in report.finite_numbers(saved))
    assert "![" in (tmp_path / "report.md").read_text()
    return saved, results


def test_unknown_experiment_is_a_value_error_naming_the_experiments(tmp_path, capsys):
    with pytest.raises(ValueError, match="arch, chat-cache, precision, scaling, speculative"):
        experiments.run("nope", tmp_path)
    assert main(["experiment", "nope", "--out-dir", str(tmp_path)]) == 1
    assert "unknown experiment 'nope'" in capsys.readouterr().err


def test_arch_toy(tmp_path):
    saved, _ = run_toy("arch", tmp_path, ["arch.png", "curves.png"])
    assert set(saved["tasks"]) == {"initials", "spell"}
    for entry in saved["tasks"].values():
        v = entry["variants"]
        assert list(v) == ["0", "1", "2", "3", "4", "5", "5b"]
        for variant in v.values():
            assert [r["seed"] for r in variant["runs"]] == list(range(saved["settings"]["seeds"]))
            for r in variant["runs"]:
                assert 0 <= r["token_acc"] <= 1 and 0 <= r["seq_acc"] <= 1 and r["loss"] > 0
                assert r["curve"][-1][0] == saved["settings"]["steps"]
        # sharing removes parameters: cross-attention first, then the whole decoder stack
        n = {k: v[k]["non_embedding_params"] for k in v}
        assert n["0"] > n["1"] > n["2"] == n["3"] == n["4"]
        assert n["5"] == n["5b"] and abs(n["5"] - n["4"]) < 0.1 * n["4"]
    assert "beyond noise" in (tmp_path / "report.md").read_text()


def test_chat_cache_toy(tmp_path):
    saved, _ = run_toy("chat-cache", tmp_path, ["chat_cache.png"])
    s, turns = saved["settings"], numpy.array(saved["turns"])
    cached, reencode = (saved["protocols"][p] for p in ("cached", "re-encode"))
    # both protocols compute the logits of a single uncached pass: the comparison is fair
    assert max(saved["max_logit_diff"].values()) < 1e-4
    # cached: constant work per turn plus attention to a cache that grows linearly
    flops = numpy.array(cached["flops"], dtype=float)
    assert numpy.all(numpy.diff(flops) > 0)
    assert numpy.allclose(numpy.diff(flops, 2), 0, atol=1e-9 * flops.max())
    assert cached["tokens_run"] == [s["user"] + s["reply"]] * len(turns)
    # re-encoding: the whole history again each turn, so its cost grows faster than linearly
    again = numpy.array(reencode["flops"], dtype=float)
    assert reencode["tokens_run"] == list(turns * (s["user"] + s["reply"]))
    assert numpy.all(numpy.diff(again, 2) > 0) and numpy.all(again[1:] > flops[1:])
    assert saved["ratio_at"]["turn"] == 10 and saved["ratio_at"]["cumulative_flops"] > 1
    assert all(x > 0 for x in cached["seconds"] + reencode["seconds"])


@pytest.mark.parametrize("new, past, bidirectional", [(5, 0, False), (1, 7, False), (4, 9, False),
                                                      (6, 0, True)])
def test_attention_flops_count_the_keys_the_mask_lets_through(new, past, bidirectional):
    cfg = chat_cache.Settings(n_layer=3, d_model=8)
    _, attention = chat_cache.call_flops(100, cfg, new, past, bidirectional)
    visible = visibility_mask(new, past + new, causal=True, prefix=new if bidirectional else None)
    assert attention == 4 * cfg.n_layer * cfg.d_model * int(visible.sum())


def test_scaling_toy(tmp_path):
    saved, _ = run_toy("scaling", tmp_path, ["scaling.png"])
    runs = {r["name"]: r for r in saved["runs"]}
    sizes = [r["non_embedding_params"] for r in runs.values()]
    assert len(set(sizes)) >= 5 and max(sizes) >= 30 * min(sizes)
    front = [runs[name] for name in saved["frontier"]]
    compute = [r["compute"] for r in front]
    assert compute == sorted(compute) and len(front) >= 3
    assert all(b["val_loss"] < a["val_loss"] for a, b in zip(front, front[1:]))
    # nothing off the frontier beats it at the same or lower compute
    for r in runs.values():
        assert r["val_loss"] >= min(f["val_loss"] for f in front if f["compute"] <= r["compute"])
    fit = saved["fit"]
    assert fit["b"] > 0 and fit["a"] > 0 and 0 <= fit["c"] < min(r["val_loss"] for r in front)
    assert (tmp_path / "models" / saved["runs"][0]["name"] / "checkpoint.npz").exists()


def test_precision_toy(tmp_path):
    saved, _ = run_toy("precision", tmp_path, ["precision.png"])
    runs = saved["runs"]
    assert list(runs) == list(precision.RUNS)
    for r in runs.values():
        assert len(r["curve"]) == saved["settings"]["steps"] and r["val_loss"] < 4.2
    assert runs["fp16, loss scaling"]["final_scale"] >= 1 and "skipped" not in runs["fp16, no loss scaling"]
    c = saved["census"]
    assert c["n_gradients"] > 10_000
    for fate in (c["unscaled"], c["scaled"]):
        assert sum(fate.values()) == pytest.approx(1)
    # scaling moves gradients out of float16's underflow
    assert c["scaled"]["zero"] < c["unscaled"]["zero"] and c["scaled"]["subnormal"] < c["unscaled"]["subnormal"]


def test_fp16_fate_counts_at_the_float16_limits():
    g = numpy.float32([2 ** -26, 2 ** -25, 1.01 * 2 ** -25, 2 ** -15, 2 ** -14, 65504, 65520, 0])
    assert precision.fp16_fate(g) == {"zero": 2 / 7, "subnormal": 2 / 7, "overflow": 1 / 7, "normal": 2 / 7}
    assert precision.fp16_fate(g, 2.0 ** 4)["zero"] == 0


def test_speculative_toy_trains_its_models_then_reuses_them(tmp_path):
    saved, _ = run_toy("speculative", tmp_path, ["speculative.png"])
    s = saved["settings"]
    assert saved["n_params"]["target"] > 2 * saved["n_params"]["draft"]
    assert 0 < saved["cost"]["c"] and len(saved["cost"]["v"]) == len(s["ks"])
    for entry in saved["temperatures"].values():
        assert [r["k"] for r in entry["by_k"]] == s["ks"]
        for r in entry["by_k"]:
            assert 0 <= r["acceptance_rate"] <= 1 and 1 <= r["tokens_per_round"] <= r["k"] + 1
            assert r["speedup"] > 0 and r["predicted_speedup"] > 0
    assert saved["reused"] == {"draft": False, "target": False}
    model, _, reused = speculative.train_or_reuse(tmp_path, "draft", s["draft"],
                                                  speculative.SIZES["toy"], "cpu")
    assert reused and model.n_params() == saved["n_params"]["draft"]


def test_power_law_fit_recovers_known_parameters():
    C = numpy.geomspace(1e9, 1e14, 9)
    a, b, c = 300.0, 0.3, 1.4
    L = a * C ** -b + c
    fa, fb, fc, rms = scaling.fit_power_law(C, L)
    assert fa == pytest.approx(a, rel=1e-3) and fb == pytest.approx(b, rel=1e-4)
    assert fc == pytest.approx(c, abs=1e-4) and rms < 1e-5
    noisy = L + numpy.random.default_rng(0).normal(0, 0.002, len(L))
    fa, fb, fc, rms = scaling.fit_power_law(C, noisy)
    assert fb == pytest.approx(b, rel=0.1) and fc == pytest.approx(c, abs=0.05) and rms < 0.004


def test_power_law_fit_needs_three_points():
    with pytest.raises(ValueError, match="at least 3 points"):
        scaling.fit_power_law([1e9, 1e10], [2.0, 1.5])


def test_frontier_keeps_the_running_minimum():
    points = [{"compute": c, "val_loss": l} for c, l in [(4, 1.0), (1, 3.0), (2, 3.5), (3, 2.0), (5, 1.2)]]
    assert [(p["compute"], p["val_loss"]) for p in scaling.frontier(points)] == [(1, 3.0), (3, 2.0), (4, 1.0)]
