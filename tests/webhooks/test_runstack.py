"""`make run` keeps the worker and beat running: runstack's supervisor restarts a child that
exits on its own (with a backoff) and stops everything on Ctrl-C or SIGTERM; the worker it
starts rides out a Redis restart while it holds an unacknowledged task.

The supervisor runs in a real process of its own (so real signals reach it) over real child
processes: small Python programs that crash, or wait for SIGTERM and leave a grandchild behind.
The worker test starts ``celery worker`` with runstack's own command line against a Redis of
the test's own on a free port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from bxos.common.management.commands.runstack import worker_command
from bxos.common.services import model_update
from tests.conftest import skip_or_fail
from tests.webhooks.receiver import Answer, Receiver
from tests.webhooks.test_reliability import RedisServer, publishing_to
from webhooks import services
from webhooks.models import WebhookDelivery

# A child that records each start and exits with code 3 at once.
CRASHY = """
import os, sys
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()}\\n")
sys.exit(3)
"""

# A child that records its start, leaves a grandchild (as a worker's pool), and on SIGTERM
# records it and exits without stopping the grandchild: the supervisor must.
STEADY = """
import os, signal, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
def terminated(signum, frame):
    with open(sys.argv[1], "a") as f:
        f.write("terminated\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, terminated)
with open(sys.argv[1], "a") as f:
    f.write(f"started {os.getpid()} {grandchild.pid}\\n")
while True:
    time.sleep(1)
"""

# The supervisor of runstack over the children named on its command line.
DRIVER = """
import sys
from bxos.common.management.commands.runstack import Child, Supervisor, on_stop_signals

log_path, workdir, web = sys.argv[1], sys.argv[2], sys.argv[3] == "web"
log = open(log_path, "a", buffering=1)
children = [
    Child("crashy", [sys.executable, f"{workdir}/crashy.py", f"{workdir}/crashy.starts"]),
    Child("steady", [sys.executable, f"{workdir}/steady.py", f"{workdir}/steady.out"]),
]
if web:  # a child that is not restarted: its exit stops everything
    web = Child("web", [sys.executable, "-c", "raise SystemExit(5)"], restart=False)
    children = [children[1], web]
supervisor = Supervisor(
    children=children, log=lambda line: print(line, file=log), backoff_start=0.2,
    backoff_max=0.8, stop_timeout=10,
)
stopping = on_stop_signals()
supervisor.start()
try:
    code = supervisor.run(stopping, tick=0.05)
finally:
    supervisor.stop()
print(f"supervisor exit {code}", file=log)
sys.exit(code)
"""


def alive(pid: int) -> bool:
    """Running, not a zombie (a container's init may be slow to reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def wait_for(condition, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def driver(tmp_path):
    (tmp_path / "crashy.py").write_text(CRASHY)
    (tmp_path / "steady.py").write_text(STEADY)
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    started = []

    def start(*, web: bool = False) -> subprocess.Popen:
        process = subprocess.Popen(
            [
                sys.executable,
                str(tmp_path / "driver.py"),
                str(tmp_path / "supervisor.log"),
                str(tmp_path),
                "web" if web else "-",
            ],
            env={**os.environ, "PYTHONPATH": str(settings.BASE_DIR)},
            cwd=settings.BASE_DIR,
            start_new_session=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:  # a failed test leaves nothing running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_crashing_child_is_restarted_with_a_backoff_and_a_signal_stops_all(
    driver, tmp_path, stop_signal
):
    supervisor = driver()
    starts = tmp_path / "crashy.starts"
    wait_for(lambda: len(lines(starts)) >= 5, "crashy to be started five times")
    steady = wait_for(lambda: lines(tmp_path / "steady.out"), "steady to start")
    log = lines(tmp_path / "supervisor.log")
    exits = [line for line in log if line.startswith("crashy exited unexpectedly")]
    assert all("(exit code 3)" in line for line in exits), log
    # The backoff doubles to its cap; the logged delays say so (no clock is read here).
    delays = [line.rsplit("restarting it in ", 1)[1] for line in exits[:4]]
    assert delays == ["0.2 s.", "0.4 s.", "0.8 s.", "0.8 s."], log
    assert "Starting crashy again (start 2)." in log
    # The steady child was never restarted.
    assert len(steady) == 1 and not any(line.startswith("steady") for line in log)
    _, steady_pid, grandchild_pid = steady[0].split()

    supervisor.send_signal(stop_signal)
    assert supervisor.wait(timeout=30) == 0
    assert lines(tmp_path / "supervisor.log")[-1] == "supervisor exit 0"
    # The steady child was asked to stop (SIGTERM to its main process) and did; the
    # grandchild it left went with its process group; no crashy child is left either.
    assert lines(tmp_path / "steady.out")[-1] == "terminated"
    for pid in [int(steady_pid), int(grandchild_pid), *map(int, lines(starts))]:
        assert not alive(pid), pid


def test_the_exit_of_a_child_that_is_not_restarted_stops_everything(driver, tmp_path):
    supervisor = driver(web=True)
    assert supervisor.wait(timeout=30) == 1
    log = lines(tmp_path / "supervisor.log")
    assert "web exited (exit code 5); stopping everything." in log
    assert log[-1] == "supervisor exit 1"
    # The other child was stopped, grandchild and all (it may not have got to write its
    # start line before the SIGTERM: then its whole group was killed at once).
    out = lines(tmp_path / "steady.out")
    started = [line.split() for line in out if line.startswith("started")]
    for _, pid, grandchild in started:
        assert not alive(int(pid)) and not alive(int(grandchild))


# --- the worker and a Redis restart ----------------------------------------------------------


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_the_worker_rides_out_a_redis_restart_while_a_task_is_unacked(
    north, system, loopback, tmp_path
):
    """A dispatch task (``acks_late``) is mid-send when Redis restarts (empty): the worker
    started with runstack's command line reconnects and takes the next wake-up from the new
    Redis, instead of exiting with "Unrecoverable error"."""
    binary = shutil.which("redis-server")
    if binary is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    receiver = Receiver()
    receiver.default = Answer(delay=3)  # the task is still running when Redis goes
    services.webhook_endpoint_create(
        actor=system,
        district=north.district,
        name="Slow receiver",
        url=receiver.url,
        event_types=["student.updated"],
    )
    redis = RedisServer(binary, tmp_path)
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,
        "CELERY_BROKER_URL": redis.url,
        "BXOS_DB_NAME": connection.settings_dict["NAME"],
        "OUTBOUND_ALLOW_LOOPBACK": "1",
    }
    command = worker_command(sys.executable)
    with contextlib.ExitStack() as stack:
        stack.enter_context(receiver)
        redis.start()
        stack.callback(redis.stop)
        stack.enter_context(publishing_to(redis.url))
        with open(log_path, "ab") as log:
            worker = subprocess.Popen(
                command,
                env=env,
                cwd=settings.BASE_DIR,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def stop_worker():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=20)

        stack.callback(stop_worker)

        def output() -> str:
            return log_path.read_text(errors="replace")[-6000:]

        def until(condition, what, timeout=60):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if condition():
                    return
                assert worker.poll() is None, f"the worker exited ({what}):\n{output()}"
                time.sleep(0.1)
            raise AssertionError(f"timed out waiting for {what}:\n{output()}")

        until(lambda: "ready." in output(), "the worker to be ready")
        model_update(instance=north.a1, actor=system, data={"preferred_name": "Before"})
        # The wake-up was taken: the request is in flight, its message unacknowledged.
        until(lambda: len(receiver.received) >= 1, "the first request")
        redis.restart()
        until(
            lambda: WebhookDelivery.objects.filter(status="succeeded").count() == 1,
            "the first delivery to be recorded",
        )
        # Only a worker that reconnected hears of this one (no beat runs here).
        receiver.default = Answer()
        model_update(instance=north.a1, actor=system, data={"preferred_name": "After"})
        until(
            lambda: WebhookDelivery.objects.filter(status="succeeded").count() == 2,
            "the worker to take a wake-up from the restarted Redis",
        )
        assert worker.poll() is None, output()
        assert "Unrecoverable error" not in output()
