"""selective_routing's margin is judged on val dialogues the routing did not choose with."""

import pytest

from research.modules.selective_routing import crossfit_score, routing_proposal


def test_crossfit_prefers_a_margin_that_ignores_noise_that_in_sample_routing_rewards():
    # persona -> (mean on one half of its val dialogues, on the other): the candidate's wins are noise
    halves = {
        "unified": {"p1": (0.5, 0.5), "p2": (0.5, 0.5)},
        "candidate": {"p1": (0.6, 0.4), "p2": (0.4, 0.6)},
    }
    in_sample = routing_proposal(
        {run: {p: h[0] for p, h in per.items()} for run, per in halves.items()}, "unified", 0.0
    )
    assert in_sample == {"p1": "candidate", "p2": "unified"}  # scored on the same half: 0.55, above unified's 0.5
    assert crossfit_score(halves, "unified", 0.0) == pytest.approx((0.4 + 0.5 + 0.5 + 0.4) / 4)
    assert crossfit_score(halves, "unified", 0.2) == pytest.approx(0.5)  # routes no one: unified everywhere


def test_a_new_user_is_routed_by_the_classifier_and_scored_against_unified():
    from research.modules.selective_routing import new_user_gain

    scores = {"unified": {"p1": 0.5, "p2": 0.5, "p3": 0.5}, "cand": {"p1": 0.7, "p2": 0.4, "p3": 0.6}}
    proposal = {"p1": "cand", "p2": "unified", "p3": "cand"}
    # held-out predictions: p1 right (benefits), p2 wrong (routed, loses 0.1), p3 missed (stays on unified)
    predicted = {"p1": True, "p2": True, "p3": False}
    # each persona's default run is the one most *other* personas were routed to (cand for all three)
    assert new_user_gain(scores, proposal, "unified", predicted, lambda run, p: True) == pytest.approx(0.1 / 3)
    # a run whose adapter cannot serve the persona sends it to unified instead
    assert new_user_gain(scores, proposal, "unified", predicted, lambda run, p: p != "p1") == pytest.approx(-0.1 / 3)


def test_personas_without_val_history_go_where_the_classifier_says():
    from research.modules.selective_routing import route_new_users

    proposal = {"p1": "cand", "p2": "unified", "p3": "cand", "p4": "other"}
    assert route_new_users(proposal, "unified", {"new1": True, "new2": False}) == {"new1": "cand", "new2": "unified"}
    assert route_new_users({"p1": "unified"}, "unified", {"new1": True}) == {"new1": "unified"}  # nothing to route to
