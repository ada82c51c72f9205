"""Runtime: device validation (issue 8.4), thread defaults shared by API and CLI (issue 12.9),
the numba compilation cache (issue 12.10), and the torch (GPU / sharded) Landau paths.

CUDA tests skip cleanly on machines without a GPU.
"""
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
import torch

import particlescore as ps
from particlescore import landau_kernels, physics, runtime
from particlescore.cli import main

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")

TINY_LANDAU = """\
[problem]
name = "landau_coulomb"
dim = 3
[estimator]
name = "kde"
[run]
n = 40
dt = 0.05
t_end = 0.1
save_every = 1
seed = 3
integrator = "euler"
"""


# --------------------------------------------------------------------------- devices
@pytest.mark.parametrize("device", ["cpu", "CPU", " cpu", torch.device("cpu")])
def test_cpu_device_resolves(device):
    assert runtime.resolve_device(device) == torch.device("cpu")


@pytest.mark.parametrize("device", ["tpu", "gpu", "mps", "cuda:x", "", "cpu cuda"])
def test_unknown_device_is_a_clear_error(device):
    with pytest.raises(ValueError, match="unknown device"):
        runtime.resolve_device(device)


@pytest.mark.parametrize("device", [0, None, 1.5])
def test_device_of_wrong_type_is_a_clear_error(device):
    with pytest.raises(ValueError, match="device must be a string"):
        runtime.resolve_device(device)


@pytest.mark.skipif(CUDA, reason="checks the error on a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_cuda_without_gpu_is_a_clear_error(device):
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        runtime.resolve_device(device)


@needs_cuda
def test_cuda_device_index_is_checked():
    assert runtime.resolve_device("cuda").type == "cuda"
    with pytest.raises(ValueError, match="no such GPU"):
        runtime.resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_simulate_rejects_a_bad_device_before_any_work(tmp_path):
    out = tmp_path / "run.nc"
    with pytest.raises(ValueError, match="unknown device"):
        ps.simulate(ps.AnisotropicMaxwell(dim=3), ps.KDE(), n=20, dt=0.1, t_end=0.2, device="tpu",
                    out=out, progress=False)
    assert not out.exists()
    if not CUDA:
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            ps.simulate(ps.AnisotropicMaxwell(dim=3), ps.KDE(), n=20, dt=0.1, t_end=0.2, device="cuda",
                        out=out, progress=False)
        assert not out.exists()


def test_cli_rejects_a_bad_device(tmp_path, capsys):
    config = tmp_path / "case.toml"
    config.write_text(TINY_LANDAU)
    status = main(["run", str(config), "--out", str(tmp_path / "run.nc"), "--device", "tpu", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "unknown device" in err[0], err
    assert not (tmp_path / "run.nc").exists()
    config.write_text(TINY_LANDAU.replace("[run]\n", '[run]\ndevice = "tpu"\n'))
    status = main(["run", str(config), "--out", str(tmp_path / "run.nc"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "device" in err[0], err


def test_estimators_without_a_device_path_are_refused_for_cuda():
    cuda = torch.device("cuda")                       # move_estimator itself needs no GPU to refuse
    for est in (ps.Blob(), ps.SBTM()):
        with pytest.raises(ValueError, match="runs on the CPU only"):
            runtime.move_estimator(est, cuda)
    runtime.move_estimator(ps.KDE(), cuda)            # stateless torch: follows its input's device
    runtime.move_estimator(ps.Blob(), torch.device("cpu"))


def test_discoformer_to_moves_its_state_and_keeps_its_answers():
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    est = ps.DiScoFormer.pretrained(dim=3, warm_start=True)
    first = est(x)[1]
    assert est.to("cpu") is est and est._fit is not None
    assert all(p.device.type == "cpu" for p in est.net.parameters())
    again = ps.DiScoFormer.pretrained(dim=3, warm_start=True)
    again(x)
    assert torch.equal(est(x)[1], again(x)[1]) and first.shape == (64, 3)


@needs_cuda
def test_discoformer_on_cuda_equals_cpu():
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cpu = ps.DiScoFormer.pretrained(dim=3)(x)[1]
    gpu = ps.DiScoFormer.pretrained(dim=3).to("cuda")(x.cuda())[1]
    # float32 network on two devices: different kernels and reduction orders; float32 round-off
    # (~1e-7) grows through 4 layers and the mixture fit, 1e-3 of O(1) scores leaves a wide margin
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------- torch Landau paths
def _ensemble(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64),
            torch.randn(n, d, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("gamma", [0.0, -3.0, -1.5])
def test_torch_landau_equals_the_numba_kernels(gamma):
    v, s = _ensemble(257, 3, 1)
    delta = 0.0 if gamma == 0 else 1e-2
    if gamma == 0.0:
        ref = landau_kernels.landau_velocity_maxwell(v.numpy(), s.numpy(), 1 / 24)
    else:
        ref = landau_kernels.landau_velocity(v.numpy(), s.numpy(), gamma, 1 / 24, delta)
    out = physics.landau_velocity_torch(v, s, gamma, 1 / 24, delta).numpy()
    # same float64 sums in another order: round-off of a sum of n terms of size |ref|
    assert np.abs(out - ref).max() <= 1e-12 * np.abs(ref).max()
    rows = physics.landau_velocity_torch(v, s, gamma, 1 / 24, delta, rows=(100, 201)).numpy()
    assert np.abs(rows - ref[100:201]).max() <= 1e-12 * np.abs(ref).max()


def test_torch_landau_pair_sums_run_in_chunks(monkeypatch):
    v, s = _ensemble(50, 2, 2)
    whole = physics.landau_velocity_torch(v, s, -3.0, 1 / 24, 1e-3)
    monkeypatch.setattr(physics, "PAIR_BLOCK_ELEMENTS", 2 * 50 * 2)      # two rows per chunk
    chunked = physics.landau_velocity_torch(v, s, -3.0, 1 / 24, 1e-3)
    assert torch.equal(whole, chunked)                                    # rows are independent


@pytest.mark.parametrize("batch", [2, 7, 60, 61])
def test_torch_random_batch_equals_the_numba_kernel(batch):
    v, s = _ensemble(61, 3, 4)
    perm = torch.randperm(61, generator=torch.Generator().manual_seed(5))
    ref = landau_kernels.landau_velocity_random_batch(v.numpy(), s.numpy(), perm.numpy(), batch, -3.0, 1 / 24, 1e-2)
    out = physics.landau_velocity_torch_random_batch(v, s, perm, batch, -3.0, 1 / 24, 1e-2).numpy()
    assert np.abs(out - ref).max() <= 1e-12 * np.abs(ref).max()
    # momentum is conserved batch by batch (antisymmetric pair terms): round-off only
    assert np.abs(out.sum(0)).max() <= 1e-12 * np.abs(out).sum()


@needs_cuda
@pytest.mark.parametrize("gamma", [0.0, -3.0])
def test_landau_on_cuda_equals_cpu(gamma):
    v, s = _ensemble(300, 3, 6)
    landau = ps.Landau(gamma=gamma)
    cpu = landau(0.0, v, s)
    gpu = landau(0.0, v.cuda(), s.cuda())
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, rtol=0, atol=1e-12 * float(cpu.abs().max()))


@needs_cuda
def test_simulate_on_cuda_equals_cpu(tmp_path):
    kwargs = dict(n=64, dt=0.05, t_end=0.2, seed=1, progress=False)
    cpu = ps.simulate(ps.AnisotropicMaxwell(dim=3), ps.KDE(), device="cpu", **kwargs)
    gpu = ps.simulate(ps.AnisotropicMaxwell(dim=3), ps.KDE(), device="cuda", out=tmp_path / "gpu.nc", **kwargs)
    # float64 on both devices, 4 steps: differences are reduction-order round-off
    assert np.abs(gpu.states - cpu.states).max() <= 1e-10
    assert np.array_equal(ps.open_trajectory(tmp_path / "gpu.nc")["velocity"].values, gpu.states)


# --------------------------------------------------------------------------- threads
def test_default_threads_rule(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert runtime.default_threads(500) == 1
    assert runtime.default_threads(runtime.PARALLEL_MIN_PARTICLES) == runtime.available_cores()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")                           # torchrun's per-process setting
    assert runtime.default_threads(10 ** 6) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert runtime.default_threads(10 ** 6) == runtime.available_cores()
    assert runtime.resolve_threads(3, 10) == 3
    for bad in (0, -1, 1.0, True, "2"):
        with pytest.raises(ValueError, match="threads must be"):
            runtime.resolve_threads(bad, 10)


def test_thread_limit_sets_and_restores_torch_and_numba():
    before = runtime.current_threads()
    with runtime.thread_limit(1):
        assert runtime.current_threads() == (1, 1)
    assert runtime.current_threads() == before


def _record_threads(monkeypatch):
    """Record (torch, numba) threads at every Landau evaluation."""
    seen = []
    original = physics.Landau.__call__

    def recording(self, t, x, score):
        seen.append(runtime.current_threads())
        return original(self, t, x, score)

    monkeypatch.setattr(physics.Landau, "__call__", recording)
    return seen


def test_api_and_cli_run_with_the_same_threads(tmp_path, monkeypatch):
    """Issue 12.9: the CLI forced 1 thread while ps.simulate ran with torch's default (2 here)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = _record_threads(monkeypatch)
    config = tmp_path / "case.toml"
    config.write_text(TINY_LANDAU)
    torch.set_num_threads(2)                                  # torch's own default on a 2-core machine
    assert main(["run", str(config), "--out", str(tmp_path / "cli.nc"), "--no-progress"]) == 0
    cli = set(seen)
    seen.clear()
    torch.set_num_threads(2)
    cfg = ps.config.load_config(config)
    problem = ps.config.build_problem(cfg)
    ps.simulate(problem, ps.config.build_estimator(cfg, problem), n=40, dt=0.05, t_end=problem.t0 + 0.1,
                seed=3, integrator=ps.Euler(), progress=False)
    api = set(seen)
    expected = runtime.default_threads(40)
    assert cli == api == {(expected, min(expected, numba.config.NUMBA_NUM_THREADS))}
    assert torch.get_num_threads() == 2                       # restored after the run
    seen.clear()
    ps.simulate(problem, ps.KDE(), n=40, dt=0.05, t_end=problem.t0 + 0.1, integrator=ps.Euler(),
                progress=False, threads=2)
    assert set(seen) == {(2, min(2, numba.config.NUMBA_NUM_THREADS))}
    for how in (["--threads", "2"], []):                      # the CLI option, then [run] threads
        seen.clear()
        if not how:
            config.write_text(TINY_LANDAU.replace("[run]\n", "[run]\nthreads = 2\n"))
        out = tmp_path / f"cli{len(how)}.nc"
        assert main(["run", str(config), "--out", str(out), "--no-progress"] + how) == 0
        assert set(seen) == {(2, min(2, numba.config.NUMBA_NUM_THREADS))}


# --------------------------------------------------------------------------- numba cache
def test_cache_falls_back_to_a_temporary_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    blocker = tmp_path / "a-file"
    blocker.write_text("")                                    # nothing can be created below a file
    chosen = runtime.configure_numba_cache(package_dir=blocker / "pkg", user_dir=blocker / "user")
    assert chosen == runtime._fallback_cache_dir()
    assert os.environ["NUMBA_CACHE_DIR"] == str(chosen) == numba.config.CACHE_DIR
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert runtime.configure_numba_cache() == tmp_path / "mine"  # an explicit choice wins


def test_cache_prefers_numbas_own_locations(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    assert runtime.configure_numba_cache(package_dir=tmp_path) == tmp_path / "__pycache__"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert runtime.configure_numba_cache(package_dir=blocker, user_dir=tmp_path / "user") == tmp_path / "user"


_CACHE_PROBE = """
import sys, numpy as np, particlescore
from particlescore import landau_kernels
v = np.random.default_rng(0).standard_normal((6, 2)); s = v.copy()
landau_kernels.landau_velocity(v, s, -3.0, 1 / 24, 1e-3)
stats = landau_kernels.landau_velocity.stats
print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


def test_second_process_loads_the_compiled_kernel_from_the_cache(tmp_path):
    """Issue 12.10: the first process compiles (and says so on stderr), the next one loads."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")

    def probe():
        done = subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr
        hits, misses = (int(word) for word in done.stdout.split())
        return hits, misses, done.stderr

    hits, misses, err = probe()
    assert (hits, misses) == (0, 1)
    assert "particlescore: compiling numba kernels" in err and str(tmp_path / "cache") in err
    assert list(Path(tmp_path / "cache").rglob("*landau_velocity*.nbi"))
    hits, misses, err = probe()
    assert (hits, misses) == (1, 0)
    assert "compiling" not in err
