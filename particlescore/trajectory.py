"""Trajectory files: netCDF4 (HDF5) written while a run goes, read back with xarray (DESIGN §8).

Layout: dimensions ``time`` (unlimited, leading), ``particle``, ``dim`` (and ``dim2`` for
matrices); variables ``time``, ``step``, the state (``velocity`` for Landau, ``position`` for
Fokker–Planck) ``(time, particle, dim)``, ``score (time, particle, dim)``,
``log_density (time, particle)`` and per-time diagnostics (``(time,)``, ``(time, dim)`` or
``(time, dim, dim2)``). CF-style ``units``/``long_name`` on every variable; global
``Conventions``, ``title``, ``source``, ``history`` plus whatever the caller records (resolved
configuration, seed, estimator, weights checksum), dicts JSON-encoded.

xarray cannot append along a dimension, so :class:`TrajectoryWriter` creates the file once with
netCDF4 and appends one record (slab) per save, writing the record's ``time`` last and syncing:
a record whose ``time`` is missing (NaN fill) was cut short and is ignored by readers and
overwritten on resume.
"""
from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
import tempfile

import numpy as np

from ._version import __version__

__all__ = [
    "TrajectoryWriter", "open_trajectory", "check_output_path", "decode_attrs",
    "DIAGNOSTIC_METADATA",
]

#: Global attribute naming the state variable; its presence marks a particlescore trajectory.
STATE_ATTR = "state_variable"
#: Global attribute listing the attributes that hold JSON (dicts, lists, booleans, None).
JSON_ATTR = "json_attributes"

#: ``units`` and ``long_name`` of the diagnostics the solver records (others get units "1").
DIAGNOSTIC_METADATA: dict[str, tuple[str, str]] = {
    "mean": ("1", "ensemble mean of the particle state"),
    "covariance": ("1", "ensemble covariance of the particle state (1/n normalisation)"),
    "energy": ("1", "energy: half the mean squared norm of the particle state"),
    "entropy": ("1", "entropy: minus the mean estimated log-density at the particles"),
    "fisher_information": ("1", "Fisher information: mean squared norm of the estimated score"),
    "consistency_loss": ("1", "score-estimator consistency loss: mean squared norm of S minus grad T"),
    "covariance_error": ("1", "max absolute deviation of the covariance from the exact solution"),
    "score_error": ("1", "relative score MSE against the exact score"),
    "mean_error": ("1", "max absolute deviation of the mean from the exact solution"),
    "wall_time_per_step": ("s", "wall-clock time per time step"),
}

_STATE_LONG_NAMES = {"velocity": "particle velocity", "position": "particle position"}


# --------------------------------------------------------------------------- path checks
def _probe_writable(directory: str) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".particlescore-probe-"):
            return True
    except OSError:
        return False


def check_output_path(path, *, overwrite: bool = False, resume: bool = False) -> str:
    """Check that a trajectory can be written at ``path`` (before any simulation work).

    Raises ``ValueError("output path not writable: ...")`` when the path is a directory, its
    directory is missing or read-only, or the file exists and neither ``overwrite`` nor
    ``resume`` is set; with ``resume`` the file must exist. Returns the path as ``str``.
    """
    path = os.fspath(path)
    if not path:
        raise ValueError("output path not writable: empty path")
    if os.path.isdir(path):
        raise ValueError(f"output path not writable: {path!r} is a directory; give a file name such as run.nc")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"output path not writable: {path!r} (directory {directory!r} does not exist)")
    exists = os.path.exists(path)
    if resume and not exists:
        raise ValueError(f"cannot resume: trajectory file {path!r} does not exist")
    if exists and not (overwrite or resume):
        raise ValueError(f"output file {path!r} already exists; pass overwrite=True (--overwrite) "
                         f"to replace it or resume=True (--resume) to continue it")
    if exists and not os.access(path, os.W_OK):
        raise ValueError(f"output path not writable: {path!r} (file is read-only)")
    if not exists and not _probe_writable(directory):
        raise ValueError(f"output path not writable: {path!r} (cannot create files in {directory!r})")
    return path


# --------------------------------------------------------------------------- attributes
def _encode_attrs(attrs: dict) -> tuple[dict, list[str]]:
    """netCDF-storable attribute values; dicts, lists, bools and None become JSON strings."""
    encoded, json_keys = {}, []
    for key, value in attrs.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"attribute names must be non-empty strings, got {key!r}")
        if isinstance(value, (bool, np.bool_)) or value is None or isinstance(value, (dict, list, tuple)):
            encoded[key] = json.dumps(value, sort_keys=True)
            json_keys.append(key)
        elif isinstance(value, (str, int, float, np.integer, np.floating)):
            encoded[key] = value
        else:
            raise ValueError(f"attribute {key!r} must be str, int, float or dict, got {type(value).__name__}")
    return encoded, json_keys


def decode_attrs(attrs: dict) -> dict:
    """Global attributes with JSON-encoded ones decoded back: those listed as JSON by the
    writer (dicts, lists, bools) and any string holding a JSON object (``"{...}"``)."""
    json_keys = [k for k in str(attrs.get(JSON_ATTR, "")).split(",") if k]
    decoded = {}
    for key, value in attrs.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, str) and (key in json_keys or value.startswith("{")):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        decoded[key] = value
    return decoded


def _timestamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _default_command() -> str:
    argv = list(sys.argv) if sys.argv and sys.argv[0] else ["python"]
    return shlex.join([os.path.basename(argv[0])] + argv[1:])


# --------------------------------------------------------------------------- arrays
def _as_numpy(values, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return arr


def _is_netcdf(path: str) -> bool:
    with open(path, "rb") as handle:
        magic = handle.read(8)
    return magic.startswith(b"\x89HDF") or magic.startswith(b"CDF")


def _open_netcdf(path, mode: str):
    import netCDF4

    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a trajectory file")
    if not os.path.isfile(path):
        raise ValueError(f"trajectory file not found: {path!r}")
    if not _is_netcdf(path):
        raise ValueError(f"{path!r} is not a netCDF file, so not a particlescore trajectory")
    try:
        return netCDF4.Dataset(path, mode)
    except OSError as err:
        raise ValueError(f"cannot open trajectory {path!r}: {err}") from err


def _state_variable(attrs: dict, variables, path) -> str:
    state = attrs.get(STATE_ATTR)
    if not isinstance(state, str) or state not in variables or "time" not in variables or "step" not in variables:
        raise ValueError(f"{os.fspath(path)!r} is not a particlescore trajectory "
                         f"(no '{STATE_ATTR}' global attribute or missing time/step/state variables)")
    return state


def _complete_mask(times: np.ndarray) -> np.ndarray:
    """Records whose ``time`` (written last) is present and finite."""
    times = np.ma.filled(np.ma.asarray(times, dtype=np.float64), np.nan)
    return np.isfinite(times)


# --------------------------------------------------------------------------- writer
class TrajectoryWriter:
    """Append-only netCDF4 trajectory writer; use :meth:`create` or :meth:`open_for_resume`.

    The netCDF4 dataset stays open between appends; each :meth:`append` ends with ``sync()``
    so a record is on disk when the call returns.
    """

    def __init__(self, dataset, path: str, state_name: str, n_particles: int, dim: int, index: int):
        self._ds = dataset
        self.path = path
        self.state_name = state_name
        self.n_particles = n_particles
        self.dim = dim
        self._index = index

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, path, *, state_name: str, n_particles: int, dim: int, attrs: dict,
               overwrite: bool = False, command: str | None = None) -> "TrajectoryWriter":
        """Create the file now (format NETCDF4) with its dimensions, variables and attributes."""
        import netCDF4

        if state_name not in _STATE_LONG_NAMES:
            raise ValueError(f"state_name must be one of {sorted(_STATE_LONG_NAMES)}, got {state_name!r}")
        for name, value in (("n_particles", n_particles), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        path = check_output_path(path, overwrite=overwrite)
        encoded, json_keys = _encode_attrs(dict(attrs))
        try:
            ds = netCDF4.Dataset(path, "w", format="NETCDF4")
        except OSError as err:
            raise ValueError(f"output path not writable: {path!r} ({err})") from err
        try:
            cls._define(ds, state_name, int(n_particles), int(dim))
            ds.setncattr("Conventions", "CF-1.10")
            ds.setncattr("title", f"particlescore trajectory ({state_name})")
            ds.setncattr("source", f"particlescore {__version__}")
            ds.setncattr("history", f"{_timestamp()}: {command if command is not None else _default_command()}")
            ds.setncattr(STATE_ATTR, state_name)
            for key, value in encoded.items():
                ds.setncattr(key, value)
            ds.setncattr(JSON_ATTR, ",".join(json_keys))
            ds.sync()
        except Exception:
            ds.close()
            raise
        return cls(ds, path, state_name, int(n_particles), int(dim), 0)

    @staticmethod
    def _define(ds, state_name: str, n: int, d: int) -> None:
        ds.createDimension("time", None)
        ds.createDimension("particle", n)
        ds.createDimension("dim", d)
        ds.createDimension("dim2", d)
        time = ds.createVariable("time", "f8", ("time",), fill_value=np.nan)
        time.setncatts({"units": "1", "long_name": "simulation time (nondimensional)", "axis": "T"})
        step = ds.createVariable("step", "i8", ("time",))
        step.setncatts({"units": "1", "long_name": "time-step index"})
        chunks = (1, n, d)
        state = ds.createVariable(state_name, "f8", ("time", "particle", "dim"), fill_value=np.nan, chunksizes=chunks)
        state.setncatts({"units": "1", "long_name": _STATE_LONG_NAMES[state_name]})
        score = ds.createVariable("score", "f8", ("time", "particle", "dim"), fill_value=np.nan, chunksizes=chunks)
        score.setncatts({"units": "1", "long_name": f"estimated score (gradient of log-density) at each particle {state_name}"})
        log_density = ds.createVariable("log_density", "f8", ("time", "particle"), fill_value=np.nan, chunksizes=(1, n))
        log_density.setncatts({"units": "1", "long_name": "estimated log-density at each particle"})

    @classmethod
    def open_for_resume(cls, path, *, command: str | None = None) -> tuple["TrajectoryWriter", dict]:
        """Reopen ``path`` in 'a' mode after its last complete record.

        Returns the writer (whose next append overwrites any incomplete trailing record) and
        ``dict(step, time, state, attrs)`` of the last complete record; ``attrs`` are the global
        attributes with JSON values decoded.
        """
        ds = _open_netcdf(path, "a")
        try:
            attrs = {key: ds.getncattr(key) for key in ds.ncattrs()}
            state_name = _state_variable(attrs, ds.variables, path)
            ds.set_auto_mask(False)
            complete = _complete_mask(ds.variables["time"][:])
            state_var = ds.variables[state_name]
            last = None
            for index in np.flatnonzero(complete)[::-1]:
                if np.all(np.isfinite(state_var[index])):
                    last = int(index)
                    break
            if last is None:
                raise ValueError(f"trajectory {os.fspath(path)!r} holds no complete record to resume from")
            record = {
                "step": int(ds.variables["step"][last]),
                "time": float(ds.variables["time"][last]),
                "state": np.array(state_var[last], dtype=np.float64),
                "attrs": decode_attrs(attrs),
            }
            n, d = record["state"].shape
            history = f"{attrs.get('history', '')}\n{_timestamp()}: resumed at step {record['step']}: " \
                      f"{command if command is not None else _default_command()}"
            ds.setncattr("history", history.lstrip("\n"))
            ds.sync()
        except Exception:
            ds.close()
            raise
        return cls(ds, os.fspath(path), state_name, n, d, last + 1), record

    # ------------------------------------------------------------------ writing
    @property
    def n_records(self) -> int:
        """Number of complete records written (the index of the next append)."""
        return self._index

    def append(self, *, step: int, time: float, state, score, log_density,
               diagnostics: dict | None = None) -> None:
        """Write one record; ``time`` goes last, then the file is synced."""
        if self._ds is None:
            raise ValueError(f"trajectory writer for {self.path!r} is closed")
        n, d = self.n_particles, self.dim
        state = _as_numpy(state, self.state_name, (n, d))
        score = None if score is None else _as_numpy(score, "score", (n, d))
        log_density = None if log_density is None else _as_numpy(log_density, "log_density", (n,))
        diagnostics = {name: self._diagnostic_array(name, value) for name, value in (diagnostics or {}).items()}
        time = float(time)
        if not np.isfinite(time):
            raise ValueError(f"time must be finite, got {time!r}")
        i = self._index
        ds = self._ds
        ds.variables["step"][i] = int(step)
        ds.variables[self.state_name][i] = state
        if score is not None:
            ds.variables["score"][i] = score
        if log_density is not None:
            ds.variables["log_density"][i] = log_density
        for name, value in diagnostics.items():
            self._diagnostic_variable(name, value.ndim)[i] = value
        ds.variables["time"][i] = time
        ds.sync()
        self._index = i + 1

    def _diagnostic_array(self, name: str, value) -> np.ndarray:
        if not isinstance(name, str) or not name or name in self._ds.dimensions:
            raise ValueError(f"invalid diagnostic name {name!r}")
        if name in ("time", "step", "score", "log_density", self.state_name):
            raise ValueError(f"diagnostic name {name!r} clashes with a trajectory variable")
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        arr = np.asarray(value, dtype=np.float64)
        d = self.dim
        if arr.shape not in ((), (d,), (d, d)):
            raise ValueError(f"diagnostic {name!r} must be a scalar, a ({d},) vector or a ({d}, {d}) matrix, "
                             f"got shape {arr.shape}")
        return arr

    def _diagnostic_variable(self, name: str, ndim: int):
        dims = (("time",), ("time", "dim"), ("time", "dim", "dim2"))[ndim]
        var = self._ds.variables.get(name)
        if var is None:
            var = self._ds.createVariable(name, "f8", dims, fill_value=np.nan)
            units, long_name = DIAGNOSTIC_METADATA.get(name, ("1", name.replace("_", " ")))
            var.setncatts({"units": units, "long_name": long_name})
        elif var.dimensions != dims:
            raise ValueError(f"diagnostic {name!r} was recorded with dimensions {var.dimensions}, now {dims}")
        return var

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._ds is not None:
            self._ds.close()
            self._ds = None

    @property
    def closed(self) -> bool:
        return self._ds is None

    def __enter__(self) -> "TrajectoryWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"TrajectoryWriter({self.path!r}, {self.state_name}, n={self.n_particles}, d={self.dim}, "
                f"records={self._index}{', closed' if self.closed else ''})")


# --------------------------------------------------------------------------- reading
def open_trajectory(path, *, load: bool = True):
    """Open a trajectory as an ``xarray.Dataset`` (times as plain floats, no datetime decoding).

    Incomplete trailing records (cut short by a kill) are dropped. With ``load=True`` (default)
    the data is read into memory and the file closed; ``load=False`` keeps it lazy (close the
    dataset when done).
    """
    import xarray as xr

    path = os.fspath(path)
    _open_netcdf(path, "r").close()  # clear errors for missing / non-netCDF files
    ds = xr.open_dataset(path, engine="netcdf4", decode_times=False, decode_timedelta=False)
    try:
        _state_variable(ds.attrs, ds.variables, path)
        complete = _complete_mask(ds["time"].values)
        if not complete.all():
            ds_complete = ds.isel(time=np.flatnonzero(complete))
        else:
            ds_complete = ds
        if load:
            ds_complete = ds_complete.load()
            ds.close()
        return ds_complete
    except Exception:
        ds.close()
        raise
