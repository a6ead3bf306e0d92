"""Blind A/B votes by people (finetune.votes): the Chat tab asks, the run keeps the votes, the
Evaluate tab tallies them; visitors vote under the public link's limits.

Run: python -m pytest -q tests/test_votes.py
"""

from __future__ import annotations

import pytest

from finetune import access, votes
from finetune.config import GenerationSettings
from finetune.errors import LimitError, RunError

SHORT = GenerationSettings(max_new_tokens=4)


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    from test_evaluate import make_run

    return make_run(tmp_path_factory.mktemp("votes"), tiny_model, rows=2)


@pytest.fixture
def home(run, monkeypatch):
    monkeypatch.setenv("FINETUNE_HOME", str(run.parent.parent))  # the page names runs
    from finetune import chat

    chat.CACHE.clear()
    return run


def test_wilson_interval():
    assert votes.wilson(0, 0) == (0.0, 1.0)
    low, high = votes.wilson(8, 10)
    assert low == pytest.approx(0.490, abs=0.001) and high == pytest.approx(0.943, abs=0.001)
    assert votes.wilson(10, 10)[1] == pytest.approx(1.0)


def test_votes_survive_an_app_restart_and_are_tallied(home, monkeypatch):
    from finetune.ui import chat_tab, evaluate_tab

    generation = [getattr(SHORT, name) for name in chat_tab.GENERATION_FIELDS]
    picks = ["A", "B", "tie", "A"]
    winners = []
    for pick in picks:
        pair, first, second, note = chat_tab.blind_ask("hello", home.name, "", *generation)
        assert sorted(pair["order"]) == ["base", "tuned"] and note == chat_tab.BLIND_ASK
        assert (first, second) == (pair["answers"][pair["order"][0]],
                                   pair["answers"][pair["order"][1]])
        spent, thanks = chat_tab.blind_vote(pick)(pair)
        assert spent is None and "Vote saved" in thanks
        winners.append("tie" if pick == "tie" else pair["order"][0 if pick == "A" else 1])
    with pytest.raises(Exception, match="Ask a question first"):  # one vote per pair
        chat_tab.blind_vote("A")(None)

    # a restart: another process, with nothing of this one's memory, reads the run directory
    import json
    import subprocess
    import sys

    from conftest import REPO

    t = json.loads(subprocess.run(
        [sys.executable, "-c", "import json, sys; from finetune import votes; "
         "print(json.dumps(votes.tally(sys.argv[1])))", str(home)],
        capture_output=True, text=True, check=True, cwd=REPO).stdout)
    assert (t["wins"], t["losses"], t["ties"]) == (winners.count("tuned"), winners.count("base"),
                                                   1)
    summary = evaluate_tab.show_saved(home.name, "all")[0]
    assert f"Blind votes by people: 4 in all; tuned better {t['wins']}" in summary
    assert "95% interval" in summary


def test_visitors_vote_under_the_public_links_limits(home):
    from finetune.ui.guard import VISITORS
    from finetune.ui import chat_tab

    assert getattr(chat_tab.blind_ask, VISITORS) and getattr(chat_tab.blind_vote("B"), VISITORS)
    visitor = access.Identity("", False, "a visitor")
    gate = access.Gate(access.Limits(per_minute=1, max_new_tokens=2))
    pair = votes.ask(home.name, "hello", "", SHORT, visitor, gate, "1.2.3.4")
    assert votes.record(pair, "tie", by="visitor")["winner"] == "tie"
    with pytest.raises(LimitError, match="Too many messages"):
        votes.ask(home.name, "hello again", "", SHORT, visitor, gate, "1.2.3.4")
    with pytest.raises(RunError, match="compares a run's base and tuned"):
        votes.ask("model:SmolLM2-135M-Instruct", "hello", "", SHORT, visitor, gate, "5.6.7.8")
