"""Trajectory files: netCDF4 (HDF5) written while a run goes, read back with xarray.

Layout (docs/trajectory.md): dimensions ``time`` (unlimited, leading), ``particle``, ``dim``
(and ``dim2`` for matrices), each with an integer coordinate variable; variables ``time``,
``step``, the state (``velocity`` for Landau, ``position`` for Fokker–Planck)
``(time, particle, dim)``, ``score (time, particle, dim)``, ``log_density (time, particle)`` and
per-time diagnostics (``(time,)``, ``(time, dim)`` or ``(time, dim, dim2)``). CF-style
``units``/``long_name`` on every variable; global ``Conventions``, ``title``, ``source``,
``history`` plus whatever the caller records (resolved configuration, seed, estimator, weights
checksum), dicts JSON-encoded. The group ``resume`` (invisible to ``xarray.open_dataset``)
holds what an exact restart needs beyond the records: the estimator's ``state_dict()`` at each
record (safetensors bytes) and, when the state is stored as float32, the last two states in
float64.

Options: ``precision="float32"`` stores state, score and log-density in single precision,
``compress=True`` deflates them with zlib (level 4, byte shuffle); chunks hold one record
(chunking along time). The default is float64, uncompressed: lossless.

Data safety: :meth:`TrajectoryWriter.create` writes to a temporary file beside the target and
renames it over the target only once the first record is synced, so a run that fails before
its first record leaves nothing behind and an overwrite never destroys a good file for a run
that never produced a record. A process killed (kill -9) before its first record cannot delete
its temporary file ``.<name>.<host>-<pid>.<random>.partial``; the next writer of the same path
on that machine removes it once that process is gone (:func:`remove_stale_pending`). Each
append writes the record's ``time`` last and syncs: a record whose ``time`` is missing (NaN
fill) was cut short and is ignored by readers and overwritten on resume.
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
    "TrajectoryWriter", "open_trajectory", "check_output_path", "decode_attrs", "read_last_record",
    "recorded_run_config", "DIAGNOSTIC_METADATA", "PRECISIONS",
]

#: Global attribute naming the state variable; its presence marks a particlescore trajectory.
STATE_ATTR = "state_variable"
#: Global attribute listing the attributes that hold JSON (dicts, lists, booleans, None).
JSON_ATTR = "json_attributes"
#: Group holding the restart data (estimator state per record, float64 state copies).
RESUME_GROUP = "resume"
#: Storage precisions of the state, score and log-density.
PRECISIONS = {"float64": "f8", "float32": "f4"}
#: zlib level for ``compress=True`` (4: most of level 9's gain on float data at a fraction of the time).
ZLIB_LEVEL = 4

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


def holds_no_record(path) -> bool:
    """True when ``path`` is a particlescore trajectory without a single complete record (what a
    run that failed before its first record left behind with particlescore < 0.2): a retry may
    reuse it."""
    try:
        ds = _open_netcdf(path, "r")
    except ValueError:
        return False
    try:
        attrs = {key: ds.getncattr(key) for key in ds.ncattrs()}
        _state_variable(attrs, ds.variables, path)
        return not _complete_mask(ds.variables["time"][:]).any()
    except ValueError:
        return False
    finally:
        ds.close()


def check_output_path(path, *, overwrite: bool = False, resume: bool = False) -> str:
    """Check that a trajectory can be written at ``path`` (before any simulation work).

    Raises ``ValueError("output path not writable: ...")`` when the path is a directory, its
    directory is missing or read-only, or the file exists and neither ``overwrite`` nor
    ``resume`` is set (unless it is a trajectory holding no record, which a retry reuses);
    with ``resume`` the file must exist. Returns the path as ``str``. Touches nothing.
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
    if exists and not (overwrite or resume) and not holds_no_record(path):
        raise ValueError(f"output file {path!r} already exists; pass overwrite=True (--overwrite) "
                         f"to replace it or resume=True (--resume) to continue it")
    if exists and not os.access(path, os.W_OK):
        raise ValueError(f"output path not writable: {path!r} (file is read-only)")
    if not _probe_writable(directory):
        raise ValueError(f"output path not writable: {path!r} (cannot create files in {directory!r})")
    return path


# --------------------------------------------------------------------------- temporary files
def _host_tag() -> str:
    """This machine's name as it appears in temporary file names (letters, digits and '-')."""
    import socket

    return "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:32] or "host"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:            # e.g. PermissionError: it exists, under another user
        return True
    return True


def remove_stale_pending(path) -> list[str]:
    """Delete the temporary files ``.<name>.<host>-<pid>.*.partial`` beside ``path`` that a process
    of this machine left when it was killed (kill -9) before its first record; returns their
    paths. Files of running processes, and of other machines sharing the directory, are kept."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    prefix = f".{name}.{_host_tag()}-"
    removed = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        pid = entry[len(prefix):].split(".", 1)[0]
        if not (entry.startswith(prefix) and entry.endswith(".partial") and pid.isdigit()):
            continue
        if int(pid) == os.getpid() or _process_alive(int(pid)):
            continue
        try:
            os.remove(os.path.join(directory, entry))
            removed.append(os.path.join(directory, entry))
        except OSError:
            pass
    return removed


def new_pending(path) -> str:
    """A new empty temporary file beside ``path`` (``.<name>.<host>-<pid>.<random>.partial``),
    after removing those that killed processes left behind; ValueError when it cannot be made."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    remove_stale_pending(path)
    try:
        handle, pending = tempfile.mkstemp(dir=directory, prefix=f".{name}.{_host_tag()}-{os.getpid()}.",
                                           suffix=".partial")
        os.close(handle)
    except OSError as err:
        raise ValueError(f"output path not writable: {path!r} ({err})") from err
    return pending


def commit_pending(pending: str, path: str) -> None:
    """Sync the temporary file ``pending`` to disk and rename it to ``path`` (atomic)."""
    descriptor = os.open(pending, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(pending, path)


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


# --------------------------------------------------------------------------- estimator state
def pack_state(state: dict) -> bytes:
    """An estimator's ``state_dict()`` (str -> tensor) as safetensors bytes (exact bits)."""
    import safetensors.torch
    import torch

    tensors = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"estimator state must map str to torch.Tensor, got {key!r}: {type(value).__name__}")
        tensors[key] = value.detach().cpu().contiguous().clone()
    return safetensors.torch.save(tensors)


def unpack_state(blob) -> dict:
    """Inverse of :func:`pack_state`."""
    import safetensors.torch

    raw = bytes(blob) if isinstance(blob, (bytes, bytearray)) else np.asarray(blob, dtype=np.uint8).tobytes()
    return dict(safetensors.torch.load(raw))


# --------------------------------------------------------------------------- writer
class TrajectoryWriter:
    """Append-only netCDF4 trajectory writer; use :meth:`create` or :meth:`open_for_resume`.

    The netCDF4 dataset stays open between appends; each :meth:`append` ends with ``sync()``
    so a record is on disk when the call returns. A writer from :meth:`create` writes to a
    temporary file beside ``path`` and renames it to ``path`` after its first record; closing
    it before any record deletes the temporary file.
    """

    def __init__(self, dataset, path: str, state_name: str, n_particles: int, dim: int, index: int,
                 pending: str | None = None):
        self._ds = dataset
        self.path = path
        self.state_name = state_name
        self.n_particles = n_particles
        self.dim = dim
        self._index = index
        self._pending = pending        # temporary file renamed to ``path`` at the first record

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, path, *, state_name: str, n_particles: int, dim: int, attrs: dict,
               overwrite: bool = False, command: str | None = None, compress: bool = False,
               precision: str = "float64") -> "TrajectoryWriter":
        """Define the file (format NETCDF4) with its dimensions, variables and attributes, in a
        temporary file beside ``path`` that becomes ``path`` at the first record."""
        import netCDF4

        if state_name not in _STATE_LONG_NAMES:
            raise ValueError(f"state_name must be one of {sorted(_STATE_LONG_NAMES)}, got {state_name!r}")
        for name, value in (("n_particles", n_particles), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(compress, bool):
            raise ValueError(f"compress must be True or False, got {compress!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        path = check_output_path(path, overwrite=overwrite)
        encoded, json_keys = _encode_attrs(dict(attrs))
        pending = new_pending(path)
        try:
            ds = netCDF4.Dataset(pending, "w", format="NETCDF4")
        except OSError as err:
            os.remove(pending)
            raise ValueError(f"output path not writable: {path!r} ({err})") from err
        try:
            cls._define(ds, state_name, int(n_particles), int(dim), compress, precision)
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
            os.remove(pending)
            raise
        return cls(ds, path, state_name, int(n_particles), int(dim), 0, pending=pending)

    @staticmethod
    def _define(ds, state_name: str, n: int, d: int, compress: bool, precision: str) -> None:
        ds.createDimension("time", None)
        for dim, size, long_name in (("particle", n, "particle index"), ("dim", d, "vector component index"),
                                     ("dim2", d, "second vector component index (matrices)")):
            ds.createDimension(dim, size)
            coord = ds.createVariable(dim, "i8", (dim,))
            coord.setncatts({"units": "1", "long_name": long_name})
            coord[:] = np.arange(size)
        time = ds.createVariable("time", "f8", ("time",), fill_value=np.nan)
        time.setncatts({"units": "1", "long_name": "simulation time (nondimensional)", "axis": "T"})
        step = ds.createVariable("step", "i8", ("time",))
        step.setncatts({"units": "1", "long_name": "time-step index"})
        kind = PRECISIONS[precision]
        deflate = dict(zlib=True, complevel=ZLIB_LEVEL, shuffle=True) if compress else {}
        for name, dims, chunks, long_name in (
                (state_name, ("time", "particle", "dim"), (1, n, d), _STATE_LONG_NAMES[state_name]),
                ("score", ("time", "particle", "dim"), (1, n, d),
                 f"estimated score (gradient of log-density) at each particle {state_name}"),
                ("log_density", ("time", "particle"), (1, n), "estimated log-density at each particle")):
            var = ds.createVariable(name, kind, dims, fill_value=np.nan, chunksizes=chunks, **deflate)
            var.setncatts({"units": "1", "long_name": long_name})
        group = ds.createGroup(RESUME_GROUP)
        state_t = group.createVLType(np.uint8, "state_bytes")
        blob = group.createVariable("estimator_state", state_t, ("time",))
        blob.setncatts({"long_name": "estimator state_dict() before the record's first evaluation (safetensors)"})
        if precision != "float64":   # the last two states exactly, so a resume stays bitwise
            group.createDimension("slot", 2)
            exact = group.createVariable("state_float64", "f8", ("slot", "particle", "dim"), fill_value=np.nan)
            exact.setncatts({"long_name": f"{state_name} of record i in slot i mod 2, float64"})

    @classmethod
    def open_for_resume(cls, path, *, command: str | None = None, note: str = "",
                        attrs: dict | None = None) -> tuple["TrajectoryWriter", dict]:
        """Reopen ``path`` in 'a' mode after its last complete record (:func:`read_last_record`).

        Appends ``resumed at step k`` (plus ``note``) to ``history`` and sets ``attrs``. Returns
        the writer (whose next append overwrites any incomplete trailing record) and the record.
        """
        record = read_last_record(path)
        encoded, json_keys = _encode_attrs(dict(attrs or {}))
        ds = _open_netcdf(path, "a")
        try:
            history = f"{ds.getncattr('history') if 'history' in ds.ncattrs() else ''}\n{_timestamp()}: " \
                      f"resumed at step {record['step']}{note} (particlescore {__version__}): " \
                      f"{command if command is not None else _default_command()}"
            ds.setncattr("history", history.lstrip("\n"))
            for key, value in encoded.items():
                ds.setncattr(key, value)
            if json_keys:
                known = [k for k in str(ds.getncattr(JSON_ATTR) if JSON_ATTR in ds.ncattrs() else "").split(",") if k]
                ds.setncattr(JSON_ATTR, ",".join(known + [k for k in json_keys if k not in known]))
            ds.sync()
        except Exception:
            ds.close()
            raise
        n, d = record["state"].shape
        return cls(ds, os.fspath(path), record["attrs"][STATE_ATTR], n, d, record["index"] + 1), record

    # ------------------------------------------------------------------ writing
    @property
    def n_records(self) -> int:
        """Number of complete records written (the index of the next append)."""
        return self._index

    def append(self, *, step: int, time: float, state, score, log_density,
               diagnostics: dict | None = None, estimator_state: dict | None = None) -> None:
        """Write one record (``estimator_state``: the estimator's ``state_dict()`` to restart
        from it); ``time`` goes last, then the file is synced."""
        if self._ds is None:
            raise ValueError(f"trajectory writer for {self.path!r} is closed")
        n, d = self.n_particles, self.dim
        state = _as_numpy(state, self.state_name, (n, d))
        score = None if score is None else _as_numpy(score, "score", (n, d))
        log_density = None if log_density is None else _as_numpy(log_density, "log_density", (n,))
        diagnostics = {name: self._diagnostic_array(name, value) for name, value in (diagnostics or {}).items()}
        blob = None if estimator_state is None else pack_state(estimator_state)
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
        group = ds.groups.get(RESUME_GROUP)
        if group is not None and blob is not None and "estimator_state" in group.variables:
            group.variables["estimator_state"][i] = np.frombuffer(blob, dtype=np.uint8)
        if group is not None and "state_float64" in group.variables:
            group.variables["state_float64"][i % 2] = state
        ds.variables["time"][i] = time
        ds.sync()
        self._index = i + 1
        if self._pending is not None:      # first record on disk: the file takes its name now
            commit_pending(self._pending, self.path)
            self._pending = None

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
        """Close the file (idempotent); a new file closed before its first record is deleted."""
        if self._ds is not None:
            self._ds.close()
            self._ds = None
        if self._pending is not None:
            try:
                os.remove(self._pending)
            except FileNotFoundError:
                pass
            self._pending = None

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
def read_last_record(path) -> dict:
    """The last complete record of a trajectory, read only (the file is not modified).

    Returns ``dict(index, step, time, state (n, d) float64, attrs, estimator_state)``: ``attrs``
    are the global attributes with JSON values decoded; ``estimator_state`` is the stored
    ``state_dict()`` (None when the file stores none for this record). ValueError when the
    file holds no complete record.
    """
    ds = _open_netcdf(path, "r")
    try:
        attrs = {key: ds.getncattr(key) for key in ds.ncattrs()}
        state_name = _state_variable(attrs, ds.variables, path)
        ds.set_auto_mask(False)
        complete = np.flatnonzero(_complete_mask(ds.variables["time"][:]))
        state_var = ds.variables[state_name]
        last = next((int(i) for i in complete[::-1] if np.all(np.isfinite(state_var[i]))), None)
        if last is None:
            raise ValueError(f"trajectory {os.fspath(path)!r} holds no complete record to resume from")
        group = ds.groups.get(RESUME_GROUP)
        state = np.array(state_var[last], dtype=np.float64)
        if group is not None and "state_float64" in group.variables and last == complete[-1]:
            state = np.array(group.variables["state_float64"][last % 2], dtype=np.float64)
        blob = None
        if group is not None and "estimator_state" in group.variables:
            entry = group.variables["estimator_state"][last]
            blob = entry if entry is not None and len(entry) else None
        return {"index": last, "step": int(ds.variables["step"][last]), "time": float(ds.variables["time"][last]),
                "state": state, "attrs": decode_attrs(attrs),
                "estimator_state": None if blob is None else unpack_state(blob)}
    finally:
        ds.close()


def recorded_run_config(path) -> dict | None:
    """The run configuration (TOML tables) a trajectory records, or None."""
    with open_trajectory(path, load=False) as ds:
        recorded = decode_attrs(ds.attrs).get("config")
    if isinstance(recorded, dict) and isinstance(recorded.get("run_config"), dict):
        return recorded["run_config"]
    return None


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
