"""torchrun runs (issue 8.5): particles sharded across 2 gloo ranks give the 1-process
trajectory; rank 0 alone writes; resume works under torchrun; sharding helpers."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch.distributed as dist

from particlescore import distributed
from particlescore.trajectory import open_trajectory

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

MAXWELL = """\
[problem]
name = "landau_maxwell_anisotropic"
dim = 3
[estimator]
name = "kde"
[run]
n = 61
dt = 0.05
t_end = 0.2
save_every = 1
seed = 7
integrator = "heun"
"""

COULOMB = """\
[problem]
name = "landau_coulomb"
dim = 3
[estimator]
name = "kde"
[run]
n = 45
dt = 0.05
t_end = 0.1
save_every = 1
seed = 2
integrator = "euler"
"""

# Ranks run the same float64 operations on the same data except for the row split of the
# score queries and the Landau sums, whose per-row results can differ from the 1-process
# ones only by summation-order round-off (~1e-16 relative per step): 1e-10 is the bound.
TOL = 1e-10


@pytest.mark.parametrize("n,world", [(1, 1), (7, 2), (61, 2), (64, 4), (5, 8)])
def test_shards_partition_the_particles(n, world):
    bounds = [distributed.shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        distributed.shard_bounds(n, world, world)


def test_nothing_is_sharded_without_a_process_group():
    assert not distributed.is_active() and distributed.world_size() == 1 and distributed.is_main()
    with distributed.sharding() as active:
        assert not active and distributed.current_shard(10) is None


def _run(args, tmp_path, nproc=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    launcher = [sys.executable, "-m", "particlescore"] if nproc is None else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
         "-m", "particlescore"]
    done = subprocess.run(launcher + ["run"] + args + ["--no-progress"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _states(path):
    ds = open_trajectory(path)
    return ds["velocity"].values, ds["score"].values, ds["step"].values


def test_two_gloo_ranks_give_the_one_process_trajectory_and_resume(tmp_path):
    (tmp_path / "case.toml").write_text(MAXWELL)
    _run(["case.toml", "--out", "one.nc"], tmp_path)
    done = _run(["case.toml", "--out", "two.nc"], tmp_path, nproc=2)
    assert done.stdout.count("wrote two.nc") == 1                 # rank 0 alone reports (and writes)
    v1, s1, steps1 = _states(tmp_path / "one.nc")
    v2, s2, steps2 = _states(tmp_path / "two.nc")
    assert np.array_equal(steps1, np.arange(5)) and np.array_equal(steps2, steps1)
    assert np.abs(v2 - v1).max() <= TOL and np.abs(s2 - s1).max() <= TOL
    assert np.abs(v2[-1] - v2[0]).max() > 1e-3                     # the particles did move
    # interrupted after 2 steps, then resumed under torchrun
    _run(["case.toml", "--out", "part.nc", "--t-end", "0.1"], tmp_path, nproc=2)
    _run(["case.toml", "--out", "part.nc", "--resume"], tmp_path, nproc=2)
    v3, s3, steps3 = _states(tmp_path / "part.nc")
    assert np.array_equal(steps3, steps1)
    assert np.abs(v3 - v1).max() <= TOL and np.abs(s3 - s1).max() <= TOL


def test_two_gloo_ranks_shard_the_coulomb_pair_sums(tmp_path):
    (tmp_path / "case.toml").write_text(COULOMB)
    _run(["case.toml", "--out", "one.nc"], tmp_path)
    _run(["case.toml", "--out", "two.nc"], tmp_path, nproc=2)
    v1, _, _ = _states(tmp_path / "one.nc")
    v2, _, _ = _states(tmp_path / "two.nc")
    assert v1.shape == v2.shape == (3, 45, 3)
    assert np.abs(v2 - v1).max() <= TOL and np.abs(v2[-1] - v2[0]).max() > 1e-4


def test_two_gloo_ranks_with_the_warm_started_discoformer(tmp_path):
    """Stateful estimator: every rank fits the same warm-started mixture on the full context and
    answers its own queries; the trajectory equals the 1-process one."""
    config = MAXWELL.replace('name = "kde"', 'name = "discoformer"\nwarm_start = true').replace(
        "n = 61", "n = 40").replace("t_end = 0.2", "t_end = 0.1")
    (tmp_path / "case.toml").write_text(config)
    _run(["case.toml", "--out", "one.nc"], tmp_path)
    _run(["case.toml", "--out", "two.nc"], tmp_path, nproc=2)
    v1, s1, _ = _states(tmp_path / "one.nc")
    v2, s2, _ = _states(tmp_path / "two.nc")
    assert v1.shape == (3, 40, 3)
    assert np.abs(v2 - v1).max() <= TOL and np.abs(s2 - s1).max() <= TOL
