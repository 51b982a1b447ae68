"""localstripe's pickled store, kept in the system temp folder (``TMPDIR``) and written
atomically: localstripe itself hard-codes ``/tmp/localstripe.pickle``.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any

from devtools.localstripe.common import logger

_loading_store = False


def _store_path() -> str:
    return os.path.join(tempfile.gettempdir(), "localstripe.pickle")


def _store_load(self: Any) -> None:
    """localstripe's load, from the temp folder; an unreadable file is set aside."""
    global _loading_store
    path = _store_path()
    _loading_store = True  # unpickling a Store calls __setitem__ per key: no dump meanwhile
    try:
        with open(path, "rb") as f:
            old = pickle.load(f)  # noqa: S301 - our own store file, written by this process
    except FileNotFoundError:
        return
    except Exception as exc:
        os.replace(path, path + ".unreadable")
        logger.warning("localstripe store %s unreadable (%r): set aside, starting empty", path, exc)
        return
    finally:
        _loading_store = False
    self.clear()
    dict.update(self, old)


def _store_dump(self: Any) -> None:
    """localstripe's dump (on every write), to the temp folder, atomically."""
    if _loading_store:
        return
    path = _store_path()
    with open(path + ".tmp", "wb") as f:
        pickle.dump(dict(self), f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(path + ".tmp", path)
