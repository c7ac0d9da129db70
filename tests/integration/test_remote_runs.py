"""``openrft rftj rollouts|plot|compare --server``: what a server's job wrote, read through its
``:rollouts`` and ``:metrics`` calls, is shown exactly as the same commands show it on the server's
own machine; another account's job is not found."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from test_dashboard_browser import make_job, write_rollouts

from openrft.cli import main
from openrft.cli import remote as remote_mod
from openrft.jobs.states import JobState
from openrft.jobs.store import JobStore
from openrft.server import wire
from openrft.server.app import create_app
from openrft.server.settings import ServerSettings

URL = "http://127.0.0.1:8321"


@pytest.fixture
def store(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("OPENRFT_HOME", str(home))
    monkeypatch.delenv("OPENRFT_ACCOUNT", raising=False)
    monkeypatch.delenv("OPENRFT_SERVER", raising=False)
    store = JobStore(home)
    make_job(store, "base-a", JobState.COMPLETED, [0.2, 0.4, 0.5])
    make_job(store, "try-b", JobState.COMPLETED, [0.1, 0.3], learning_rate=2e-4)
    write_rollouts(store.get("base-a").rollouts_path, 3)
    app = create_app(ServerSettings(home=home, run_queue=False))

    class AppRemote(remote_mod.Remote):
        def __init__(self, url: str, api_key: str | None = None, account: str | None = None):
            super().__init__(url, api_key, account)
            self.http = TestClient(app, base_url=self.url)

    monkeypatch.setattr(remote_mod, "Remote", AppRemote)
    return store


def both(capsys, *command: str) -> tuple[str, str]:
    """The command's output on this machine, then through the server."""
    assert main(list(command)) == 0
    here = capsys.readouterr().out
    assert main([*command, "--server", URL]) == 0
    return here, capsys.readouterr().out


def test_rollouts_read_through_a_server_are_shown_as_on_its_machine(store, capsys):
    worst, there = both(capsys, "rftj", "rollouts", "base-a", "--worst", "--limit", "2")
    assert there == worst and "2 rollouts of step 3 (worst first)" in worst
    here, there = both(capsys, "rftj", "rollouts", "base-a", "--best", "-o", "json")
    assert json.loads(there) == json.loads(here) and len(json.loads(here)) == 3
    assert main(["rftj", "rollouts", "base-a", "--step", "9", "--server", URL]) == 7
    assert "no rollouts for step 9 (steps with rollouts: 3)" in capsys.readouterr().err
    full = "accounts/local/reinforcementFineTuningJobs/base-a"  # a job's name, as the API gives it
    assert main(["rftj", "rollouts", full, "--worst", "--limit", "2", "--server", URL]) == 0
    assert capsys.readouterr().out == worst
    assert main(["rftj", "rollouts", "try-b", "--server", URL]) == 0
    assert "has no sampled rollouts yet" in capsys.readouterr().out


def test_compare_and_plot_through_a_server_read_its_metrics_and_parameters(store, capsys, tmp_path):
    here, there = both(capsys, "rftj", "compare", "base-a", "try-b", "--out", str(tmp_path / "c.png"))
    assert there.split("\nResults:")[0] == here.split("\nResults:")[0]  # the differing parameter
    assert "learning-rate  0.0001  0.0002" in there
    results = lambda text: [line.split()[:6] for line in text.split("Results:")[1].splitlines()[2:4]]  # noqa: E731
    assert results(there) == results(here)  # states, steps and rewards (wall times move on)
    assert main(["rftj", "plot", "base-a", "try-b", "--out", str(tmp_path / "p.png"), "--server", URL]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_another_accounts_job_is_not_found_through_a_server(store, capsys):
    wire.write_meta(store.get("base-a").job_dir, {"account": "acme", "refs": {}})
    assert main(["rftj", "rollouts", "base-a", "--server", URL]) == 7
    assert "job 'base-a' not found in account 'local'" in capsys.readouterr().err  # the account searched
    assert main(["rftj", "compare", "base-a", "try-b", "--server", URL]) == 7
