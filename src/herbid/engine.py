"""Where the stages' work runs: this machine's processes (``local``) or Ray (``ray``).

Every stage that fans out over many records hands its work to an engine instead of a pool:

* ``engine.map(function, items, desc=...)``: one CPU-bound call per item (decode, resize,
  hash and write an image; clean one sheet); results come back in input order.
* ``engine.map_batches(factory, items, batch_size=..., desc=...)``: model work.
  ``factory(device)`` builds a :class:`BatchWorker` once per worker (that is where the
  model is loaded); its ``load`` reads one item (in threads: Pillow releases the GIL) and
  its ``run`` turns a batch of loaded items into one result per item. One list of
  results per batch comes back, in input order.

A stage passes the very same functions to either engine; only the orchestration differs,
so both engines give the same rows in the same order.

:class:`LocalEngine` maps over herbid's process pool (:mod:`herbid.pools`) and runs the
model in this process, a bounded number of items decoded ahead.

:class:`RayEngine` runs the same functions as a streaming Ray Data pipeline:
``from_items`` (one row per chunk of items) → ``map_batches`` on a task pool (``map``) or
on an actor pool that holds the model (``map_batches``: one actor per GPU where the
cluster has GPUs, else one single-threaded CPU actor per core), ``preserve_order`` set,
results streamed back with ``iter_batches`` so the driver holds only what is in flight.
Items and results cross as pickled bytes, so any picklable value works. It starts a local
Ray of ``workers`` CPUs (object store capped at :data:`LOCAL_OBJECT_STORE_BYTES`, no
dashboard), or joins the cluster at ``address`` (``--address``, else ``$RAY_ADDRESS``).
On a cluster every node needs the same herbid installed and the same paths: the inputs,
the model bundle and the output folder the workers write into must be shared storage.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from herbid.errors import InvalidOption, MissingExtra
from herbid.pools import process_pool
from herbid.progress import progress_bar

ENGINES = ("local", "ray")
RAY_MISSING = "--engine ray needs Ray: pip install 'herbid[scale]'"
#: Object store of a local Ray: only items and results (paths, records) pass through it.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20
#: Decoding threads per model worker (GPU actors; a CPU actor decodes on its one core).
LOAD_THREADS = 4

_T = TypeVar("_T")
_R = TypeVar("_R")


class BatchWorker(Protocol):
    """One worker's model step: ``load`` one item (thread-safe), ``run`` one batch of loaded items."""

    def load(self, item: Any) -> Any: ...

    def run(self, batch: list[Any]) -> list[Any]: ...


#: ``factory(device)`` → a worker; ``device`` is ``"cuda"``/``"cpu"`` for a Ray actor, ``None``
#: locally (the model stays where the caller put it). Must pickle for Ray.
WorkerFactory = Callable[[str | None], BatchWorker]


class Engine(Protocol):
    name: str
    workers: int

    def map(self, function: Callable[[_T], _R], items: Sequence[_T], *, desc: str,
            progress: bool = True) -> Iterator[_R]: ...

    def map_batches(self, factory: WorkerFactory, items: Sequence[Any], *, batch_size: int, desc: str,
                    progress: bool = True, threads: int = LOAD_THREADS) -> Iterator[list[Any]]: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------ local


class LocalEngine:
    """This machine: a process pool of ``workers`` for ``map``, the model in this process."""

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, int(workers))

    def map(self, function: Callable[[_T], _R], items: Sequence[_T], *, desc: str,
            progress: bool = True) -> Iterator[_R]:
        with progress_bar(desc, len(items), enabled=progress) as advance:
            for result in self._map(function, items):
                yield result
                advance()

    def _map(self, function: Callable[[_T], _R], items: Sequence[_T]) -> Iterator[_R]:
        if self.workers <= 1 or len(items) < 2:
            yield from map(function, items)
            return
        # small chunks keep the progress bar moving; a few per worker amortise the IPC
        chunksize = max(1, min(8, len(items) // (8 * self.workers)))
        with process_pool(min(self.workers, len(items))) as executor:
            yield from executor.map(function, items, chunksize=chunksize)

    def map_batches(self, factory: WorkerFactory, items: Sequence[Any], *, batch_size: int, desc: str,
                    progress: bool = True, threads: int = LOAD_THREADS) -> Iterator[list[Any]]:
        worker = factory(None)
        threads = max(1, threads)
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="herbid-load") as pool, \
                progress_bar(desc, len(items), enabled=progress and bool(items)) as advance:
            loaded = prefetch(pool, worker.load, items, ahead=2 * batch_size + threads)
            for chunk in chunks(loaded, batch_size):
                yield worker.run(chunk)
                advance(len(chunk))

    def close(self) -> None:
        pass


def prefetch(executor: Executor, function: Callable[[_T], _R], items: Iterable[_T], ahead: int) -> Iterator[_R]:
    """``map(function, items)`` in order, at most ``ahead`` items in flight (bounded memory)."""
    pending: deque[Future[_R]] = deque()
    for item in items:
        pending.append(executor.submit(function, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def chunks(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    chunk: list[_T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# -------------------------------------------------------------------------------- ray


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a one-line :class:`MissingExtra` saying how to install it."""
    try:
        import ray
        import ray.data  # Ray without its data extra lacks pyarrow and friends
    except ImportError:
        raise MissingExtra(RAY_MISSING) from None
    return ray


class RayEngine:
    """A streaming Ray Data pipeline on a local Ray or on the cluster at ``address`` (see the module docstring).

    A Ray already started in this process (``ray.init`` by the caller) is used as it is and
    left running; one started here is shut down by :meth:`close`. ``gpus=False`` keeps the
    model on CPU actors even where the cluster has GPUs (``--device cpu``).
    """

    name = "ray"
    #: Most items per Ray task of ``map``: fewer, larger tasks amortise Ray's per-task cost.
    chunk_rows = 64

    def __init__(self, workers: int = 1, address: str | None = None, *, gpus: bool = True) -> None:
        self.ray = import_ray()
        self.workers = max(1, int(workers))
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.gpus = gpus
        self._started_here = False
        if not self.ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
            if self.address:
                self.ray.init(address=self.address, **options)
            else:
                self.ray.init(num_cpus=self.workers, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **options)
            self._started_here = True
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset execution chatter
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled": herbid draws its own

    def _cpus(self) -> int:
        """Workers of a CPU stage: every CPU of a cluster joined by address, else up to ``workers``."""
        cpus = max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        return cpus if self.address else min(self.workers, cpus)

    def map(self, function: Callable[[_T], _R], items: Sequence[_T], *, desc: str,
            progress: bool = True) -> Iterator[_R]:
        from ray.data import TaskPoolStrategy

        size = self._cpus()
        rows = max(1, min(self.chunk_rows, math.ceil(len(items) / (4 * size))))  # ≥ 4 tasks per worker
        stage = {"fn": _map_rows, "fn_kwargs": {"function": function}, "compute": TaskPoolStrategy(size=size),
                 "num_cpus": 1}
        with progress_bar(desc, len(items), enabled=progress) as advance:
            for results in self._stream(items, rows, stage):
                yield from results
                advance(len(results))

    def map_batches(self, factory: WorkerFactory, items: Sequence[Any], *, batch_size: int, desc: str,
                    progress: bool = True, threads: int = LOAD_THREADS) -> Iterator[list[Any]]:
        from ray.data import ActorPoolStrategy

        gpus = int(self.ray.cluster_resources().get("GPU", 0)) if self.gpus else 0
        if gpus:
            resources, size, device = {"num_gpus": 1, "num_cpus": 1}, gpus, "cuda"
        else:  # one core per actor: Ray sets OMP_NUM_THREADS=1 there, so torch does not oversubscribe
            resources, size, device, threads = {"num_cpus": 1}, self._cpus(), "cpu", 1
        size = min(size, max(1, math.ceil(len(items) / batch_size)))
        stage = {"fn": _ModelActor, "fn_constructor_args": (factory, device, max(1, threads)),
                 "compute": ActorPoolStrategy(size=size), **resources}
        with progress_bar(desc, len(items), enabled=progress and bool(items)) as advance:
            for results in self._stream(items, batch_size, stage):
                yield results
                advance(len(results))

    def _stream(self, items: Sequence[Any], rows_per_chunk: int, stage: dict[str, Any]) -> Iterator[list[Any]]:
        """Result lists of ``stage`` over consecutive chunks of ``items``, in order, as they finish."""
        if not items:
            return
        import ray.data

        # One row, and one block, per chunk: a model batch is exactly the local engine's batch.
        payload = [{"chunk": pickle.dumps(list(chunk), protocol=5)} for chunk in chunks(items, rows_per_chunk)]
        with _ordered_context():
            dataset = ray.data.from_items(payload, override_num_blocks=len(payload))
            dataset = dataset.map_batches(batch_size=1, batch_format="pyarrow", **stage)
            try:
                for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                    for blob in table.column("result").to_pylist():
                        yield pickle.loads(blob)
            finally:
                del dataset  # before any ray.shutdown: a collected dataset would start Ray again

    def close(self) -> None:
        if self._started_here and self.ray.is_initialized():
            self.ray.shutdown()
        self._started_here = False


@contextmanager
def _ordered_context() -> Iterator[None]:
    """Ray Data's context for one pipeline: results in input order, no Ray progress bars (herbid draws its own)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    wanted = {"enable_progress_bars": False, "print_on_execution_start": False}
    saved = {key: getattr(context, key) for key in wanted if hasattr(context, key)}
    saved_order = context.execution_options.preserve_order
    for key in saved:
        setattr(context, key, wanted[key])
    context.execution_options.preserve_order = True
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(context, key, value)
        context.execution_options.preserve_order = saved_order


def _map_rows(table: Any, function: Callable[[Any], Any]) -> Any:
    """Ray task: ``function`` over every item of every chunk in ``table``."""
    return _results_table([[function(item) for item in pickle.loads(blob)]
                           for blob in table.column("chunk").to_pylist()])


class _ModelActor:
    """Ray actor: builds its worker (loads the model) once, then runs one batch per chunk."""

    def __init__(self, factory: WorkerFactory, device: str, threads: int) -> None:
        self.worker = factory(device)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="herbid-load")

    def __call__(self, table: Any) -> Any:
        return _results_table([self.worker.run(list(self.pool.map(self.worker.load, pickle.loads(blob))))
                               for blob in table.column("chunk").to_pylist()])


def _results_table(results: list[list[Any]]) -> Any:
    import pyarrow as pa

    return pa.table({"result": pa.array([pickle.dumps(r, protocol=5) for r in results], type=pa.large_binary())})


# ---------------------------------------------------------------------------- choosing


def make_engine(name: str = "local", *, workers: int = 1, address: str | None = None,
                gpus: bool = True) -> LocalEngine | RayEngine:
    """The engine called ``name``; close it when done (or use :func:`open_engine`)."""
    check_engine(name, address)
    if name == "local":
        return LocalEngine(workers)
    return RayEngine(workers, address, gpus=gpus)


def check_engine(name: str, address: str | None = None) -> None:
    """Refuse an unknown engine, or a cluster address without ``ray`` (before any work starts)."""
    if name not in ENGINES:
        raise InvalidOption(f"engine {name!r}: expected one of {', '.join(ENGINES)}")
    if address and name != "ray":
        raise InvalidOption("--address needs --engine ray")


@contextmanager
def open_engine(engine: str | Engine = "local", *, workers: int = 1, address: str | None = None,
                gpus: bool = True) -> Iterator[Engine]:
    """``engine`` itself when it is one (left open), else a new engine of that name, closed at the end."""
    if not isinstance(engine, str):
        yield engine
        return
    made = make_engine(engine, workers=workers, address=address, gpus=gpus)
    try:
        yield made
    finally:
        made.close()
