"""llama.cpp's load-progress callback, reached through llama-cpp-python.

`Llama(...)` takes no progress callback: it builds its `llama_model_params` from
`llama_model_default_params()` and loads the model in the same constructor. So the
default-params function is wrapped once, and the wrapper sets `progress_callback` only
for a thread that asked for it (`reporting`); every other caller gets the defaults.
llama.cpp calls the callback on the loading thread with the share of tensor bytes read.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Callable, Iterator

import llama_cpp.llama_cpp as lib

log = logging.getLogger(__name__)

_local = threading.local()
_install_lock = threading.Lock()


def _install() -> None:
    with _install_lock:
        if getattr(lib.llama_model_default_params, "_cortex_progress", False):
            return
        original = lib.llama_model_default_params

        def default_params() -> lib.llama_model_params:
            params = original()
            callback = getattr(_local, "callback", None)
            if callback is not None:
                params.progress_callback = callback
            return params

        default_params._cortex_progress = True  # type: ignore[attr-defined]
        lib.llama_model_default_params = default_params


@contextlib.contextmanager
def reporting(on_progress: Callable[[float], None] | None) -> Iterator[None]:
    """While inside, a model loaded on this thread reports its progress (0.0 .. 1.0)."""
    if on_progress is None:
        yield
        return
    _install()

    def call(progress: float, _user_data: ctypes.c_void_p) -> bool:
        try:
            on_progress(float(progress))
        except Exception:  # a C caller cannot take a Python exception: never stop the load
            log.exception("load progress callback failed")
        return True

    # The ctypes thunk must outlive the load: llama.cpp holds a bare pointer to it.
    _local.callback = lib.llama_progress_callback(call)
    try:
        yield
    finally:
        _local.callback = None
