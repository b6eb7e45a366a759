"""minitx.distributed: start-up, sharding, and the MPI runs (launched here under mpiexec -n 2)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest

from minitx import distributed, nn

ROOT = Path(__file__).resolve().parents[1]


def find_mpiexec():
    """mpiexec from the MPI wheel beside this Python (pip install mpich), or on PATH."""
    here = str(Path(sys.executable).parent)
    return shutil.which("mpiexec", path=os.pathsep.join([here, os.environ.get("PATH", "")]))


def mpiexec(*args, timeout=120):
    """Run `python *args` on 2 ranks from the repository root; (returncode, output, seconds).
    On timeout the whole process group is killed and the test fails: a hang is a failure."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("needs mpi4py (pip install -e '.[test]')")
    if find_mpiexec() is None:
        pytest.skip("needs mpiexec (pip install mpich)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    proc = subprocess.Popen([find_mpiexec(), "-n", "2", sys.executable, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"mpiexec {' '.join(args)} hung for {timeout} s:\n{output}")
    return proc.returncode, output, time.perf_counter() - started


def test_data_and_tensor_parallel_equal_one_process_under_mpiexec():
    code, output, _ = mpiexec("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/mpi/mpi_parallel.py")
    assert code == 0, output
    assert output.count("9 passed") == 2, output  # both ranks ran every test


@pytest.mark.parametrize("how", ["raise", "caught", "kill"])
def test_a_failing_rank_ends_the_job_within_seconds(how):
    code, output, seconds = mpiexec("tests/mpi/mpi_abort.py", how, timeout=60)
    assert code != 0, output
    assert "rank 0 went past" not in output
    assert seconds < 20, output
    if how == "kill":
        assert "KILLED BY SIGNAL: 9" in output or "Killed (signal 9)" in output, output
    else:
        assert "rank 1 of 2:" in output and "broke on purpose; aborting all ranks" in output, output


def test_one_process_needs_no_mpi(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if mpi4py were not installed
    strategy = distributed.setup("none")
    assert (strategy.world.rank, strategy.world.size, strategy.is_main) == (0, 1, True)
    with pytest.raises(RuntimeError, match="pip install mpi4py mpich"):
        distributed.setup("data")
    with pytest.raises(ValueError, match="unknown parallel 'pipeline'"):
        distributed.setup("pipeline")
    with pytest.raises(ValueError, match="NCCL for GPUs is not written yet"):
        distributed.setup("tensor", device="cuda")


@pytest.mark.parametrize("size", [2, 4])
def test_shards_are_heads_and_hidden_units_and_join_back(size):
    cfg = nn.TransformerConfig(vocab_size=11, block_size=8, n_layer=1, n_head=4, n_kv_head=4,
                               d_model=16, mlp="swiglu")
    model = nn.DecoderOnly(cfg)
    H, D, C = 4, 4, 16
    layout = distributed.sharded_parameters(model)
    assert len(layout) == 10  # q, kv, up, gate with bias; out and down without
    for name, p in model.named_parameters():
        if name not in layout:
            continue
        parts = numpy.stack([distributed.shard(p.data, *layout[name], r, size) for r in range(size)])
        numpy.testing.assert_array_equal(distributed.unshard(parts, *layout[name]), p.data)
    kv = model.stack.blocks[0].attn.kv.weight.data                          # rows (k|v, head, d)
    last = distributed.shard(kv, *layout["stack.blocks.0.attn.kv.weight"], size - 1, size)
    heads = slice(H - H // size, H)                                          # the last rank's heads
    expected = kv.reshape(2, H, D, C)[:, heads].reshape(-1, C)               # its k rows, then v rows
    numpy.testing.assert_array_equal(last, expected)


def test_tensor_parallel_needs_divisible_heads():
    world = distributed.Communicator()
    world.size = 3  # shard_model checks the sizes before it talks to anyone
    cfg = nn.TransformerConfig(vocab_size=11, block_size=8, n_layer=1, n_head=4, d_model=16)
    with pytest.raises(ValueError, match="divisible by 3"):
        distributed.shard_model(nn.DecoderOnly(cfg), world)


# a tiny float64 run whose learning rate depends on the step only (warmup beyond the last step),
# so a run cut at any step and resumed reproduces the uncut one
TINY = ["--n-layer", "2", "--n-head", "4", "--d-model", "32", "--block-size", "16", "--dtype",
        "float64", "--warmup-iters", "10", "--eval-interval", "2", "--eval-iters", "1",
        "--no-full-eval", "--sample-tokens", "0", "--quiet"]


def records(out_dir):
    lines = (Path(out_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "ms"} for line in lines]


def test_train_cli_runs_and_resumes_across_one_process_data_and_tensor_parallel(tmp_path):
    """One process, 6 steps of 12 windows, against: 2 steps data parallel (2 ranks x 6 windows),
    resumed for 2 steps tensor parallel, resumed for 2 steps on one process."""
    from minitx.__main__ import main
    assert main(["train", "--batch-size", "12", "--max-iters", "6", "--out-dir",
                 str(tmp_path / "one"), *TINY]) == 0
    out = ["--out-dir", str(tmp_path / "mixed"), *TINY]
    for flags in (["--parallel", "data", "--batch-size", "6", "--max-iters", "2"],
                  ["--parallel", "tensor", "--batch-size", "12", "--max-iters", "4", "--resume"]):
        code, output, _ = mpiexec("-m", "minitx", "train", *flags, *out)
        assert code == 0, output
    assert main(["train", "--batch-size", "12", "--max-iters", "6", "--resume", *out]) == 0
    expected, got = records(tmp_path / "one"), records(tmp_path / "mixed")
    assert [r.keys() for r in got] == [r.keys() for r in expected]  # each step logged once
    for r, e in zip(got, expected):
        for key in r:
            assert r[key] == pytest.approx(e[key], rel=1e-10, abs=1e-12), (key, r, e)
