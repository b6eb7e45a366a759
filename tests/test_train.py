"""The training loop and the CLI: learning, checkpoints, exact resume after Ctrl-C, clear errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import STANDIN
from minitx import backend, nn
from minitx.__main__ import build_parser, config_from_args, main
from minitx.train import preset, train

TINY = ["--n-layer", "1", "--n-head", "2", "--d-model", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-iters", "2", "--sample-tokens", "0", "--quiet"]
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def losses(run_dir):
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_training_overfits_a_tiny_text_and_writes_the_run(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out-dir", str(out), "--max-iters", "150",
                 "--eval-interval", "50", "--lr", "1e-2", "--warmup-iters", "10", "--sample-tokens", "20",
                 *TINY[:-3], "--quiet"]) == 0
    curve = losses(out)
    assert curve[150] < 0.25 * curve[1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_loss_full"] < 1.0 and len(summary["sample"]) >= 20
    assert (out / "loss.png").stat().st_size > 1000 and (out / "checkpoint.npz").exists()
    assert "val_loss_full" in capsys.readouterr().out


def test_sample_with_and_without_cache_agree(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--data", str(corpus), "--out-dir", str(out), "--max-iters", "40", *TINY])
    capsys.readouterr()
    texts = []
    for cache_flag in ([], ["--no-cache"]):
        assert main(["sample", "--run", str(out), "--prompt", "First", "--tokens", "10",
                     "--temperature", "0", *cache_flag]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].startswith("First") and len(texts[0]) == len("First") + 10 + 1


def run_cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "minitx", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_ctrl_c_saves_and_resume_reproduces_the_uninterrupted_run(corpus, tmp_path):
    common = ["train", "--data", str(corpus), "--max-iters", "300", "--eval-interval", "100",
              "--dropout", "0.1", *TINY]
    full = run_cli(*common, "--out-dir", str(tmp_path / "full"))

    cut = run_cli(*common, "--out-dir", str(tmp_path / "cut"))
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not metrics.exists() or len(losses(tmp_path / "cut")) < 10):
        time.sleep(0.01)
    cut.send_signal(signal.SIGINT)
    out, err = cut.communicate(timeout=60)
    assert cut.returncode == 130, err
    stopped = max(losses(tmp_path / "cut"))
    assert 10 <= stopped < 300, "the run must be cut mid-way for this test to mean anything"
    assert f"interrupted at step {stopped}: checkpoint saved" in out

    resumed = run_cli(*common, "--out-dir", str(tmp_path / "cut"), "--resume")
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    assert full.wait(timeout=120) == 0, full.stderr.read()
    a, b = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert sorted(a) == sorted(b) == list(range(1, 301))
    assert all(a[s] == b[s] for s in a), "resumed losses differ from the uninterrupted run"


def test_corrupted_checkpoint_and_other_config_are_refused(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--data", str(corpus), "--out-dir", str(out), "--max-iters", "5", *TINY])
    capsys.readouterr()
    assert main(["train", "--data", str(corpus), "--out-dir", str(out), "--max-iters", "10",
                 "--resume", *TINY, "--n-layer", "2"]) == 1
    assert "another config: n_layer=1 (this run: 2)" in capsys.readouterr().err
    assert main(["train", "--data", str(corpus), "--out-dir", str(out), "--max-iters", "5", *TINY]) == 1
    assert "holds another run" in capsys.readouterr().err

    ckpt = out / "checkpoint.npz"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    assert main(["sample", "--run", str(out), "--tokens", "5"]) == 1
    assert "or is truncated" in capsys.readouterr().err
    assert main(["train", "--data", str(corpus), "--out-dir", str(out), "--resume", *TINY]) == 1
    assert "or is truncated" in capsys.readouterr().err


@pytest.mark.parametrize("problem, args, message", [
    ("missing file", ["--data", "/nonexistent/corpus.txt"], "/nonexistent/corpus.txt"),
    ("empty file", ["--data", "{empty}"], "is empty"),
    ("corpus shorter than a window", ["--data", "{short}"], "fewer than one window"),
    ("unknown preset", ["--preset", "tiny-tpu"], None),
    ("gpu without a gpu", ["--device", "cuda"], "device 'cuda'"),
])
def test_bad_training_input_gives_one_line_errors(problem, args, message, tmp_path, capsys):
    if problem == "gpu without a gpu":
        import minitx
        if minitx.cuda_available():
            pytest.skip("this machine has a GPU")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("abcdefghijklmnopqrstuvwxyz" * 2)
    args = [a.format(empty=tmp_path / "empty.txt", short=tmp_path / "short.txt") for a in args]
    if message is None:
        with pytest.raises(SystemExit):
            main(["train", *args, "--out-dir", str(tmp_path / "run"), *TINY])
        return
    assert main(["train", *args, "--out-dir", str(tmp_path / "run"), *TINY]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_prompt_outside_the_vocabulary_is_a_clear_error(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--data", str(corpus), "--out-dir", str(out), "--max-iters", "3", *TINY])
    capsys.readouterr()
    assert main(["sample", "--run", str(out), "--prompt", "Zebra é"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: prompt:") and "'é'" in err


def test_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "minitx", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and all(c in out.stdout for c in ("train", "sample", "experiment"))



def test_every_model_field_is_a_flag():
    """The flags come from the dataclasses: window, norm_first, d_ff and the kernel choice too."""
    args = build_parser().parse_args(["train", "--window", "8", "--no-norm-first", "--d-ff", "24",
                                      "--kernels", "reference", "--n-layer", "2", "--lr", "0.5"])
    cfg = config_from_args(args)
    assert (cfg.model.window, cfg.model.norm_first, cfg.model.d_ff) == (8, False, 24)
    assert (cfg.model.kernels, cfg.model.n_layer, cfg.lr) == ("reference", 2, 0.5)
    assert config_from_args(build_parser().parse_args(["train", "--vocab-size", "300"])).vocab_size == 300
    assert config_from_args(build_parser().parse_args(["train"])).model == nn.TransformerConfig()


def test_model_is_drawn_on_its_device(monkeypatch):
    """build_model draws the weights on cfg.device, whatever the default device is: the default
    device's generator is never asked (here the default is 'cuda', which would fail on CPU)."""
    from minitx import random
    from minitx.train import build_model
    asked = []
    real = random.generator
    monkeypatch.setattr(random, "generator", lambda device="cpu": asked.append(device) or real(device))
    monkeypatch.setattr(backend, "_default_device", "cuda")
    model = build_model(preset("shakespeare-cpu", model=dict(n_layer=1), device="cpu"), 11)
    assert {p.device for p in model.parameters()} == {"cpu"}
    assert set(asked) == {"cpu"} and backend._default_device == "cuda"


# ---------------------------------------------------------------------------------------------
# on the GPU (or the CuPy stand-in: MINITX_FAKE_CUPY=1)

def _gpu_config(tmp_path, corpus, **overrides):
    return preset("shakespeare-cpu", **{
        **dict(data=str(corpus), model=dict(n_layer=2, n_head=2, d_model=16, block_size=16,
                                            dropout=0.1),
               batch_size=2, eval_iters=1, full_eval=False, sample_tokens=0, device="cuda",
               out_dir=str(tmp_path)), **overrides})


@pytest.mark.gpu
def test_cli_trains_on_cuda(corpus, tmp_path):
    """A few steps of `python -m minitx train --device cuda`, run as a user would."""
    env = dict(os.environ)
    if getattr(backend.cupy, "STANDIN", False):     # the subprocess imports the same cupy
        env["PYTHONPATH"] = os.pathsep.join([STANDIN, env.get("PYTHONPATH", "")])
    done = run_cli("train", "--device", "cuda", "--data", str(corpus), "--max-iters", "3",
                   "--dropout", "0.1", "--out-dir", str(tmp_path / "run"), *TINY, env=env)
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert sorted(losses(tmp_path / "run")) == [1, 2, 3]


@pytest.mark.gpu
@pytest.mark.skipif(not getattr(backend.cupy, "STANDIN", False),
                    reason="counts transfers through the CuPy stand-in (MINITX_FAKE_CUPY=1)")
def test_training_step_sync_budget(corpus, tmp_path):
    """At most 2 device-to-host transfers per training step (the loss and the gradient norm).
    Counted as the difference between a 6-step and a 3-step run, so that the evaluation and
    checkpoint both runs make cancel out."""
    def transfers(steps):
        before = backend.cupy.transfers
        train(_gpu_config(tmp_path / str(steps), corpus, max_iters=steps, eval_interval=100),
              progress=False, say=lambda *args: None)
        return backend.cupy.transfers - before
    per_step = (transfers(6) - transfers(3)) / 3
    print(f"device-to-host transfers per training step: {per_step}")
    assert per_step <= 2


@pytest.mark.gpu
def test_resume_continues_the_cuda_random_stream(corpus, tmp_path):
    """With dropout on the GPU, 2 steps + resume to 4 give the losses of 4 steps in one go: the
    checkpoint carries the CUDA generator's seed, so the resumed run does not replay the dropout
    masks of step 0."""
    say = lambda *args: None  # noqa: E731
    train(_gpu_config(tmp_path / "full", corpus, max_iters=4, eval_interval=2), progress=False,
          say=say)
    train(_gpu_config(tmp_path / "cut", corpus, max_iters=2, eval_interval=2), progress=False,
          say=say)
    train(_gpu_config(tmp_path / "cut", corpus, max_iters=4, eval_interval=2), resume=True,
          progress=False, say=say)
    full, cut = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert sorted(full) == sorted(cut) == [1, 2, 3, 4]
    assert [full[s] for s in (3, 4)] == [cut[s] for s in (3, 4)]
