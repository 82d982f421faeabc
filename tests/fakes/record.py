"""Shared by the vendor fakes: append one call record (JSON line) to $FAKE_VENDOR_LOG."""
import json
import os


def record(_call, *args, **kwargs):
    path = os.environ.get("FAKE_VENDOR_LOG")
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"call": _call, "args": [repr(a) if not isinstance(a, (int, float, str, bool, list, type(None)))
                                                  else a for a in args],
                            "kwargs": {k: (v if isinstance(v, (int, float, str, bool, list, dict, type(None))) else repr(v))
                                       for k, v in kwargs.items()}}) + "\n")
