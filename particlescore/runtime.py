"""Where and how a run executes: CPU threads, the device, and the numba compilation cache.

* **Threads.** :func:`thread_limit` sets torch's intra-op threads *and* numba's threads for
  the duration of a run and restores them afterwards; :func:`simulate` and the CLI both go
  through it, so the Python API and ``particlescore run`` run with the same thread counts.
  The default (:func:`default_threads`) is one thread below :data:`PARALLEL_MIN_PARTICLES`
  particles (a step's operations are too small to gain from more, and on a machine whose
  cores are busy the threads' barriers stall: measured up to 15× slower with 2 threads on a
  loaded 2-core machine, ``benchmarks/threads.py``) and every available core from there on;
  an explicit ``OMP_NUM_THREADS`` (which ``torchrun`` sets to 1 per process) caps it.
* **Devices.** :func:`resolve_device` turns ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a
  ``torch.device`` into a checked ``torch.device`` (a clear ``ValueError`` for an unknown
  device or CUDA without a GPU).
* **numba cache.** The kernels are compiled with ``cache=True``. numba stores the compiled
  code next to the sources (``particlescore/__pycache__``) or, where that is read-only (an
  installed package), in the user cache directory; where neither is writable this module
  points ``NUMBA_CACHE_DIR`` to a private temporary directory (:func:`configure_numba_cache`,
  run at import before any kernel is defined). The first compilation in a process prints one
  line on stderr, so a slow first call is never silent (``benchmarks/numba_cache.py``: 5.4 s
  for the blob and Coulomb kernels with an empty cache, 0.8 s with the cache on disk).
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import torch

__all__ = ["PARALLEL_MIN_PARTICLES", "DEVICES", "available_cores", "default_threads", "resolve_threads",
           "thread_limit", "current_threads", "resolve_device", "move_estimator", "configure_numba_cache",
           "numba_cache_dir"]

#: From this many particles on, the default uses every available core. Measured with
#: ``benchmarks/threads.py --per-call-only`` (warm-started DiScoFormer calls, d = 3, 2 cores):
#: with the machine idle (load 0.8) one thread was as fast as two at n = 500 and two were 1.7×
#: faster at n = 2048; with the machine busy (load 9.8) two threads were 5.7× (n = 500) and 10.8×
#: (n = 2048) slower. Small runs gain nothing from threads, so they never risk the slowdown;
#: large runs take the gain a free machine offers (set ``threads=1`` on a shared one).
PARALLEL_MIN_PARTICLES = 2048

#: Device types a run accepts.
DEVICES = ("cpu", "cuda")


# --------------------------------------------------------------------------- threads
def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _omp_cap() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    try:
        cap = int(value)
    except ValueError:
        return None
    return cap if cap >= 1 else None


def default_threads(n: int) -> int:
    """Threads for a run of ``n`` particles: 1 below :data:`PARALLEL_MIN_PARTICLES`, else every
    available core; never more than ``OMP_NUM_THREADS`` when that is set."""
    threads = 1 if n < PARALLEL_MIN_PARTICLES else available_cores()
    cap = _omp_cap()
    return min(threads, cap) if cap is not None else threads


def resolve_threads(threads, n: int) -> int:
    """``threads`` checked (an int >= 1), or :func:`default_threads` ``(n)`` for None."""
    if threads is None:
        return default_threads(n)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1 or None (automatic), got {threads!r}")
    return threads


def _numba_max_threads() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def current_threads() -> tuple[int, int]:
    """``(torch intra-op threads, numba threads)`` in effect now."""
    import numba

    return torch.get_num_threads(), int(numba.get_num_threads())


@contextlib.contextmanager
def thread_limit(threads: int):
    """Run the block with ``threads`` torch intra-op threads and ``min(threads,
    NUMBA_NUM_THREADS)`` numba threads; restore both afterwards."""
    import numba

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    before = current_threads()
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, _numba_max_threads()))
    try:
        yield threads
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])


# --------------------------------------------------------------------------- devices
def resolve_device(device) -> torch.device:
    """``"cpu"`` | ``"cuda"`` | ``"cuda:N"`` | ``torch.device`` -> a usable ``torch.device``.

    ValueError for anything else, for CUDA when torch sees no GPU, and for a GPU index beyond
    the ones present. ``"cuda"`` means the current CUDA device, and under torchrun the GPU of the
    process's ``LOCAL_RANK`` (one GPU per rank, as nccl needs).
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device.strip().lower())
        except RuntimeError:
            raise ValueError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)} (or 'cuda:N')") from None
    else:
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda', got {type(device).__name__}")
    if dev.type not in DEVICES:
        raise ValueError(f"unknown device {str(device)!r}; allowed: {', '.join(DEVICES)} (or 'cuda:N')")
    if dev.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} needs a CUDA GPU, but torch {torch.__version__} sees none "
                         f"(torch.cuda.is_available() is False); use device='cpu'")
    count = torch.cuda.device_count()
    if dev.index is not None:
        index = dev.index
    elif "LOCAL_RANK" in os.environ and os.environ.get("WORLD_SIZE", "1") != "1":
        index = int(os.environ["LOCAL_RANK"]) % count     # torchrun: one GPU per local rank
    else:
        index = torch.cuda.current_device()
    if not 0 <= index < count:
        raise ValueError(f"device {str(device)!r}: no such GPU, torch sees {count} (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def move_estimator(estimator, device: torch.device) -> None:
    """Put ``estimator``'s state on ``device`` before a run there (estimators are built on the CPU).

    Stateless torch estimators (KDE) follow their input's device; estimators with a
    ``.to(device)`` method (DiScoFormer) are moved with it; any other estimator (the numba Blob,
    SBTM, Exact) gets a ValueError for a non-CPU device.
    """
    if device.type == "cpu":
        return
    from .estimators import KDE

    if isinstance(estimator, KDE):
        return
    mover = getattr(estimator, "to", None)
    if not callable(mover):
        raise ValueError(f"{type(estimator).__name__} runs on the CPU only; use device='cpu' "
                         f"(device={str(device)!r} supports DiScoFormer and KDE)")
    mover(device)


# --------------------------------------------------------------------------- numba cache
def _writable_dir(path: Path) -> bool:
    """True if ``path`` exists or can be created and a file can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
        return True
    except OSError:
        return False


def _user_cache_dir() -> Path:
    """numba's user-wide cache directory (``numba.misc.appdirs``, as numba's locator uses)."""
    try:
        from numba.misc.appdirs import AppDirs

        return Path(AppDirs(appname="numba", appauthor=False).user_cache_dir)
    except Exception:  # numba layout changed: the XDG default
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "numba"


def _fallback_cache_dir() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"particlescore-numba-cache-{uid}"


def configure_numba_cache(package_dir: Path | None = None, user_dir: Path | None = None) -> Path:
    """Make sure numba can cache the compiled kernels; return the directory it will use.

    Order (numba's own): ``NUMBA_CACHE_DIR`` if set, ``<package>/__pycache__``, the user cache
    directory. If none is writable, set ``NUMBA_CACHE_DIR`` (environment and numba's config)
    to ``<tmp>/particlescore-numba-cache-<uid>``. Must run before the kernels are defined.
    """
    import numba

    explicit = os.environ.get("NUMBA_CACHE_DIR") or numba.config.CACHE_DIR
    if explicit:
        return Path(explicit)
    package_dir = Path(__file__).resolve().parent if package_dir is None else Path(package_dir)
    user_dir = _user_cache_dir() if user_dir is None else Path(user_dir)
    for candidate in (package_dir / "__pycache__", user_dir):
        if _writable_dir(candidate):
            return candidate
    fallback = _fallback_cache_dir()
    if _writable_dir(fallback):
        os.environ["NUMBA_CACHE_DIR"] = str(fallback)
        numba.config.CACHE_DIR = str(fallback)
    return fallback


_CACHE_DIR: Path | None = None
_ANNOUNCED = False


def numba_cache_dir() -> Path | None:
    """The numba cache directory chosen at import (None before :func:`configure_numba_cache`)."""
    return _CACHE_DIR


def _install_compile_notice() -> None:
    """One line on stderr when a particlescore numba kernel starts compiling (cache miss)."""
    from numba.core import event

    class _Notice(event.Listener):
        def on_start(self, ev):
            global _ANNOUNCED
            dispatcher = ev.data.get("dispatcher") if isinstance(ev.data, dict) else None
            module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
            if _ANNOUNCED or not module.startswith("particlescore"):
                return
            _ANNOUNCED = True
            print(f"particlescore: compiling numba kernels on first use (seconds per kernel, once; "
                  f"cached in {_CACHE_DIR})", file=sys.stderr, flush=True)

        def on_end(self, ev):
            pass

    event.register("numba:compile", _Notice())


def _setup_numba() -> None:
    global _CACHE_DIR
    _CACHE_DIR = configure_numba_cache()
    _install_compile_notice()


_setup_numba()
