"""onnxruntime's session API over ember, so that switching is one import:

    import ember as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession("model.onnx", opts, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x})

The options map onto ember's own (`graph_optimization_level` -> `opt_level`,
`intra_op_num_threads` -> `intra_op_threads`, `enable_profiling` -> `profile`); those
with no counterpart in ember (inter-op threads, execution mode, memory arena switches)
are accepted and kept, and change nothing. The providers pick ember's target: the first
of "CUDAExecutionProvider" (the cuda target, its nodes without a GPU kernel on the CPU,
counted in `stats`) and "CPUExecutionProvider". A provider ember does not have, or the
CUDA one where there is no GPU (and no TRITON_INTERPRET=1), is an UnsupportedError
naming it: ember never falls back silently to another device.
`OrtValue` and `IOBinding` live in `_iobinding`.
"""

from __future__ import annotations

import copy
import datetime
import enum
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._iobinding import IOBinding, OrtValue, unwrap
from .errors import ExecutionError, InputError, UnsupportedError

log = logging.getLogger("ember.session")

_POOL: Any = None  # run_async's worker threads, made on first use
_POOL_LOCK = threading.Lock()


def _async_pool():
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            import concurrent.futures

            from .runtime._torch import default_threads

            _POOL = concurrent.futures.ThreadPoolExecutor(max(default_threads(), 2),
                                                          thread_name_prefix="ember-run-async")
        return _POOL

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
PROVIDER_TARGETS = {CUDA_PROVIDER: "cuda", CPU_PROVIDER: "cpu"}  # -> ember's target


def _cuda_problem() -> str | None:
    """Why the cuda target cannot run here (None: it can, on a GPU or in Triton's interpreter)."""
    from .api import check_target

    try:
        check_target("cuda")
    except UnsupportedError as e:
        return str(e)
    return None


def get_available_providers() -> list[str]:
    """The execution providers ember can run here: the CUDA one (the cuda target) where
    there is a GPU (or TRITON_INTERPRET=1), and the CPU's."""
    return ([CUDA_PROVIDER] if _cuda_problem() is None else []) + [CPU_PROVIDER]


def get_device() -> str:
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            return "GPU"
    return "CPU"


def get_all_providers() -> list[str]:
    """The execution providers ember knows."""
    return list(PROVIDER_TARGETS)


def get_version_string() -> str:
    from . import __version__

    return __version__


def get_build_info() -> str:
    from . import __version__

    return f"ember {__version__}, target cpu (C++/OpenMP kernels built by the system compiler)"


def set_default_logger_severity(severity: int) -> None:
    """onnxruntime's process-wide log threshold (0 verbose ... 4 fatal) as the level of
    ember's `ember` logger; a session's own `log_severity_level` filters its log after."""
    logging.getLogger("ember").setLevel(_log_level(severity, "set_default_logger_severity: the severity"))


def set_default_logger_verbosity(verbosity: int) -> None:
    """Accepted, as onnxruntime's (its verbose log's detail): ember's log has one level of detail."""
    if isinstance(verbosity, bool) or not isinstance(verbosity, int) or verbosity < 0:
        raise InputError(f"set_default_logger_verbosity takes an integer >= 0, got {verbosity!r}")


class GraphOptimizationLevel(enum.IntEnum):
    """onnxruntime's levels (same names and values); each selects an ember pipeline."""

    ORT_DISABLE_ALL = 0
    ORT_ENABLE_BASIC = 1
    ORT_ENABLE_EXTENDED = 2
    ORT_ENABLE_LAYOUT = 3
    ORT_ENABLE_ALL = 99


# the ember opt_level (`ember.passes.PIPELINES`) of each level: basic is folding and
# clean-up (O1), extended adds the fusions and, as onnxruntime's layout level, the
# channels-last rewrite (O2); all is O3
OPT_LEVELS = {0: 0, 1: 1, 2: 2, 3: 2, 99: 3}


class ExecutionMode(enum.IntEnum):
    ORT_SEQUENTIAL = 0
    ORT_PARALLEL = 1  # accepted: ember runs a program's steps in order, each on every intra-op thread


class ExecutionOrder(enum.IntEnum):
    """onnxruntime's node orders (same names and values): accepted; ember runs its
    program's steps in the order codegen planned."""

    DEFAULT = 0
    PRIORITY_BASED = 1
    MEMORY_EFFICIENT = 2


# onnxruntime's severities (0 verbose ... 4 fatal) as logging levels; -1 is the default, warning
_LOG_LEVELS = {-1: logging.WARNING, 0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR,
               4: logging.CRITICAL}


def _log_level(severity: Any, what: str) -> int:
    if severity not in _LOG_LEVELS:
        raise InputError(f"{what}.log_severity_level must be one of -1 (default), 0 (verbose), 1 (info), "
                         f"2 (warning), 3 (error), 4 (fatal); got {severity!r}")
    return _LOG_LEVELS[severity]


# ember's own session config entries
STANDARD_OPS_ONLY = "ember.optimized_model.standard_ops_only"  # "1": optimized_model_filepath in standard ops


class SessionOptions:
    """onnxruntime's `SessionOptions`. Setting an attribute it does not have is an
    AttributeError, as in onnxruntime."""

    __slots__ = ("graph_optimization_level", "intra_op_num_threads", "inter_op_num_threads", "execution_mode",
                 "enable_profiling", "profile_file_prefix", "optimized_model_filepath", "log_severity_level",
                 "log_verbosity_level", "logid", "enable_cpu_mem_arena", "enable_mem_pattern", "enable_mem_reuse",
                 "use_deterministic_compute", "use_per_session_threads", "execution_order", "_config", "_fixed_dims",
                 "_fixed_denotations")

    def __init__(self):
        self.graph_optimization_level = GraphOptimizationLevel.ORT_ENABLE_ALL
        self.intra_op_num_threads = 0  # 0: ember's default (OMP_NUM_THREADS, else the cores it may use)
        self.inter_op_num_threads = 0
        self.execution_mode = ExecutionMode.ORT_SEQUENTIAL
        self.enable_profiling = False
        self.profile_file_prefix = "ember_profile"
        self.optimized_model_filepath = ""
        self.log_severity_level = -1
        self.log_verbosity_level = 0
        self.logid = ""
        self.enable_cpu_mem_arena = True
        self.enable_mem_pattern = True
        self.enable_mem_reuse = True
        self.use_deterministic_compute = False
        self.use_per_session_threads = True
        self.execution_order = ExecutionOrder.DEFAULT
        self._config: dict[str, str] = {}
        self._fixed_dims: dict[str, int] = {}  # free dimension overrides: dim_param -> size...
        self._fixed_denotations: dict[str, int] = {}  # ...and denotation -> size

    def add_free_dimension_override_by_name(self, dim_name: str, dim_value: int) -> None:
        """Fix the symbolic dim called `dim_name` (an ONNX dim_param) to `dim_value` in the
        model's inputs and outputs: the session then takes only that size (feeds of another
        are an InputError), as onnxruntime's. A name no dim has changes nothing."""
        self._fixed_dims[_override_key(dim_name, "dim_name")] = _override_size(dim_value)

    def add_free_dimension_override_by_denotation(self, dim_denotation: str, dim_value: int) -> None:
        """As `add_free_dimension_override_by_name`, for the dims whose ONNX denotation is
        `dim_denotation` (`DATA_BATCH`, `DATA_CHANNEL`, ...)."""
        self._fixed_denotations[_override_key(dim_denotation, "dim_denotation")] = _override_size(dim_value)

    def has_providers(self) -> bool:
        """Whether providers were added to the options (`add_provider`): never, in ember."""
        return False

    def add_session_config_entry(self, key: str, value: str) -> None:
        """Set a config entry (onnxruntime's keys are kept and returned, and change
        nothing in ember; `ember.optimized_model.standard_ops_only` = "1" writes
        `optimized_model_filepath` in standard ONNX ops only)."""
        if not isinstance(key, str) or not isinstance(value, str):
            raise InputError(f"session config entries are strings; got {key!r}: {value!r}")
        self._config[key] = value

    def get_session_config_entry(self, key: str) -> str:
        if key not in self._config:
            raise InputError(f"SessionOptions has no config entry {key!r}")
        return self._config[key]

    def __copy__(self) -> SessionOptions:
        other = SessionOptions()
        for name in self.__slots__:
            setattr(other, name, copy.copy(getattr(self, name)))
        return other

    def __getattr__(self, name: str):
        if name in _UNSUPPORTED_OPTIONS:
            raise UnsupportedError(f"SessionOptions.{name} is not available in ember: {_UNSUPPORTED_OPTIONS[name]}")
        raise AttributeError(f"'SessionOptions' object has no attribute {name!r}")


def _override_key(key: Any, what: str) -> str:
    if not isinstance(key, str) or not key:
        raise InputError(f"a free dimension override's {what} must be a non-empty string, got {key!r}")
    return key


def _override_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"a free dimension override's dim_value must be an integer >= 0, got {value!r}")
    return value


_UNSUPPORTED_OPTIONS = {
    "register_custom_ops_library": "custom op libraries are onnxruntime's (register an ember op instead)",
    "add_initializer": "initializers come from the model",
    "add_external_initializers": "initializers come from the model (and its external data files)",
    "add_provider": "ember's providers are chosen by InferenceSession(providers=...)",
    "add_provider_for_devices": "ember's providers are chosen by InferenceSession(providers=...)",
}


class RunOptions:
    """onnxruntime's `RunOptions`. `terminate` set before a run stops it from starting
    (an ExecutionError); `logid` (also `run_tag`) names the run in the log."""

    __slots__ = ("log_severity_level", "log_verbosity_level", "logid", "terminate", "only_execute_path_to_fetches",
                 "_config")

    def __init__(self):
        self.log_severity_level = -1
        self.log_verbosity_level = 0
        self.logid = ""
        self.terminate = False
        self.only_execute_path_to_fetches = False
        self._config: dict[str, str] = {}

    @property
    def run_tag(self) -> str:  # onnxruntime's older name for logid
        return self.logid

    @run_tag.setter
    def run_tag(self, value: str) -> None:
        self.logid = value

    def add_run_config_entry(self, key: str, value: str) -> None:
        if not isinstance(key, str) or not isinstance(value, str):
            raise InputError(f"run config entries are strings; got {key!r}: {value!r}")
        self._config[key] = value

    def get_run_config_entry(self, key: str) -> str:
        if key not in self._config:
            raise InputError(f"RunOptions has no config entry {key!r}")
        return self._config[key]


class ModelMetadata:
    """onnxruntime's `get_modelmeta()`: the ONNX model's own facts."""

    __slots__ = ("producer_name", "graph_name", "domain", "description", "graph_description", "version",
                 "custom_metadata_map")

    def __init__(self, metadata: dict[str, Any], graph_name: str = ""):
        def text(key: str) -> str:
            value = metadata.get(key, "")
            return value if isinstance(value, str) else str(value)

        self.producer_name = text("producer_name")
        self.graph_name = metadata.get("graph_name") or graph_name
        self.domain = text("domain")
        self.description = text("description")
        self.graph_description = text("graph_description")
        version = metadata.get("version")
        self.version = version if isinstance(version, int) else 0
        custom = metadata.get("custom_metadata_map")
        self.custom_metadata_map = {str(k): str(v) for k, v in custom.items()} if isinstance(custom, dict) else {}

    def __repr__(self) -> str:
        return f"<ModelMetadata {self.graph_name!r} by {self.producer_name!r}, version {self.version}>"


@dataclass(frozen=True)
class NodeArg:
    """onnxruntime's description of an input or output: `type` a string such as
    `tensor(float)`, `shape` a list of ints and dim names."""

    name: str
    type: str
    shape: list | None

    @classmethod
    def from_info(cls, info) -> NodeArg:
        shape = None if info.shape is None else [d if isinstance(d, int) else str(d) for d in info.shape]
        return cls(info.name, info.onnx_type, shape)


def _providers(providers: Any, provider_options: Any) -> dict[str, dict[str, str]]:
    """The providers asked for, checked, in order (the first picks ember's target:
    `PROVIDER_TARGETS`): one ember lacks, or the CUDA one where the cuda target cannot run
    here, is an error naming it (never a silent fallback to the CPU)."""
    names, options = [], []
    for entry in providers or [CPU_PROVIDER]:
        name, opts = entry if isinstance(entry, tuple) and len(entry) == 2 else (entry, None)
        names.append(name)
        options.append(opts)
    if provider_options is not None:
        if any(o is not None for o in options):
            raise InputError("give provider options either in providers (as (name, options) pairs) "
                             "or as provider_options, not both")
        if len(provider_options) != len(names):
            raise InputError(f"{len(provider_options)} provider_options for {len(names)} providers")
        options = list(provider_options)
    missing = [n for n in names if n not in PROVIDER_TARGETS]
    if missing:
        raise UnsupportedError(f"execution provider {missing[0]!r} is not available in ember (it has "
                               f"{', '.join(PROVIDER_TARGETS)}); ember does not fall back to "
                               "another provider: ask for one of those")
    if CUDA_PROVIDER in names and (problem := _cuda_problem()) is not None:
        raise UnsupportedError(f"execution provider {CUDA_PROVIDER!r} is not available here: {problem}; "
                               "ember does not fall back to the CPU's silently: ask for it")
    for opts in options:
        if opts is not None and not isinstance(opts, dict):
            raise InputError(f"provider options are dicts, got {type(opts).__name__}")
    chosen: dict[str, dict[str, str]] = {}
    for name, opts in zip(names, options):
        if name == CUDA_PROVIDER:
            device = str((opts or {}).get("device_id", 0))
            if device != "0":
                raise UnsupportedError(f"{CUDA_PROVIDER} device_id {device}: ember runs on the first GPU only so far")
            chosen[name] = {"device_id": "0"}
        else:
            # the CPU provider has no option that changes anything in ember; onnxruntime's
            # CPU provider, too, reports none of those it is given
            chosen[name] = {}
    if CPU_PROVIDER not in chosen:  # (nodes without a GPU kernel run on the CPU, as onnxruntime's)
        chosen[CPU_PROVIDER] = {}
    return chosen


class InferenceSession:
    """onnxruntime's `InferenceSession`, backed by ember: switching is one import. It
    takes an ember artifact (`model.ember`) as well as an ONNX model (a path, bytes, an
    `onnx.ModelProto`, or an ember Graph).

        sess = ember.InferenceSession("model.onnx")
        (logits,) = sess.run(None, {"input": x})
    """

    _KWARGS = {"enable_fallback", "read_config_from_model", "disabled_optimizers"}  # onnxruntime's; no effect

    def __init__(self, path_or_bytes: Any, sess_options: SessionOptions | None = None, providers: Any = None,
                 provider_options: Any = None, **kwargs: Any):
        unknown = sorted(set(kwargs) - self._KWARGS)
        if unknown:
            raise UnsupportedError(f"unknown InferenceSession argument(s): {', '.join(unknown)}")
        if sess_options is not None and not isinstance(sess_options, SessionOptions):
            raise InputError(f"sess_options must be an ember.SessionOptions, got {type(sess_options).__module__}."
                             f"{type(sess_options).__name__} (with `import ember as ort`, ort.SessionOptions() is ember's)")
        self._options = copy.copy(sess_options) if sess_options is not None else SessionOptions()
        self._provider_options = _providers(providers, provider_options)
        self._source = path_or_bytes
        self._log_level = _log_level(self._options.log_severity_level, "SessionOptions")
        self._profile_lock = threading.Lock()
        self._profiling = bool(self._options.enable_profiling)
        self._session_events: list[dict] = []
        self._start_ns = time.monotonic_ns()
        self._t0 = time.perf_counter()
        self._model = self._load(path_or_bytes)
        self._model_output_names = [o.name for o in self._model.outputs]
        if self._profiling:
            self._add_event("session_initialization", self._t0, time.perf_counter() - self._t0)
        if self._options.optimized_model_filepath:
            self._write_optimized(self._options.optimized_model_filepath)
        stats = self._model.stats
        self._log(logging.INFO, f"session ready: {str(stats).splitlines()[0]}")
        if stats.fallback_nodes:
            self._log(logging.WARNING, f"{len(stats.fallback_nodes)} node(s) run on the reference implementation, "
                                       f"not a kernel: {', '.join(stats.fallback_nodes[:10])}")

    def _load(self, model: Any):
        from .api import compile
        from .artifact import is_artifact, load

        level = self._options.graph_optimization_level
        try:
            opt_level = OPT_LEVELS[int(level)]
        except (KeyError, TypeError, ValueError):
            raise InputError(f"graph_optimization_level {level!r} is not one of GraphOptimizationLevel's "
                             f"({', '.join(f'{m.name}={m.value}' for m in GraphOptimizationLevel)})") from None
        threads = int(self._options.intra_op_num_threads or 0) or None
        if threads is not None and threads < 0:
            raise InputError(f"intra_op_num_threads must be 0 (ember's default) or more, got {threads}")
        if isinstance(model, (str, os.PathLike)) and is_artifact(model):
            # compiled already, at the opt_level it records; the level asked for has no say
            if self._options._fixed_dims or self._options._fixed_denotations:
                raise UnsupportedError("free dimension overrides apply when an ONNX model is compiled; this "
                                       f"artifact ({os.fspath(model)}) was compiled already: its dims stay as they are")
            if self._target != "cpu":
                raise UnsupportedError(f"{os.fspath(model)} is an artifact of the cpu target; "
                                       f"{next(iter(self._provider_options))} needs the ONNX model")
            return load(model, intra_op_threads=threads, profile=self._profiling)
        return compile(model, target=self._target, opt_level=opt_level, intra_op_threads=threads, profile=self._profiling,
                       fixed_dims=self._options._fixed_dims, fixed_denotations=self._options._fixed_denotations)

    def _write_optimized(self, path: str | os.PathLike) -> None:
        """onnxruntime's optimized_model_filepath: the graph as ember optimized it, its
        fused ops in the `ember` domain (which ember loads again), or in standard ops
        only with the `ember.optimized_model.standard_ops_only` config entry set to "1"."""
        standard = self._options._config.get(STANDARD_OPS_ONLY, "0") == "1"
        self._model.export_onnx(path, standard_ops_only=standard)
        self._log(logging.INFO, f"wrote the optimized model to {os.fspath(path)}")

    # -- facts ----------------------------------------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        return [NodeArg.from_info(i) for i in self._model.inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [NodeArg.from_info(o) for o in self._model.outputs]

    def get_overridable_initializers(self) -> list[NodeArg]:
        return []  # ember reads every initializer (one listed as an input too) as a constant: none can be fed

    def get_modelmeta(self) -> ModelMetadata:
        return ModelMetadata(self._model.metadata, self._model.graph.name)

    @property
    def _target(self) -> str:
        return PROVIDER_TARGETS[next(iter(self._provider_options))]

    def get_providers(self) -> list[str]:
        return list(self._provider_options)

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return copy.deepcopy(self._provider_options)

    def get_session_options(self) -> SessionOptions:
        return copy.copy(self._options)

    def set_providers(self, providers: Any = None, provider_options: Any = None) -> None:
        """As onnxruntime's: the session made again for `providers` (compiled again where
        the target changes)."""
        chosen, before = _providers(providers, provider_options), self._target
        self._provider_options = chosen
        if self._target != before:
            self._model = self._load(self._source)

    def disable_fallback(self) -> None:  # onnxruntime's retry on another provider: ember has none
        pass

    def enable_fallback(self) -> None:
        pass

    # -- running --------------------------------------------------------------------------
    def run(self, output_names: list[str] | None, input_feed: dict[str, Any], run_options: RunOptions | None = None):
        """The outputs named (all, for None), as numpy arrays."""
        if not isinstance(input_feed, dict):
            raise InputError(f"input_feed must be a dict of input name -> array, got {type(input_feed).__name__}")
        names = self._output_names(output_names)
        if any(isinstance(v, OrtValue) for v in input_feed.values()):
            input_feed = {k: unwrap(v) for k, v in input_feed.items()}
        results, _ = self._timed_run(input_feed, None, run_options)
        return [results[n] for n in names]

    def run_async(self, output_names: list[str] | None, input_feed: dict[str, Any],
                  callback: Callable[[list, Any, str], None], user_data: Any, run_options: RunOptions | None = None):
        """`run` on a worker thread: `callback(outputs, user_data, err)` is called there with
        the outputs (numpy arrays) and err "", or with no outputs and the error's message.
        As onnxruntime's: an unknown output or a missing input raises here, at the call; a
        failing run reports through the callback. Returns None."""
        if not callable(callback):
            raise InputError(f"run_async's callback must be callable, got {type(callback).__name__}")
        if not isinstance(input_feed, dict):
            raise InputError(f"input_feed must be a dict of input name -> array, got {type(input_feed).__name__}")
        from .ir.types import OptionalType

        names = self._output_names(output_names)
        missing = [i.name for i in self._model.inputs
                   if i.name not in input_feed and not isinstance(i.type, OptionalType)]
        if missing:
            raise InputError(f"missing input(s) {', '.join(map(repr, missing))} in the input feed "
                             f"({', '.join(map(repr, input_feed)) or 'empty'})")

        def work() -> None:
            try:
                outputs, err = self.run(names, input_feed, run_options), ""
            except Exception as e:  # noqa: BLE001 - reported to the caller's callback, as onnxruntime does
                outputs, err = [], f"{type(e).__name__}: {e}"
            try:
                callback(outputs, user_data, err)
            except Exception:  # noqa: BLE001 - the caller's code: logged, not lost in the worker
                log.exception("run_async: the callback raised")

        _async_pool().submit(work)

    def run_with_ort_values(self, output_names: list[str] | None, input_dict_ort_values: dict[str, OrtValue],
                            run_options: RunOptions | None = None) -> list[OrtValue]:
        """`run` with OrtValues in and out."""
        if not isinstance(input_dict_ort_values, dict):
            raise InputError("run_with_ort_values takes a dict of input name -> OrtValue, "
                             f"got {type(input_dict_ort_values).__name__}")
        for name, value in input_dict_ort_values.items():
            if not isinstance(value, OrtValue):
                raise InputError(f"input {name!r}: run_with_ort_values takes OrtValues "
                                 f"(OrtValue.ortvalue_from_numpy), got {type(value).__name__}")
        names = self._output_names(output_names)
        results, _ = self._timed_run({k: v._value for k, v in input_dict_ort_values.items()}, None, run_options)
        return [OrtValue(results[n]) for n in names]

    def io_binding(self) -> IOBinding:
        return IOBinding(self)

    def run_with_iobinding(self, iobinding: IOBinding, run_options: RunOptions | None = None) -> None:
        """Run on the binding's inputs; its outputs are written into the buffers bound to
        them (in place: see IOBinding) and read with `get_outputs()`/`copy_outputs_to_cpu()`."""
        if not isinstance(iobinding, IOBinding) or iobinding._session is not self:
            raise InputError("run_with_iobinding takes an IOBinding made by this session's io_binding()")
        self._timed_run(None, iobinding, run_options)

    def _output_names(self, output_names: list[str] | None) -> list[str]:
        known = self._model_output_names
        if not output_names:
            return known
        missing = [n for n in output_names if n not in known]
        if missing:
            raise InputError(f"unknown output {missing[0]!r}; the model's outputs are {', '.join(known)}")
        return output_names

    def _timed_run(self, feeds: dict | None, binding: IOBinding | None, run_options: RunOptions | None):
        if run_options is not None and not isinstance(run_options, RunOptions):
            raise InputError(f"run_options must be an ember.RunOptions, got {type(run_options).__name__}")
        tag = f"run {run_options.logid!r}" if run_options is not None and run_options.logid else "run"
        level = self._log_level
        if run_options is not None and run_options.log_severity_level != -1:
            level = _log_level(run_options.log_severity_level, "RunOptions")
        if run_options is not None and run_options.terminate:
            raise ExecutionError(f"{tag}: not started, its RunOptions.terminate is set")
        start = time.perf_counter()
        if binding is not None:
            binding._run(self._model)
            result = None
        else:
            result = self._model._run_into(feeds, None)
        seconds = time.perf_counter() - start
        if self._profiling:
            self._add_event("model_run", start, seconds)
        if level <= logging.DEBUG:  # formatted only when it is logged: runs can take 0.1 ms
            self._log(logging.DEBUG, f"{tag}: {seconds * 1e3:.3f} ms", level)
        return result

    def _log(self, level: int, message: str, threshold: int | None = None) -> None:
        if level >= (self._log_level if threshold is None else threshold):
            log.log(level, "%s", message)

    # -- profiling ------------------------------------------------------------------------
    def _add_event(self, name: str, start: float, seconds: float) -> None:
        with self._profile_lock:
            self._session_events.append({"cat": "Session", "name": name, "ph": "X", "ts": (start - self._t0) * 1e6,
                                         "dur": seconds * 1e6, "pid": os.getpid(), "tid": threading.get_native_id(),
                                         "args": {}})

    def get_profiling_start_time_ns(self) -> int:
        return self._start_ns

    def end_profiling(self) -> str:
        """Stop profiling; write what it recorded as a Chrome-trace JSON file (onnxruntime's
        form: a list of events, "Session" ones for initialization and each run, "Node" ones
        for each step, with the ops and nodes it computed) and return its path. "" when
        profiling is off or already ended."""
        if not self._profiling:
            return ""
        from .runtime.profiler import trace_events

        self._profiling = False
        records = getattr(self._model._executor, "profile", None) or []
        if hasattr(self._model._executor, "profile"):
            self._model._executor.profile = None
        ops = {node.name: node.op for node in self._model.graph.nodes}
        pid, tid = os.getpid(), threading.get_native_id()
        events = list(self._session_events)
        for event in trace_events(records, ops, self._t0):
            event.update(cat="Node", pid=pid, tid=tid,
                         args={**event["args"], "op_name": event["cat"], "provider": CPU_PROVIDER})
            events.append(event)
        events.sort(key=lambda e: e["ts"])
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")[:-3]
        path = f"{self._options.profile_file_prefix}_{stamp}.json"
        with open(path, "w") as f:
            json.dump(events, f)
        return path

    def __repr__(self) -> str:
        return f"<ember.InferenceSession over {self._model!r}>"
