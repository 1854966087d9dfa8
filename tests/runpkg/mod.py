"""Functions `nsactor run` calls in tests (tests/test_cli_doctor_run.py)."""
import os
import socket


def add(a, b):
    return a + b


def echo(**kwargs):
    return kwargs


def boom(msg="kaboom"):
    raise ValueError(msg)


def where():
    return {"pid": os.getpid(), "hostname": socket.gethostname()}
