"""bundle.utils.threads: the thread defaults for inference on a CPU that other processes share."""

from __future__ import annotations

import os

import pytest
import torch

from bundle.utils import threads


def test_thread_env_adds_the_defaults_and_keeps_the_users_settings():
    env = threads.thread_env({"PATH": "/bin", "OMP_WAIT_POLICY": "ACTIVE"})
    assert env["PATH"] == "/bin"
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice wins
    assert env["KMP_BLOCKTIME"] == threads.THREAD_ENV["KMP_BLOCKTIME"]
    assert threads.thread_env({})["OMP_WAIT_POLICY"] == "PASSIVE"


def test_apply_thread_env_sets_os_environ_and_says_it_is_too_late_after_torch(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("KMP_BLOCKTIME", "7")
    assert threads.apply_thread_env() is False  # torch is imported in this process
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert os.environ["KMP_BLOCKTIME"] == "7"


def test_the_dicom_command_sets_the_same_environment():
    from bundle.cli import dicom_batch

    assert dicom_batch._THREAD_ENV == threads.THREAD_ENV


@pytest.mark.parametrize(
    "text, expected",
    [("0.50 0.40 0.30 3/250 1234\n", 2.0), ("1.0 1.0 1.0 1/90 7", 0.0), ("garbage", None), ("1 2 3 x/9 4", None)],
)
def test_other_runnable_tasks_parses_proc_loadavg(text, expected):
    assert threads.other_runnable_tasks(loadavg_text=text) == expected


def test_other_runnable_tasks_reads_this_machine():
    busy = threads.other_runnable_tasks(samples=3, interval=0.0)
    if not os.path.exists("/proc/loadavg"):
        assert busy is None
    else:
        assert busy is not None and busy >= 0.0


@pytest.mark.parametrize(
    "requested, cpus, busy, online, expected",
    [
        (None, 2, 0.0, 2, 2),  # idle: every CPU
        (1, 2, 0.0, 2, 1),  # never more than asked
        (8, 2, 0.0, 2, 2),  # never more than the CPUs
        (2, 2, 1.0, 2, 1),  # one core busy
        (2, 2, 2.0, 2, 1),  # as many busy tasks as cores: one thread
        (4, 4, 1.4, 4, 3),  # rounded to the nearest core
        (4, 4, 1.6, 4, 2),
        (2, 2, 9.0, 2, 1),  # at least one
        (2, 2, 30.0, 64, 2),  # a container's 2 CPUs on a 64-core host with 30 busy tasks
    ],
)
def test_inference_threads(requested, cpus, busy, online, expected):
    assert threads.inference_threads(requested, cpus=cpus, busy=busy, online=online) == expected


def test_available_cpus_is_the_affinity_mask():
    n = threads.available_cpus()
    assert 1 <= n <= (os.cpu_count() or n)
    if hasattr(os, "sched_getaffinity"):
        assert n == len(os.sched_getaffinity(0))


def test_set_inference_threads_sets_torch(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "other_runnable_tasks", lambda *a, **k: 0.0)
        assert threads.set_inference_threads(1) == 1 and torch.get_num_threads() == 1
        expected = min(2, threads.available_cpus())
        assert threads.set_inference_threads(2) == expected and torch.get_num_threads() == expected
        monkeypatch.setattr(threads, "other_runnable_tasks", lambda *a, **k: 1000.0)
        assert threads.set_inference_threads(2) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_ort_session_options_turn_spinning_off():
    pytest.importorskip("onnxruntime")
    options = threads.ort_session_options(2)
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    again = threads.ort_session_options(1, **{"session.intra_op.allow_spinning": "1"})
    assert again.intra_op_num_threads == 1
    assert again.get_session_config_entry("session.intra_op.allow_spinning") == "1"
