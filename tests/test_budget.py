"""The training budget: a fixed number of optimizer steps whatever the dataset's size, a step
schedule (warm-up, cosine to 0), and a sample stream that runs across passes without repeats."""

import collections

import pytest
import torch

from potholes.training.loader import StepSampler
from potholes.training.schedule import VALIDATION_BUDGET, plan_training, warmup_cosine


@pytest.mark.parametrize("train_images", [42, 202, 1700])
def test_a_step_budget_costs_the_same_steps_on_any_dataset(train_images):
    plan = plan_training(train_images=train_images, batch_size=8, steps=300, rounds=10, val_images=36)
    assert (plan.total_steps, plan.rounds, plan.steps_per_round, plan.warmup_steps) == (300, 10, 30, 15)
    assert plan.passes == pytest.approx(300 * 8 / train_images)  # small data: many passes; large: few


def test_epochs_override_counts_passes_and_validates_after_each():
    plan = plan_training(train_images=202, batch_size=8, steps=300, epochs=9)
    assert (plan.rounds, plan.steps_per_round, plan.total_steps) == (9, 25, 225)
    tiny = plan_training(train_images=5, batch_size=8, epochs=3)  # fewer images than a batch: a step a pass
    assert (tiny.rounds, tiny.steps_per_round) == (3, 1)
    two = plan_training(train_images=202, batch_size=8, world_size=2, epochs=2)
    assert (two.steps_per_round, two.images_per_step) == (12, 16)


def test_a_large_validation_split_is_validated_less_often_but_at_least_three_times():
    assert plan_training(train_images=1700, batch_size=8, steps=300, val_images=200).rounds == VALIDATION_BUDGET // 200
    assert plan_training(train_images=202, batch_size=8, steps=300, val_images=36).rounds == 10  # the dev set
    assert plan_training(train_images=9000, batch_size=8, steps=300, val_images=1600).rounds == 3
    assert plan_training(train_images=40, batch_size=8, steps=4, val_images=6).rounds == 4  # never more than steps
    with pytest.raises(ValueError, match="either steps or epochs"):
        plan_training(train_images=10, batch_size=2)


def test_learning_rate_warms_up_then_follows_a_cosine_to_zero():
    plan = plan_training(train_images=100, batch_size=4, steps=100, rounds=4, warmup=0.1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, plan)
    lrs = []
    for _ in range(plan.total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)  # linear warm-up over 10 steps
    assert lrs[10] == pytest.approx(1.0) and max(lrs) == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5, abs=0.02)  # half-way through the cosine
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def stream(sampler: StepSampler, rounds: range) -> list[tuple[int, int]]:
    keys = []
    for r in rounds:
        sampler.set_round(r)
        keys += list(sampler)
    return keys


def test_the_sample_stream_covers_every_image_once_a_pass_and_runs_on_across_passes():
    sampler = StepSampler(size=10, seed=3, batch_size=4, steps_per_round=2)
    assert len(sampler) == 8
    keys = stream(sampler, range(1, 6))  # 5 rounds x 8 = 40 samples = 4 passes, rounds straddling them
    assert len(keys) == 40
    for pass_ in range(4):
        assert sorted(i for p, i in keys if p == pass_) == list(range(10))
    assert [i for p, i in keys if p == 0] != [i for p, i in keys if p == 1]  # reshuffled each pass
    again = StepSampler(size=10, seed=3, batch_size=4, steps_per_round=2)
    again.set_round(4)
    assert list(again) == keys[24:32]  # any round is a function of (seed, round): a resume replays it
    other = StepSampler(size=10, seed=4, batch_size=4, steps_per_round=2)
    assert stream(other, range(1, 6)) != keys


def test_ranks_share_each_step_without_overlap_and_together_match_one_process_per_pass():
    ranks = [StepSampler(size=9, seed=1, batch_size=2, steps_per_round=3, rank=r, world_size=2) for r in (0, 1)]
    per_rank = [stream(s, range(1, 4)) for s in ranks]
    assert [len(keys) for keys in per_rank] == [18, 18]
    seen = collections.Counter(per_rank[0] + per_rank[1])
    assert max(seen.values()) == 1  # no (pass, image) drawn twice
    assert sorted(i for p, i in seen if p == 0) == list(range(9))
    one = StepSampler(size=9, seed=1, batch_size=4, steps_per_round=3)
    merged = [key for step in range(9) for r in (0, 1) for key in per_rank[r][2 * step:2 * step + 2]]
    assert merged == stream(one, range(1, 4))  # step k of two ranks = step k of one process with both batches
