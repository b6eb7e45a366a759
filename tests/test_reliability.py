"""Nothing lost, nothing silently wrong: every bad setting and every damaged checkpoint refused in
one line, interruptions by either signal saved, logs that survive a crash mid-write."""
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest

import minitx
from minitx import checkpoint, train as train_module
from minitx.distributed import strategy as strategy_module
from minitx.__main__ import main
from minitx.config_check import ConfigError
from minitx.generate import generate
from minitx.train import TrainConfig, train
from test_train import TEXT, TINY, losses

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys, code, expected_code=1):
    """The stderr of a CLI call that must fail: exit code, one line, no traceback."""
    err = capsys.readouterr().err
    assert code == expected_code, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "allow_pickle" not in err
    return err


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def tiny_train(corpus, out, *extra):
    return main(["train", "--data", str(corpus), "--out-dir", str(out), *TINY, *extra])


# --- settings ----------------------------------------------------------------------------------
BAD_TRAIN_SETTINGS = [
    (["--grad-clip=-1"], "grad_clip must be >= 0"),
    (["--lr=-1e-3"], "lr must be > 0"),
    (["--lr", "0"], "lr must be > 0"),
    (["--lr", "nan"], "lr must be > 0"),
    (["--lr", "inf"], "lr must be > 0"),
    (["--min-lr", "1e-2"], "min_lr (0.01) must not exceed lr"),
    (["--min-lr=-1e-4"], "min_lr must be >= 0"),
    (["--beta1", "1.5"], "beta1 must be in [0, 1)"),
    (["--beta2", "1.0"], "beta2 must be in [0, 1)"),
    (["--weight-decay=-1"], "weight_decay must be >= 0"),
    (["--warmup-iters=-10"], "warmup_iters must be >= 0"),
    (["--max-iters=-5"], "max_iters must be >= 1"),
    (["--max-iters", "0"], "max_iters must be >= 1"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--eval-interval", "0"], "eval_interval must be >= 1"),
    (["--eval-iters", "0"], "eval_iters must be >= 1"),
    (["--sample-tokens=-1"], "sample_tokens must be >= 0"),
    (["--seed=-1"], "seed must be >= 0"),
    (["--dtype", "float16"], "dtype must be one of"),
    (["--device", "tpu"], "device must be one of"),
    (["--tokenizer", "words"], "tokenizer must be one of"),
    (["--tokenizer", "bpe", "--vocab-size", "100"], "vocab_size must be >= 256"),
    (["--n-head", "0"], "n_head must be >= 1"),
    (["--n-layer", "0"], "n_layer must be >= 1"),
    (["--block-size", "0"], "block_size must be >= 1"),
    (["--d-model", "18"], "d_model=18 is not divisible by n_head=4"),
    (["--n-kv-head", "3"], "not divisible by n_kv_head=3"),
    (["--n-kv-head=-2"], "n_kv_head must be >= 1"),
    (["--d-ff", "0"], "d_ff must be >= 1"),
    (["--window", "0"], "window must be >= 1"),
    (["--dropout", "1.0"], "dropout must be in [0, 1)"),
    (["--norm", "batch"], "norm must be one of"),
    (["--pos", "alibi"], "pos must be one of"),
    (["--kernels", "magic"], "kernels must be one of"),
]
BAD_SAMPLE_SETTINGS = [
    (["--tokens=-5"], "n_tokens must be >= 0"),
    (["--top-k", "0"], "top_k must be >= 1"),
    (["--top-k=-3"], "top_k must be >= 1"),
    (["--temperature", "nan"], "temperature must be >= 0"),
    (["--temperature=-1"], "temperature must be >= 0"),
    (["--temperature", "inf"], "temperature must be >= 0"),
]


@pytest.mark.parametrize("args, message", BAD_TRAIN_SETTINGS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_training_settings_are_refused_in_one_line(args, message, tmp_path, capsys):
    # TINY first: the bad setting overrides it; the corpus is never read, so none is given
    code = main(["train", "--data", str(tmp_path / "none.txt"), "--out-dir", str(tmp_path / "run"),
                 *TINY, "--n-head", "4", "--d-model", "16", *args])
    assert message in one_line_error(capsys, code)
    assert not (tmp_path / "run").exists(), "refused before the run directory is made"


@pytest.mark.parametrize("args, message", BAD_SAMPLE_SETTINGS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_sampling_settings_are_refused_in_one_line(args, message, tmp_path, capsys):
    code = main(["sample", "--run", str(tmp_path / "no-run"), *args])  # checked before loading
    assert message in one_line_error(capsys, code)


def test_settings_are_checked_from_python_too(corpus, tmp_path):
    with pytest.raises(ConfigError, match="grad_clip must be >= 0"):
        train(TrainConfig(data=str(corpus), out_dir=str(tmp_path / "run"), grad_clip=-1.0))
    with pytest.raises(ConfigError, match="lr must be float, got '1e-3'"):
        train(TrainConfig(data=str(corpus), out_dir=str(tmp_path / "run"), lr="1e-3"))
    with pytest.raises(ValueError, match="n_head must be int"):
        minitx.nn.TransformerConfig(n_head=2.5)
    model = minitx.nn.DecoderOnly(minitx.nn.TransformerConfig(vocab_size=5, n_layer=1, d_model=8, n_head=2))
    with pytest.raises(ConfigError, match="top_k must be >= 1"):
        next(generate(model, [1], 3, numpy.random.default_rng(0), top_k=0))


def test_a_negative_value_after_a_space_gets_a_hint(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--lr", "-1e-3"])
    assert exit_.value.code == 2 and "--lr=-1e-3" in capsys.readouterr().err


# --- the file system -----------------------------------------------------------------------------
def test_data_that_is_a_directory(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path), "--out-dir", str(tmp_path / "run"), *TINY])
    assert "is a directory: --data takes a UTF-8 text file" in one_line_error(capsys, code)


def test_out_dir_under_a_file(corpus, tmp_path, capsys):
    code = tiny_train(corpus, corpus / "run")
    assert "cannot write to --out-dir" in one_line_error(capsys, code)


def test_out_dir_that_is_a_file(corpus, tmp_path, capsys):
    code = tiny_train(corpus, corpus)
    assert "is a file, not a directory" in one_line_error(capsys, code)


def test_unwritable_out_dir_is_found_before_the_data_is_read(tmp_path, capsys):
    """/sys refuses new entries even to root; --data names a directory, which reading would
    refuse: the out-dir error must come first."""
    code = main(["train", "--data", str(tmp_path), "--out-dir", "/sys/minitx-run", *TINY])
    assert "cannot write to --out-dir /sys/minitx-run" in one_line_error(capsys, code)


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(corpus, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up once the first checkpoint is written
        if (out / "checkpoint.npz").exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    code = tiny_train(corpus, out, "--max-iters", "4", "--eval-interval", "2")
    err = one_line_error(capsys, code)
    assert "No space left on device; its previous version is intact" in err
    assert checkpoint.read_run(out / "checkpoint.npz")[0]["step"] == 0
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


# --- run directories, logs, interruptions -----------------------------------------------------
def test_a_fresh_run_refuses_a_directory_holding_another_run(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0, "val_loss": 4.0}\n')
    code = tiny_train(corpus, out, "--max-iters", "2")
    assert "holds another run (metrics.jsonl)" in one_line_error(capsys, code)
    assert (out / "metrics.jsonl").read_text().count("\n") == 1
    code = tiny_train(corpus, tmp_path / "empty", "--max-iters", "2", "--resume")
    assert "no checkpoint to resume" in one_line_error(capsys, code)


def test_resume_after_a_truncated_metrics_line_and_count_only_the_new_steps(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert tiny_train(corpus, out, "--max-iters", "4", "--eval-interval", "2") == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a crash mid-write
    capsys.readouterr()
    assert tiny_train(corpus, out, "--max-iters", "6", "--eval-interval", "2", "--resume") == 0
    assert "2 iterations in" in capsys.readouterr().out
    assert sorted(losses(out)) == [1, 2, 3, 4, 5, 6]

    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][:10]
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    code = tiny_train(corpus, out, "--max-iters", "8", "--eval-interval", "2", "--resume")
    assert "metrics.jsonl, line 3, is not a record" in one_line_error(capsys, code)


def test_a_non_finite_gradient_norm_stops_the_run_before_it_is_saved(corpus, tmp_path, capsys, monkeypatch):
    real = strategy_module.clip_grad_norm  # the training loop clips through its strategy
    calls = []

    def clip(params, max_norm):
        calls.append(real(params, max_norm))
        return calls[-1] if len(calls) < 3 else calls[-1] * float("inf")   # a 0-d tensor, as clipping gives
    monkeypatch.setattr(strategy_module, "clip_grad_norm", clip)
    out = tmp_path / "run"
    code = tiny_train(corpus, out, "--max-iters", "6", "--eval-interval", "2")
    assert "the gradient norm became inf at step 3" in one_line_error(capsys, code)
    assert checkpoint.read_run(out / "checkpoint.npz")[0]["step"] == 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_either_signal_finishes_the_step_and_saves(signum, corpus, tmp_path, capsys, monkeypatch):
    """The signal arrives in the middle of step 3 (sent by this process to itself)."""
    real, calls = train_module.cosine_schedule, []

    def schedule(step, **kwargs):  # called once per training step
        calls.append(step)
        if len(calls) == 3:
            os.kill(os.getpid(), signum)
        return real(step, **kwargs)
    monkeypatch.setattr(train_module, "cosine_schedule", schedule)
    handler = signal.getsignal(signum)
    out = tmp_path / "run"
    assert tiny_train(corpus, out, "--max-iters", "50") == 130
    assert "interrupted at step 3: checkpoint saved" in capsys.readouterr().out
    assert checkpoint.read_run(out / "checkpoint.npz")[0]["step"] == 3
    assert signal.getsignal(signum) == handler, "the handler before training is back"


def test_sigterm_from_outside_saves_the_run(corpus, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "minitx", "train", "--data", str(corpus), "--out-dir",
                             str(out), "--max-iters", "100000", *TINY], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = out / "metrics.jsonl", time.time() + 120
    while proc.poll() is None and time.time() < deadline and (
            not metrics.exists() or len(metrics.read_text().splitlines()) < 4):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    stopped = max(losses(out))
    assert f"interrupted at step {stopped}: checkpoint saved" in stdout
    assert checkpoint.read_run(out / "checkpoint.npz")[0]["step"] == stopped


def test_python_m_minitx_beside_a_folder_named_minitx(tmp_path):
    """A folder named minitx in the working directory (a checkout, say) becomes an empty namespace
    package; the real package's __main__ is still found (an editable install's finder does that)."""
    (tmp_path / "minitx").mkdir()
    code = ("import runpy, minitx; minitx.__path__.append(%r); runpy.run_module('minitx', run_name='__main__')"
            % str(ROOT / "minitx"))
    out = subprocess.run([sys.executable, "-c", code, "train"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "took the folder" in out.stderr and "from another directory" in out.stderr


# --- damaged checkpoints ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A run whose checkpoint has optimizer moments (4 steps), and its corpus."""
    root = tmp_path_factory.mktemp("good")
    (root / "corpus.txt").write_text(TEXT)
    assert tiny_train(root / "corpus.txt", root / "run", "--max-iters", "4", "--eval-interval", "2") == 0
    meta, arrays = checkpoint.read_run(root / "run" / "checkpoint.npz")
    return root, meta, arrays


def npz(meta, arrays, header=None):
    """The bytes of a checkpoint of `meta` and `arrays` (or of a raw `header`)."""
    if header is None:
        header = json.dumps(meta).encode("utf-8")
    buffer = io.BytesIO()
    numpy.savez(buffer, **({} if header is False else {"__meta__": numpy.frombuffer(header, numpy.uint8)}),
                **arrays)
    return buffer.getvalue()


def with_meta(change):
    """A damage that edits a copy of the header with change(meta)."""
    def damage(meta, arrays, good):
        meta = json.loads(json.dumps(meta))
        change(meta)
        return npz(meta, arrays)
    return damage


def with_array(change):
    """A damage that edits a copy of the arrays with change(arrays)."""
    def damage(meta, arrays, good):
        arrays = dict(arrays)
        change(arrays)
        return npz(meta, arrays)
    return damage


W = "model/stack.blocks.0.mlp.up.weight"
M = "optim/0/m"


def zip_of_text(meta, arrays, good):
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("notes.txt", "hello")
    return buffer.getvalue()


DAMAGED = {  # kind: (damage(meta, arrays, good_bytes) -> bytes, what the message must say)
    "random bytes": (lambda m, a, g: numpy.random.default_rng(0).bytes(5000), "not a minitx checkpoint"),
    "a text file": (lambda m, a, g: b"step: 100\nweights: yes\n", "not a minitx checkpoint"),
    "an empty file": (lambda m, a, g: b"", "not a minitx checkpoint"),
    "cut in half": (lambda m, a, g: g[: len(g) // 2], "not a minitx checkpoint"),
    "its last byte lost": (lambda m, a, g: g[:-1], "not a minitx checkpoint"),
    "a zip of other files": (zip_of_text, "not a minitx checkpoint (no readable header)"),
    "no header": (lambda m, a, g: npz(m, a, header=False), "no readable header"),
    "header not UTF-8": (lambda m, a, g: npz(m, a, header=b"\xff\xfe{"), "no readable header"),
    "header not JSON": (lambda m, a, g: npz(m, a, header=b"{step: 1"), "no readable header"),
    "header a JSON list": (lambda m, a, g: npz(m, a, header=b"[1, 2]"), "format 'list'"),
    "another format": (with_meta(lambda m: m.update(format="other-2")), "format 'other-2'"),
    "an object array": (with_array(lambda a: a.update(extra=numpy.array([{}, 1], dtype=object))),
                        "an array of Python objects"),
    "no step": (with_meta(lambda m: m.pop("step")), "lacks step"),
    "a negative step": (with_meta(lambda m: m.update(step=-4)), "step -4 is not a count"),
    "a step as text": (with_meta(lambda m: m.update(step="4")), "step '4' is not a count"),
    "no config": (with_meta(lambda m: m.pop("config")), "lacks config"),
    "config without data": (with_meta(lambda m: m["config"].pop("data")), "config lacks data"),
    "config with a negative lr": (with_meta(lambda m: m["config"].update(lr=-1)), "lr must be > 0"),
    "no model config": (with_meta(lambda m: m.pop("model_config")), "lacks model_config"),
    "model config with 0 heads": (with_meta(lambda m: m["model_config"].update(n_head=0)), "n_head must be >= 1"),
    "model config a list": (with_meta(lambda m: m.update(model_config=[1])), "model_config should be JSON"),
    "no tokenizer": (with_meta(lambda m: m.pop("tokenizer")), "lacks tokenizer"),
    "an unknown tokenizer": (with_meta(lambda m: m["tokenizer"].update(kind="words")), "tokenizer does not load"),
    "a tokenizer of another size": (with_meta(lambda m: m["tokenizer"].update(chars="abc")), "tokenizer has 3 tokens"),
    "no rng": (with_meta(lambda m: m.pop("rng")), "lacks rng"),
    "a damaged batch rng": (with_meta(lambda m: m["rng"].update(batches={"state": 1})), "batches random generator"),
    "no minitx rng": (with_meta(lambda m: m["rng"].pop("minitx")), "minitx random generator"),
    "no optimizer": (with_meta(lambda m: m.pop("optimizer")), "lacks optimizer"),
    "an optimizer lr of NaN": (with_meta(lambda m: m["optimizer"].update(lr=float("nan"))), "optimizer settings"),
    "a weight missing": (with_array(lambda a: a.pop(W)), "arrays missing"),
    "an unexpected array": (with_array(lambda a: a.update({"model/extra": numpy.zeros(2, "float32")})),
                            "unexpected arrays ['model/extra']"),
    "a weight of another shape": (with_array(lambda a: a.update({W: a[W][:-1]})), "the config asks for"),
    "int64 weights": (with_array(lambda a: a.update({W: a[W].astype("int64")})), f"{W} is int64"),
    "float16 weights": (with_array(lambda a: a.update({W: a[W].astype("float16")})), f"{W} is float16"),
    "complex weights": (with_array(lambda a: a.update({W: a[W].astype("complex64")})), f"{W} is complex64"),
    "a NaN weight": (with_array(lambda a: a[W].__setitem__((0, 0), numpy.nan)), "holds NaN or infinite"),
    "an infinite weight": (with_array(lambda a: a[W].__setitem__((0, 0), numpy.inf)), "holds NaN or infinite"),
    "an optimizer moment missing": (with_array(lambda a: a.pop(M)), "arrays missing ['optim/0/m']"),
    "all optimizer moments missing": (with_array(lambda a: [a.pop(k) for k in list(a) if k.startswith("optim/")]),
                                      "optimizer state is missing after 4 steps"),
    "a moment of another shape": (with_array(lambda a: a.update({M: a[M][:1]})), "optim/0/m is float32"),
    "a NaN moment": (with_array(lambda a: a.update({M: a[M] * numpy.nan})), "optim/0/m holds NaN"),
}


@pytest.mark.parametrize("command", ["sample", "train --resume"])
@pytest.mark.parametrize("kind", list(DAMAGED))
def test_damaged_checkpoints_are_refused_in_one_line(kind, command, good_run, tmp_path, capsys):
    root, meta, arrays = good_run
    damage, message = DAMAGED[kind]
    good = (root / "run" / "checkpoint.npz").read_bytes()
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.npz").write_bytes(damage(meta, {k: v.copy() for k, v in arrays.items()}, good))
    before = (run / "checkpoint.npz").read_bytes()
    if command == "sample":
        code = main(["sample", "--run", str(run), "--tokens", "3"])
    else:
        code = tiny_train(root / "corpus.txt", run, "--max-iters", "6", "--eval-interval", "2", "--resume")
    assert message in one_line_error(capsys, code)
    assert (run / "checkpoint.npz").read_bytes() == before, "a refused checkpoint is left as it was"


# --- the full runs (`python -m pytest -m slow`) ----------------------------------------------------
@pytest.mark.slow
def test_the_default_run_reaches_its_validation_loss(tmp_path):
    """README's promise: `python -m minitx train` reaches about 1.90 nats per character on the
    whole validation split (PyTorch: 1.88 to 1.90); minutes on 2 cores."""
    summary = train(minitx.train.preset("shakespeare-cpu", out_dir=str(tmp_path / "run"), sample_tokens=0),
                    progress=False, say=lambda *args: None)
    assert summary["steps_run"] == 2000 and summary["val_loss_full"] <= 1.95


@pytest.mark.slow
@pytest.mark.parametrize("after_records", [3, 9, 15])
def test_a_run_killed_outright_resumes_to_the_uninterrupted_losses(after_records, corpus, tmp_path):
    """SIGKILL (no handler runs) at a few points; the resumed run repeats the steps since the last
    checkpoint and ends with exactly the losses of a run never stopped."""
    common = ["train", "--data", str(corpus), "--max-iters", "40", "--eval-interval", "5",
              "--dropout", "0.1", *TINY]
    subprocess.run([sys.executable, "-m", "minitx", *common, "--out-dir", str(tmp_path / "full")],
                   cwd=ROOT, check=True, capture_output=True)
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "minitx", *common, "--out-dir", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "metrics.jsonl"
    while proc.poll() is None and (not metrics.exists() or len(metrics.read_text().splitlines()) < after_records):
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    subprocess.run([sys.executable, "-m", "minitx", *common, "--out-dir", str(out), "--resume"],
                   cwd=ROOT, check=True, capture_output=True)
    assert losses(out) == losses(tmp_path / "full")


def test_checking_a_checkpoint_leaves_the_random_stream_as_it_was(good_run):
    root = good_run[0]
    minitx.manual_seed(3)
    expected = minitx.randn(4).numpy()
    minitx.manual_seed(3)
    checkpoint.read_run(root / "run" / "checkpoint.npz")
    assert (minitx.randn(4).numpy() == expected).all()
