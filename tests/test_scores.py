"""Reference scores, normalisation, IQM and its stratified bootstrap, on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest

from dtmem.envs.atari import ATARI_GAMES, UnknownGameError
from dtmem.scores import (
    UndefinedNormalizationError,
    dqn_normalized_score,
    human_normalized_score,
    iqm,
    iqm_bootstrap_ci,
    reference_scores,
    top_k_mean,
)


def test_table_has_the_57_games_with_their_sources():
    table = reference_scores()
    assert tuple(table) == ATARI_GAMES
    alien = table["Alien"]
    assert (alien.random, alien.human, alien.dqn) == (227.8, 7127.7, 2484.49)
    assert table["Defender"].dqn is None and table["Surround"].dqn is None
    assert sum(r.dqn is None for r in table.values()) == 2


def test_package_data_keeps_the_provenance_note():
    from importlib import resources

    note = resources.files("dtmem.data_files").joinpath("atari_reference_scores.md").read_text()
    assert "dqn_zoo" in note and "dopamine" in note


@pytest.mark.parametrize("game", ["Alien", "Pong", "Skiing", "DoubleDunk", "MontezumaRevenge"])
def test_human_normalized_random_is_0_and_human_is_1(game):
    ref = reference_scores()[game]
    assert human_normalized_score(game, ref.random) == pytest.approx(0.0)
    assert human_normalized_score(game, ref.human) == pytest.approx(1.0)
    midway = (ref.random + ref.human) / 2
    assert human_normalized_score(game, midway) == pytest.approx(0.5)


def test_normalization_accepts_arrays_and_game_spellings():
    ref = reference_scores()["MsPacman"]
    got = human_normalized_score("ms_pacman", np.array([ref.random, ref.human, 2 * ref.human]))
    expected = [0.0, 1.0, (2 * ref.human - ref.random) / (ref.human - ref.random)]
    np.testing.assert_allclose(got, expected)


def test_dqn_normalized_uses_min_max_bounds():
    ref = reference_scores()["Breakout"]
    assert ref.dqn is not None
    assert dqn_normalized_score("Breakout", ref.random) == pytest.approx(0.0)
    assert dqn_normalized_score("Breakout", ref.dqn) == pytest.approx(1.0)
    # Asteroids: DQN (698.37) scores below random (719.1), so the bounds swap.
    assert dqn_normalized_score("Asteroids", 698.37) == pytest.approx(0.0)
    assert dqn_normalized_score("Asteroids", 719.1) == pytest.approx(1.0)


@pytest.mark.parametrize("game", ["MontezumaRevenge", "Defender", "Surround"])
def test_dqn_normalized_undefined_games_raise(game):
    with pytest.raises(UndefinedNormalizationError, match=game) as err:
        dqn_normalized_score(game, 10.0)
    assert isinstance(err.value, ValueError)


def test_unknown_game_lists_valid_names():
    with pytest.raises(UnknownGameError, match="Pong"):
        human_normalized_score("Pacman3000", 1.0)


def test_iqm_of_known_lists():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm([100, 0, 3, 1, 2]) == pytest.approx(2.0)  # 5 values: drop 1 each end
    assert iqm([7.0]) == 7.0
    with pytest.raises(ValueError):
        iqm([])


def test_iqm_matches_scipy_trim_mean():
    from scipy import stats  # rliable's definition, as an oracle (a dev dependency)

    x = np.random.default_rng(3).normal(size=13)
    assert iqm(x) == pytest.approx(stats.trim_mean(x, 0.25))


def test_top_k_mean():
    assert top_k_mean([5, 1, 9, 3, 7], k=3) == pytest.approx(7.0)
    with pytest.raises(ValueError):
        top_k_mean([1, 2], k=3)


def test_bootstrap_point_is_iqm_of_game_means_and_is_seeded():
    rng = np.random.default_rng(0)
    scores = {g: rng.normal(i, 1.0, size=16) for i, g in enumerate(["A", "B", "C", "D", "E"])}
    ci = iqm_bootstrap_ci(scores, num_resamples=500, seed=1)
    assert ci.point == pytest.approx(iqm([s.mean() for s in scores.values()]))
    assert ci.low < ci.point < ci.high
    assert iqm_bootstrap_ci(scores, num_resamples=500, seed=1) == ci
    assert iqm_bootstrap_ci(scores, num_resamples=500, seed=2) != ci


def test_bootstrap_is_stratified_by_game():
    # Two games, IQM of two means is their average; resampling within each game keeps every
    # replicate at exactly 0.5, where pooling the episodes across games would not.
    ci = iqm_bootstrap_ci({"A": np.zeros(7), "B": np.ones(3)}, num_resamples=300, seed=0)
    assert (ci.point, ci.low, ci.high) == (0.5, 0.5, 0.5)


def test_bootstrap_narrows_with_more_episodes():
    rng = np.random.default_rng(5)
    few = {g: rng.normal(0, 1, size=3) for g in "ABCDEFG"}
    many = {g: rng.normal(0, 1, size=300) for g in "ABCDEFG"}
    w_few = iqm_bootstrap_ci(few, num_resamples=400)
    w_many = iqm_bootstrap_ci(many, num_resamples=400)
    assert (w_many.high - w_many.low) < (w_few.high - w_few.low)


def test_bootstrap_bad_input():
    with pytest.raises(ValueError):
        iqm_bootstrap_ci({})
    with pytest.raises(ValueError, match="B"):
        iqm_bootstrap_ci({"A": [1.0], "B": []})
    with pytest.raises(ValueError):
        iqm_bootstrap_ci({"A": [1.0]}, confidence=1.5)
