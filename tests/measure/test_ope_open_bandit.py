"""Off-policy evaluation on the Open Bandit samples: each policy's click rate from the other's log.

The Open Bandit Dataset (Saito et al. 2021) logged the same ZOZOTOWN campaigns under two
policies, uniform random and Bernoulli Thompson sampling (BTS), with the propensity of every
impression. The on-policy click rate of each policy is the mean click of its own log
(SOURCE.txt: random 0.460% for men and women; BTS 0.690% for men, 0.460% for women), so the
other policy's log can estimate it off-line. BTS is context-free: its distribution over items
in each position, averaged over the week, is estimated from its own log by the frequencies of
the items it showed (item ids are shared by the two logs; only the hashed features differ).

The on-policy rate is itself a sample mean (46 or 69 clicks in 10,000 impressions, a standard
error of 12-15% of it), so an estimate is checked against it with both uncertainties: the
difference must be below ``1.96 sqrt(sd_estimate^2 + se_on_policy^2)``, where ``sd_estimate``
is the bootstrap standard deviation. The weighting estimators' 95% intervals must also contain
the on-policy rate. The direct method's interval holds its reward model fixed, so for it only
the first check applies.

Measured (seeded bootstrap, 1,000 resamples; relative error against the on-policy rate):

========  ============  =================  ===================  ============
campaign  direction     IPS                SNIPS                DR
========  ============  =================  ===================  ============
men       BTS <- rand.  0.566% (-18.0%)    0.574% (-16.8%)      0.569% (-17.5%)
men       rand. <- BTS  0.301% (-34.6%)    0.319% (-30.7%)      0.287% (-37.5%)
women     BTS <- rand.  0.581% (+26.2%)    0.583% (+26.8%)      0.590% (+28.3%)
women     rand. <- BTS  0.744% (+61.7%)    0.237% (-48.4%)      0.064% (-86.1%)
========  ============  =================  ===================  ============

Estimating BTS from the random log works to within the on-policy rate's own noise; the
reverse direction for women is uninformative, because BTS gave some items a probability of
1e-6 and the weights' effective sample size is 2 impressions of 10,000. The OBP paper reports
its estimators' errors on the full dataset (millions of impressions), not on these samples.
"""

from __future__ import annotations

import numpy as np
import pytest

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.measure import (
    IPS,
    SNIPS,
    DirectMethod,
    DoublyRobust,
    LoggedFeedback,
    action_frequencies,
    decision_log,
    read_open_bandit,
    reward_table,
)
from tests.conftest import shared_data

pytestmark = pytest.mark.shared_data

ON_POLICY = {  # SOURCE.txt: clicks / 10,000 impressions
    ("random", "men"): 0.0046,
    ("random", "women"): 0.0046,
    ("bts", "men"): 0.0069,
    ("bts", "women"): 0.0046,
}


def _log(policy: str, campaign: str) -> LoggedFeedback:
    return read_open_bandit(shared_data("open_bandit", policy, campaign, f"{campaign}.csv"))


def _evaluate(logged: LoggedFeedback, target: np.ndarray) -> LoggedFeedback:
    """The log with a context-free target (positions x items) and a cell-mean reward model."""
    rewards = reward_table(logged)
    return logged.replace(
        action_dist=target[logged.position - 1], q_hat_all=rewards[logged.position - 1]
    )


@pytest.mark.parametrize("campaign", ["men", "women"])
def test_logs_match_their_published_counts(campaign: str) -> None:
    for policy in ("random", "bts"):  # a loop over the two logs
        fb = _log(policy, campaign)
        assert len(fb) == 10_000 and fb.n_actions == (34 if campaign == "men" else 46)
        assert fb.reward.mean() == pytest.approx(ON_POLICY[policy, campaign], abs=1e-12)
        assert set(np.unique(fb.position)) == {1, 2, 3}
        # the logged policy evaluated on its own log is its on-policy rate, exactly
        own = IPS().estimate_policy_value(fb.replace(pi_e=fb.propensity))
        assert own == pytest.approx(ON_POLICY[policy, campaign], abs=1e-12)
    uniform = _log("random", campaign).propensity
    assert np.allclose(uniform, 1 / fb.n_actions)


@pytest.mark.parametrize("campaign", ["men", "women"])
@pytest.mark.parametrize("direction", ["bts_from_random", "random_from_bts"])
def test_one_policy_estimated_from_the_others_log(campaign: str, direction: str) -> None:
    target_name, logged_name = direction.split("_from_")
    logged = _log(logged_name, campaign)
    own_log = _log(target_name, campaign)
    if target_name == "bts":
        target = action_frequencies(own_log)
        assert np.allclose(target.sum(axis=1), 1.0)
    else:
        target = np.full((3, own_log.n_actions or 0), 1 / (own_log.n_actions or 1))
    fb = _evaluate(logged, target)
    truth = ON_POLICY[target_name, campaign]
    se_truth = np.sqrt(truth * (1 - truth) / len(own_log))
    for est in (IPS(), SNIPS(), DoublyRobust(), DirectMethod()):  # a loop over estimators
        iv = est.estimate_interval(fb, n_bootstrap=1000, random_state=0)
        error = (iv.estimate - truth) / truth
        print(
            f"{campaign} {direction} {est.name}: {iv.estimate:.5f} [{iv.lower:.5f}, "
            f"{iv.upper:.5f}], on-policy {truth:.5f}, error {error:+.1%}, "
            f"ESS {est.effective_sample_size(fb)}"
        )
        assert abs(iv.estimate - truth) < 1.96 * np.hypot(iv.std, se_truth), est.name
        if est.name != "dm":
            assert iv.lower <= truth <= iv.upper, est.name
    ess = IPS().effective_sample_size(fb)
    assert ess is not None
    if direction == "bts_from_random":  # BTS's probabilities are spread: most of the log counts
        assert ess > 2_500


def test_the_ingested_log_gives_the_same_weighted_clicks(workspace: Workspace) -> None:
    """``nextbest ingest --format obd`` then the decision log: the same rows, clicks, weights.

    The warehouse groups rows by pseudo-customer and time into contexts: 11 pairs of
    impressions of random/men share both, so the per-context value divides by 9,989.
    """
    path = shared_data("open_bandit", "random", "men", "men.csv")
    ingest(workspace.warehouse, [path], workspace.config.ingest, fmt="obd")
    log = decision_log(workspace.warehouse)
    items = np.array([int(o.rsplit("item", 1)[1]) for o in log.offers])
    target = action_frequencies(_log("bts", "men"))
    fb = log.feedback
    in_ws = fb.replace(pi_e=target[fb.position - 1, items[fb.action]])
    csv = _log("random", "men")
    from_csv = csv.replace(action_dist=target[csv.position - 1])
    assert (len(fb), fb.n_contexts, fb.reward.sum()) == (10_000, 9_989, 46)
    assert IPS().estimate_policy_value(in_ws) * 9_989 == pytest.approx(
        IPS().estimate_policy_value(from_csv) * 10_000, rel=1e-12
    )
