"""Router building blocks on small hand-checked inputs: loss, pivot, split, metrics, budgets, save/load."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from persyn_hub.cli import main as cli_main
from persyn_hub.router import (
    BudgetError,
    RouterDataError,
    RouterInfo,
    RouterMismatchError,
    assign_with_budgets,
    bradley_terry_loss,
    greedy_truncation,
    load_router,
    new_router,
    pivot_rewards,
    route_prompts,
    router_identity,
    router_info,
    routing_metrics,
    save_router,
    split_by_prompt,
    teacher_capacities,
)

NAN = float("nan")


def pool(rows: list[tuple]) -> Dataset:
    """(prompt_id, teacher, reward, excluded) tuples -> a labeled pool with the contract's columns."""
    return Dataset.from_dict(
        {
            "prompt_id": [r[0] for r in rows],
            "prompt": [f"text of {r[0]}" for r in rows],
            "messages": [[{"role": "user", "content": f"text of {r[0]}"}] for r in rows],
            "teacher": [r[1] for r in rows],
            "reward": [r[2] for r in rows],
            "excluded": [r[3] for r in rows],
        }
    )


# -- Bradley-Terry loss -------------------------------------------------------------------------------


def test_bradley_terry_loss_counts_ordered_pairs_only():
    scores = torch.tensor([[2.0, 0.0, 1.0]])
    rewards = torch.tensor([[1.0, 0.0, NAN]])  # one ordered pair (0 > 1); teacher 2 unusable
    expected = -math.log(1 / (1 + math.exp(-2.0)))
    assert bradley_terry_loss(scores, rewards, 1e-6).item() == pytest.approx(expected, rel=1e-6)

    two_pairs = torch.tensor([[0.5, 0.0, 0.2]])
    loss = bradley_terry_loss(torch.tensor([[0.0, 1.0, 3.0]]), two_pairs, 1e-6).item()
    pairs = [(0, 1), (0, 2), (2, 1)]  # r0 > r2 > r1
    s = [0.0, 1.0, 3.0]
    manual = np.mean([-math.log(1 / (1 + math.exp(-(s[i] - s[j])))) for i, j in pairs])
    assert loss == pytest.approx(manual, rel=1e-6)


def test_ties_give_no_signal_but_keep_the_graph():
    scores = torch.tensor([[1.0, -1.0]], requires_grad=True)
    loss = bradley_terry_loss(scores, torch.tensor([[0.3, 0.3 + 1e-8]]), 1e-6)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))


# -- pivot and split ----------------------------------------------------------------------------------


def test_pivot_drops_unusable_rows_and_prompts():
    labels = pool(
        [
            ("p1", "a", 1.0, None),
            ("p1", "b", 0.0, None),
            ("p1", "c", None, None),
            ("p2", "a", 0.5, "generation failed: timeout"),
            ("p2", "b", 0.1, None),
            ("p2", "c", 0.2, None),
            ("p3", "a", 0.9, None),
            ("p3", "b", 0.1, "unscorable"),
            ("p3", "c", NAN, None),
        ]
    )
    table = pivot_rewards(labels, ["a", "b", "c"])
    assert table.prompt_ids == ["p1", "p2"]  # p3 has a single usable teacher
    assert table.prompts == ["text of p1", "text of p2"]
    np.testing.assert_array_equal(np.isnan(table.rewards), [[False, False, True], [True, False, False]])
    assert table.rewards[1, 2] == pytest.approx(0.2)
    # training rows rank an unusable answer one unit below the prompt's worst usable reward
    np.testing.assert_allclose(table.training_rewards(), [[1.0, 0.0, -1.0], [-0.9, 0.1, 0.2]])
    rows = table.to_dataset()
    assert rows.column_names == ["prompt_id", "prompt", "rewards"]
    np.testing.assert_allclose(rows["rewards"], [[1.0, 0.0, -1.0], [-0.9, 0.1, 0.2]], rtol=1e-6)


def test_two_unusable_answers_tie_below_every_usable_one():
    labels = pool(
        [("p1", "a", 0.5, None), ("p1", "b", -0.5, None), ("p1", "c", None, None), ("p1", "d", 0.2, "failed")]
    )
    table = pivot_rewards(labels, ["a", "b", "c", "d"])
    np.testing.assert_allclose(table.training_rewards(), [[0.5, -0.5, -1.5, -1.5]])
    assert np.isnan(table.rewards[0, 2:]).all()  # the table itself keeps NaN for metrics


def test_pivot_stops_when_no_prompt_has_two_usable_teachers():
    labels = pool(
        [("p1", "a", 1.0, None), ("p1", "b", None, None), ("p2", "a", None, None), ("p2", "b", 0.3, "failed")]
    )
    with pytest.raises(RouterDataError, match="two usable teachers"):
        pivot_rewards(labels, ["a", "b"])


def test_pivot_names_bad_teachers_duplicates_and_missing_columns():
    with pytest.raises(RouterDataError, match=r"\['zed'\].*not in the recipe"):
        pivot_rewards(pool([("p1", "a", 1.0, None), ("p1", "zed", 0.0, None)]), ["a", "b"])
    with pytest.raises(RouterDataError, match="'p1' has 2 rows for teacher 'a'"):
        pivot_rewards(
            pool([("p1", "a", 1.0, None), ("p1", "a", 0.0, None), ("p1", "b", 0.0, None)]), ["a", "b"]
        )
    with pytest.raises(RouterDataError, match=r"lacks column\(s\) \['reward'\]"):
        pivot_rewards(pool([("p1", "a", 1.0, None)]).remove_columns("reward"), ["a", "b"])


def test_split_is_three_way_by_prompt_seeded_and_never_empty():
    labels = pool([(f"p{i}", t, float(i % 3 + (t == "a")), None) for i in range(10) for t in ("a", "b")])
    table = pivot_rewards(labels, ["a", "b"])
    splits = split_by_prompt(table, validation_fraction=0.2, test_fraction=0.3, seed=3)
    assert splits.sizes() == {"train": 5, "validation": 2, "test": 3}
    parts = [set(part.prompt_ids) for part in (splits.train, splits.validation, splits.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set.union(*parts) == set(table.prompt_ids)
    for part in (splits.train, splits.validation, splits.test):  # each row keeps its own rewards
        rows = [table.prompt_ids.index(p) for p in part.prompt_ids]
        np.testing.assert_array_equal(part.rewards, table.rewards[rows])
    again = split_by_prompt(table, 0.2, 0.3, seed=3)
    assert again.test.prompt_ids == splits.test.prompt_ids
    assert again.validation.prompt_ids == splits.validation.prompt_ids
    other_seeds = [split_by_prompt(table, 0.2, 0.3, seed=s).test.prompt_ids for s in range(4, 9)]
    assert any(ids != splits.test.prompt_ids for ids in other_seeds)
    # tiny fractions still leave one prompt in each part; big ones still leave one to train on
    assert split_by_prompt(table.subset(np.arange(3)), 0.01, 0.01, seed=0).sizes() == {
        "train": 1,
        "validation": 1,
        "test": 1,
    }
    crowded = split_by_prompt(table.subset(np.arange(4)), 0.45, 0.45, seed=0).sizes()
    assert crowded["train"] >= 1 and crowded["validation"] >= 1 and crowded["test"] >= 1
    assert sum(crowded.values()) == 4
    with pytest.raises(RouterDataError, match="at least 3"):
        split_by_prompt(table.subset(np.arange(2)), 0.2, 0.2, seed=0)
    with pytest.raises(RouterDataError, match=r"router\.test_fraction: 0\.0 must be in \(0, 1\)"):
        split_by_prompt(table, 0.2, 0.0, seed=0)
    with pytest.raises(RouterDataError, match=r"router\.validation_fraction: 1\.0"):
        split_by_prompt(table, 1.0, 0.2, seed=0)


# -- metrics ------------------------------------------------------------------------------------------


def test_metrics_on_a_hand_checked_case():
    teachers = ["a", "b", "c"]
    rewards = np.array([[1.0, 0.0, -1.0], [-2.0, 0.0, NAN], [0.0, 0.0, 0.0]])
    scores = np.array([[0.0, 5.0, 1.0], [0.0, 1.0, 9.0], [3.0, 0.0, 0.0]])
    train = np.array([[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]])  # best single on train: a
    m = routing_metrics(scores, rewards, train, teachers)
    # effective rewards: row 2's unusable c counts as its worst usable (-2).
    # routed: b (0), c (-2), a (0); oracle 1, 0, 0; worst -1, -2, 0 -> gap 2 + 2 + 0 = 4.
    assert m["reward_recovered"] == pytest.approx((1 + 0 + 0) / 4)
    assert m["top1_agreement"] == pytest.approx(1 / 3)  # only the all-tie prompt
    assert m["reward_recovered_best_single"] == pytest.approx((2 + 0 + 0) / 4)  # a: 1, -2, 0
    # random: the mean effective reward per prompt is 0, -4/3, 0 -> (1 + 2/3 + 0) / 4
    assert m["reward_recovered_random"] == pytest.approx((1 + 2 / 3) / 4)
    assert m["teacher_distribution"] == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert m["best_single_teacher"] == "a"
    only_ties = routing_metrics(scores[2:], rewards[2:], train, teachers)
    assert only_ties["reward_recovered"] == 1.0 and only_ties["reward_recovered_random"] == 1.0


# -- budgets ------------------------------------------------------------------------------------------


def test_budgeted_assignment_beats_greedy_truncation_on_a_hand_checked_case():
    # Teacher a may take half of the 4 prompts. Greedy gives a to prompts 0 and 1 (they come first),
    # leaving prompts 2 and 3, which lose 9 each without a, on b: total 10 + 10 + 1 + 1 = 22.
    # The optimum sends 0 and 1 (which lose 1 each) to b: 9 + 9 + 10 + 10 = 38.
    scores = np.array([[10.0, 9.0], [10.0, 9.0], [10.0, 1.0], [10.0, 1.0]])
    caps = teacher_capacities(4, ["a", "b"], {"a": 0.5})
    assert caps.tolist() == [2, 4]
    greedy = greedy_truncation(scores, caps)
    optimum = assign_with_budgets(scores, ["a", "b"], {"a": 0.5})
    assert optimum.tolist() == [1, 1, 0, 0]
    assert scores[np.arange(4), optimum].sum() == 38.0
    assert scores[np.arange(4), greedy].sum() == 22.0


def test_budgeted_assignment_equals_the_milp_optimum_with_ties_and_at_scale():
    from scipy.optimize import Bounds, LinearConstraint, milp

    rng = np.random.default_rng(3)
    teachers = ["a", "b", "c", "d"]
    budgets = {"a": 0.1, "b": 0.25}
    for scores in (
        np.zeros((40, 4)),
        rng.integers(0, 3, size=(300, 4)).astype(float),
        rng.normal(size=(300, 4)),
    ):
        n = len(scores)
        caps = teacher_capacities(n, teachers, budgets)
        solved = assign_with_budgets(scores, teachers, budgets)
        assert (np.bincount(solved, minlength=4) <= caps).all() and solved.shape == (n,)
        one_each = np.kron(np.eye(n), np.ones((1, 4)))
        per_teacher = np.kron(np.ones((1, n)), np.eye(4))
        reference = milp(
            -scores.ravel(),
            constraints=[LinearConstraint(one_each, 1, 1), LinearConstraint(per_teacher, 0, caps)],
            integrality=np.ones(n * 4),
            bounds=Bounds(0, 1),
        )
        assert scores[np.arange(n), solved].sum() == pytest.approx(-reference.fun)


def test_budgeted_assignment_matches_brute_force():
    rng = np.random.default_rng(7)
    teachers = ["a", "b", "c"]
    budgets = {"a": 0.34, "b": 0.34}
    scores = rng.normal(size=(6, 3))
    caps = teacher_capacities(6, teachers, budgets)
    best = max(
        (sum(scores[i, k] for i, k in enumerate(choice)), choice)
        for choice in itertools.product(range(3), repeat=6)
        if all(choice.count(k) <= caps[k] for k in range(3))
    )
    solved = assign_with_budgets(scores, teachers, budgets)
    assert scores[np.arange(6), solved].sum() == pytest.approx(best[0])
    assert (np.bincount(solved, minlength=3) <= caps).all()


def test_budgets_that_cannot_cover_every_prompt_stop_with_a_clear_error():
    with pytest.raises(BudgetError, match="sum to 0.600 < 1"):
        assign_with_budgets(np.zeros((5, 2)), ["a", "b"], {"a": 0.3, "b": 0.3})
    with pytest.raises(BudgetError, match=r"unknown teacher\(s\) \['x'\]"):
        assign_with_budgets(np.zeros((5, 2)), ["a", "b"], {"x": 0.3})
    # shares summing to 1 stay feasible even when flooring would leave a prompt without a slot
    assert teacher_capacities(3, ["a", "b"], {"a": 0.5, "b": 0.5}).sum() == 3


# -- model save / load --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_router(minilm_path):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    info = RouterInfo(
        teachers=["a", "b"],
        student="bundled:smollm2-135m-instruct",
        alpha=0.5,
        backbone=minilm_path,
        max_length=32,
    )
    return new_router(info, tokenizer), tokenizer


def test_a_saved_router_is_a_standard_sequence_classifier_with_one_label_per_teacher(fresh_router, tmp_path):
    router, tokenizer = fresh_router
    save_router(router, tokenizer, tmp_path, {"top1_agreement": 0.5})
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "README.md").is_file()
    assert not list(tmp_path.glob("*.py"))  # nothing for trust_remote_code to run
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["BertForSequenceClassification"] and saved["model_type"] == "bert"
    assert saved["id2label"] == {"0": "a", "1": "b"} and saved["persyn"]["alpha"] == 0.5
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "BertForSequenceClassification"
    info = RouterInfo.of(loaded.config)
    assert (
        info.teachers == ["a", "b"] and info.alpha == 0.5 and info.student == "bundled:smollm2-135m-instruct"
    )


def test_save_load_round_trip_gives_identical_scores(fresh_router, tmp_path, asdiv_prompts):
    router, tokenizer = fresh_router
    prompts = asdiv_prompts.select(range(8))
    before = route_prompts(prompts, router, tokenizer, batch_size=4)
    save_router(router, tokenizer, tmp_path, {})
    loaded, loaded_tokenizer = load_router(str(tmp_path), expected_teachers=["b", "a"])
    after = route_prompts(prompts, loaded, loaded_tokenizer, batch_size=4)
    np.testing.assert_array_equal(np.array(before["router_scores"]), np.array(after["router_scores"]))
    assert before["teacher"] == after["teacher"]
    assert set(after.column_names) == set(prompts.column_names) | {"teacher", "router_scores"}


def test_a_router_for_another_pool_is_refused_naming_both_lists(fresh_router, tmp_path):
    router, tokenizer = fresh_router
    save_router(router, tokenizer, tmp_path, {})
    with pytest.raises(RouterMismatchError, match=r"scores teachers \['a', 'b'\].*teachers are \['a', 'c'\]"):
        load_router(str(tmp_path), expected_teachers=["a", "c"])


def test_persyn_route_names_a_wrong_pool_or_a_missing_router_in_one_line(fresh_router, tmp_path, capsys):
    router, tokenizer = fresh_router
    save_router(router, tokenizer, tmp_path / "router", {})
    common = ["--prompts", "bundled:asdiv", "--num-prompts", "4", "--output", str(tmp_path / "out")]

    code = cli_main(["route", "--router", str(tmp_path / "router"), "--teachers", "a,c", *common])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error
    assert "--router:" in error and "['a', 'b']" in error and "['a', 'c']" in error

    code = cli_main(["route", "--router", str(tmp_path / "nothing-here"), *common])
    error = capsys.readouterr().err
    assert code == 2 and "--router: cannot load" in error and "model.safetensors" in error
    assert not (tmp_path / "out").exists()

    code = cli_main(
        ["route", "--router", str(tmp_path / "router"), "--teachers", "b,a", *common, "--prompt_colum", "q"]
    )
    assert (
        code == 2
        and "prompts.prompt_colum: unknown key. Did you mean 'prompt_column'?" in capsys.readouterr().err
    )

    # ASDiv repeats some questions: a prompts setting passed through as an override, typed from YAML
    routed = [
        "route",
        "--router",
        str(tmp_path / "router"),
        "--teachers",
        "b,a",
        *common,
        "--drop_duplicates",
        "true",
    ]
    assert cli_main(routed) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 4 and (tmp_path / "out").is_dir()


def test_a_router_retrained_in_place_has_a_new_identity(fresh_router, tmp_path):
    router, tokenizer = fresh_router
    save_router(router, tokenizer, tmp_path, {})
    first = router_identity(str(tmp_path))
    save_router(router, tokenizer, tmp_path, {"top1_agreement": 1.0})  # same weights, new metrics
    assert router_identity(str(tmp_path)) == first and "model.safetensors:" in first
    changed = AutoModelForSequenceClassification.from_config(router.config)
    changed.load_state_dict({k: v + 1e-3 for k, v in router.state_dict().items()})
    save_router(changed, tokenizer, tmp_path, {})
    assert router_identity(str(tmp_path)) != first


def test_routing_needs_a_prompt_column(fresh_router):
    router, tokenizer = fresh_router
    with pytest.raises(ValueError, match=r"route_prompts: the data set lacks column\(s\) \[.prompt.\]"):
        route_prompts(Dataset.from_dict({"text": ["x"]}), router, tokenizer)


def test_the_router_cards_examples_run_as_written(tmp_path):
    """Both usage blocks of a saved router's card, copied out and run: transformers alone (no persyn_hub
    imported), then persyn_hub's `route_prompts`."""
    import re
    import subprocess
    import sys

    from conftest import save_tiny_router

    from persyn_hub.router.card import render_router_card

    router = save_tiny_router(tmp_path, ["a", "b", "c"], max_length=32, alpha=0.4)
    card = str(
        render_router_card(router_info(router), {}, repo_id=str(tmp_path))
    )  # as pushed, with its repo id
    transformers_only, with_persyn = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert "persyn_hub" not in transformers_only and str(tmp_path) in transformers_only
    check = "\nimport sys\nassert not [m for m in sys.modules if m.startswith('persyn_hub')]\n"
    for code in (transformers_only + check, with_persyn):
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "'label': 'a'" in result.stdout or "['" in result.stdout, result.stdout
