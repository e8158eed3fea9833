"""llama.cpp's load-progress callback, as a ctypes thunk for `llama_model_params`.

llama.cpp calls it on the loading thread with the share of tensor bytes read (0.0 .. 1.0);
returning False would abort the load, so a failing reporter never does.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Any

import llama_cpp.llama_cpp as lib

log = logging.getLogger(__name__)


def callback(on_progress: Callable[[float], None] | None) -> Any:
    """A `llama_progress_callback` calling `on_progress`, or None. Keep a reference to it
    until the load returns."""
    if on_progress is None:
        return None

    def call(progress: float, _user_data: ctypes.c_void_p) -> bool:
        try:
            on_progress(float(progress))
        except Exception:  # a C caller cannot take a Python exception: never stop the load
            log.exception("load progress callback failed")
        return True

    return lib.llama_progress_callback(call)
