"""Hand-computed tests of selfrl.core: each comment derives the expected numbers (style.md items 2 and 11a)."""
import math
from fractions import Fraction

import pytest
import torch
from torch.testing import assert_close

from selfrl import core


def exact(a, b):
    return a == b


def same_number(a, b):
    return Fraction(a) == Fraction(b)


# --- majority_vote -------------------------------------------------------------------------------------------------


def test_majority_vote_plain():
    # "3" has 3 of 5 votes, "5" and "7" one each -> ("3", 3/5).
    assert core.majority_vote(["3", "5", "3", "7", "3"], exact) == ("3", pytest.approx(3 / 5))


def test_majority_vote_none_counts_as_voter_but_never_wins():
    # None is the most common entry (3 of 4) but agrees with nobody: "4" wins with 1 vote, share 1 / 4 voters.
    assert core.majority_vote(["4", None, None, None], exact) == ("4", pytest.approx(1 / 4))
    # "4" has 2 votes out of 5 voters (the two None still count in the denominator) -> 2/5, not 2/3.
    assert core.majority_vote(["4", None, None, "4", "2"], exact) == ("4", pytest.approx(2 / 5))


def test_majority_vote_no_answer():
    # No parseable answer: no label and share 0 (also for an empty group, without dividing by zero).
    assert core.majority_vote([None, None, None], exact) == (None, 0.0)
    assert core.majority_vote([], exact) == (None, 0.0)


def test_majority_vote_tie_goes_to_first_seen():
    # "2" and "1" both have 2 votes; "2" was seen first -> ("2", 2/4).
    assert core.majority_vote(["2", "1", "1", "2"], exact) == ("2", pytest.approx(0.5))
    assert core.majority_vote(["1", "2"], exact) == ("1", pytest.approx(0.5))


def test_majority_vote_tie_reads_from_first():
    # Voters 0-1 say "2", voters 2-3 say "1": a 2-2 tie. Read from voter 2 on, "1" is seen first -> ("1", 2/4).
    assert core.majority_vote(["2", "2", "1", "1"], exact, first=2) == ("1", pytest.approx(0.5))
    # `first` only breaks ties: "2" has 3 of 4 votes and wins from any start.
    assert core.majority_vote(["2", "2", "1", "2"], exact, first=2) == ("2", pytest.approx(0.75))
    # "7" and "9" tie at 2 of 5. From voter 0 the order is 7, 9, 9, 5, 7 -> "7"; from voter 1 it wraps round:
    # 9, 9, 5, 7, 7 -> "9".
    assert core.majority_vote(["7", "9", "9", "5", "7"], exact) == ("7", pytest.approx(0.4))
    assert core.majority_vote(["7", "9", "9", "5", "7"], exact, first=1) == ("9", pytest.approx(0.4))


def test_vote_texts_first_counts_kept_voters_only():
    # Voters a, b, B, c (keep False on voter 0): kept are b, B, c. first=2 indexes all voters; among the kept
    # voters it is index 1, so the vote reads B, c, b. A 1-1-1 tie goes to "B" (exact answers = the text itself).
    answers, label, share = core.vote_texts(["a", "b", "B", "c"], lambda t: t, exact, [False, True, True, True], 2)
    assert answers == ["a", "b", "B", "c"] and label == "B" and share == pytest.approx(1 / 3)
    assert core.vote_texts(["a", "b", "B", "c"], lambda t: t, exact, [False, True, True, True])[1] == "b"


def test_majority_vote_equivalence_classes():
    # With Fraction equality, "1/2", "0.5" and "2/4" form one class of 3 votes; "3" has 2.
    # The class wins with 3/5 and is represented by its first member "1/2".
    answers = ["1/2", "3", "0.5", "3", "2/4"]
    assert core.majority_vote(answers, same_number) == ("1/2", pytest.approx(3 / 5))
    # Same answers under exact string equality: "3" (2 votes) beats each singleton.
    assert core.majority_vote(answers, exact) == ("3", pytest.approx(2 / 5))
    # Tie between classes {"3", "3.0"} and {"0.5", "1/2"} (2 each): "3" was seen first.
    assert core.majority_vote(["3", "0.5", "1/2", "3.0"], same_number) == ("3", pytest.approx(0.5))


# --- match_rewards -------------------------------------------------------------------------------------------------


def test_match_rewards():
    # float(a) == float(label): "3" and "3.0" match "3", "4" does not; None gets 0 and is never passed to
    # is_equivalent (float(None) would raise TypeError).
    def eq(a, b):
        return float(a) == float(b)

    assert core.match_rewards(["3", None, "3.0", "4"], "3", eq) == [1.0, 0.0, 1.0, 0.0]


def test_match_rewards_without_label_is_zero():
    assert core.match_rewards(["3", None, "3"], None, exact) == [0.0, 0.0, 0.0]


# --- group_advantages ----------------------------------------------------------------------------------------------


def test_group_advantages_unbiased_std():
    # Row 0, r = [1, 0, 0, 0]: mean 1/4; deviations [3/4, -1/4, -1/4, -1/4];
    #   sum of squares 9/16 + 3/16 = 3/4; unbiased var (3/4) / 3 = 1/4; std 1/2
    #   A = dev / (1/2 + eps) ~= [1.5, -0.5, -0.5, -0.5].
    # Row 1, r = [1, 1, 0, 0]: mean 1/2; deviations ±1/2; sum of squares 1; var 1/3; std 1/sqrt(3)
    #   A = ±(1/2) / (1/sqrt(3) + eps) ~= ±sqrt(3)/2 ~= ±0.866.
    eps = 1e-4
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    keep = torch.ones(2, 4, dtype=torch.bool)
    s0, s1 = 0.5 + eps, 3**-0.5 + eps
    expected = torch.tensor([[0.75 / s0, -0.25 / s0, -0.25 / s0, -0.25 / s0], [0.5 / s1, 0.5 / s1, -0.5 / s1, -0.5 / s1]])
    assert_close(core.group_advantages(rewards, keep, eps=eps), expected)
    # Without the eps the values are the round ones above (to within eps-relative error).
    assert_close(core.group_advantages(rewards, keep, eps=eps)[0], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=5e-4, rtol=0)


def test_group_advantages_unanimous_group_is_zero():
    # All rewards equal: r - mean = 0 in every slot, so A = 0 (eps keeps 0 / 0 away).
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    assert_close(core.group_advantages(rewards, torch.ones(2, 4, dtype=torch.bool)), torch.zeros(2, 4))


def test_group_advantages_dropped_samples_leave_the_statistics():
    # r = [1, 0, 1, 0], keep = [T, T, T, F]: statistics over [1, 0, 1] only.
    #   mean 2/3; deviations [1/3, -2/3, 1/3]; sum of squares 6/9 = 2/3; unbiased var (2/3) / 2 = 1/3;
    #   std 1/sqrt(3); A = dev * sqrt(3) ~= [0.577, -1.155, 0.577] and the dropped slot gets 0.
    # (Had the dropped 0 counted, the mean would be 1/2 and A[0] would be 0.866.)
    eps = 1e-4
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    keep = torch.tensor([[True, True, True, False]])
    s = 3**-0.5 + eps
    expected = torch.tensor([[(1 / 3) / s, (-2 / 3) / s, (1 / 3) / s, 0.0]])
    assert_close(core.group_advantages(rewards, keep, eps=eps), expected)


def test_group_advantages_single_kept_sample_is_zero():
    # One kept sample: mean = its own reward, so r - mean = 0; the dropped ones are masked to 0. A row with nothing
    # kept is all zeros too.
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0]])
    keep = torch.tensor([[True, False, False, False], [True, False, False, False], [False] * 4])
    A = core.group_advantages(rewards, keep)
    assert_close(A, torch.zeros(3, 4))
    assert torch.isfinite(A).all()


# --- iqr_keep_mask -------------------------------------------------------------------------------------------------


def test_iqr_keep_mask_drops_low_outlier():
    # Sorted row [0.1, 1.0, 1.1, 1.2, 1.3], n = 5; linear interpolation puts quantile q at index q * (n - 1):
    #   Q1 at index 1 -> 1.0, Q3 at index 3 -> 1.2; IQR 0.2; bound 1.0 - 0.75 * 0.2 = 0.85 -> only 0.1 is dropped.
    H = torch.tensor([[1.1, 0.1, 1.3, 1.0, 1.2]])
    assert core.iqr_keep_mask(H, k=0.75).tolist() == [[True, False, True, True, True]]


def test_iqr_keep_mask_is_low_side_only():
    # [1.0, 1.1, 1.2, 1.3, 50.0]: Q1 1.1, Q3 1.3, IQR 0.2, bound 1.1 - 0.15 = 0.95 -> everything kept, the very
    # high-entropy 50.0 included (a two-sided filter would drop it: 50 > 1.3 + 0.15).
    H = torch.tensor([[1.0, 1.1, 1.2, 1.3, 50.0]])
    assert core.iqr_keep_mask(H, k=0.75).all()


def test_iqr_keep_mask_k():
    # [1, 2, 3, 4], n = 4: Q1 at index 0.75 -> 1 + 0.75 * (2 - 1) = 1.75; Q3 at index 2.25 -> 3.25; IQR 1.5.
    #   k = 0: bound = Q1 = 1.75 -> drops 1 only.   k = 0.75: bound 1.75 - 1.125 = 0.625 -> keeps all.
    H = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert core.iqr_keep_mask(H, k=0.0).tolist() == [[False, True, True, True]]
    assert core.iqr_keep_mask(H, k=0.75).all()
    # Large k: bound 1.0 - 100 * 0.2 = -19 for the outlier row of the first test -> 0.1 is kept.
    assert core.iqr_keep_mask(torch.tensor([[0.1, 1.0, 1.1, 1.2, 1.3]]), k=100.0).all()


def test_iqr_keep_mask_equal_entropies_keep_all():
    # IQR = 0 -> bound = Q1 = the common value; the comparison is >=, so nobody is dropped.
    assert core.iqr_keep_mask(torch.full((2, 6), 0.7), k=0.75).all()


def test_iqr_keep_mask_rows_are_independent():
    # Row 0: bound 0.85 (first test) -> drops 0.1.
    # Row 1 [0.5, 0.6, 0.7, 0.8, 0.9]: Q1 0.6, Q3 0.8, bound 0.6 - 0.15 = 0.45 -> keeps all, although 0.5 would be
    # below row 0's bound: each prompt is filtered against its own quartiles.
    H = torch.tensor([[0.1, 1.0, 1.1, 1.2, 1.3], [0.5, 0.6, 0.7, 0.8, 0.9]])
    assert core.iqr_keep_mask(H, k=0.75).tolist() == [[False, True, True, True, True], [True] * 5]


def test_iqr_keep_mask_input_on_another_device():
    # The quantile tensor must live on the input's device (cuda in training); the meta device checks that on CPU.
    H = torch.empty(2, 5, device="meta")
    mask = core.iqr_keep_mask(H, k=0.75)
    assert mask.shape == (2, 5) and mask.device == H.device


# --- ema_update_ ---------------------------------------------------------------------------------------------------


def test_ema_update_hand_values():
    # θk ← 0.99·1 + 0.01·3 = 1.02; θq untouched.
    ema, params = [torch.tensor([1.0])], [torch.tensor([3.0])]
    core.ema_update_(ema, params, decay=0.99)
    assert_close(ema[0], torch.tensor([1.02]))
    assert_close(params[0], torch.tensor([3.0]))


def test_ema_update_decay_limits():
    # decay 1: θk ← θk (frozen); decay 0: θk ← θq (copy).
    ema, params = [torch.tensor([1.0, -2.0])], [torch.tensor([3.0, 5.0])]
    core.ema_update_(ema, params, decay=1.0)
    assert ema[0].tolist() == [1.0, -2.0]
    core.ema_update_(ema, params, decay=0.0)
    assert ema[0].tolist() == [3.0, 5.0]
    assert params[0].tolist() == [3.0, 5.0]


def test_ema_update_several_tensors():
    # Every pair is updated with the same decay 0.5: θk ← (θk + θq) / 2.
    #   (2, 2): (0 + 4) / 2 = 2 everywhere;  (3,): ([2, 4, 6] + [0, 0, 0]) / 2 = [1, 2, 3].
    ema = [torch.zeros(2, 2), torch.tensor([2.0, 4.0, 6.0])]
    params = [torch.full((2, 2), 4.0), torch.zeros(3)]
    ids = [id(t) for t in ema]
    core.ema_update_(ema, params, decay=0.5)
    assert [id(t) for t in ema] == ids  # in place
    assert_close(ema[0], torch.full((2, 2), 2.0))
    assert_close(ema[1], torch.tensor([1.0, 2.0, 3.0]))
    assert_close(params[0], torch.full((2, 2), 4.0))


def test_ema_update_does_not_track_gradients():
    # The momentum weights are Parameters in the trainer; the in-place update must work under their requires_grad.
    ema = [torch.nn.Parameter(torch.tensor([1.0]))]
    params = [torch.nn.Parameter(torch.tensor([3.0]))]
    core.ema_update_(ema, params, decay=0.99)
    assert_close(ema[0].detach(), torch.tensor([1.02]))  # 0.99 * 1 + 0.01 * 3
    # The update is outside the autograd graph: a loss on the EMA weights sends no gradient to the policy's (a
    # tracked update would give params[0].grad = 3 * 0.01), and the EMA weight is still a leaf of its own.
    (3 * ema[0]).sum().backward()
    assert params[0].grad is None and ema[0].is_leaf and ema[0].grad.item() == 3.0


# --- token_entropy / token_logprobs --------------------------------------------------------------------------------


def test_token_entropy_uniform_is_log_v():
    # p = 1/V everywhere -> H = -Σ (1/V) log(1/V) = log V; shape (..., V) -> (...).
    for V in (2, 7, 1000):
        H = core.token_entropy(torch.full((2, 3, V), 0.3))
        assert H.shape == (2, 3)
        assert_close(H, torch.full((2, 3), math.log(V)))


def test_token_entropy_peaked_is_zero():
    # logits [100, 0, 0]: p ≈ (1, e^-100, e^-100), H ≈ 100·e^-100·2 ≈ 0 (no overflow from the large logit).
    H = core.token_entropy(torch.tensor([100.0, 0.0, 0.0]))
    assert_close(H, torch.tensor(0.0), atol=1e-5, rtol=0)


def test_token_entropy_two_classes():
    # logits [1, 0]: p = e/(e+1) ≈ 0.7311; H = logsumexp − Σ p·z = log(1 + e) − p ≈ 1.3133 − 0.7311 = 0.5822,
    # the same as −p log p − (1−p) log(1−p).
    p = math.e / (math.e + 1)
    expected = math.log(1 + math.e) - p
    assert expected == pytest.approx(-p * math.log(p) - (1 - p) * math.log(1 - p))
    assert core.token_entropy(torch.tensor([1.0, 0.0])).item() == pytest.approx(expected, abs=1e-6)
    # bf16 logits are computed in fp32
    assert core.token_entropy(torch.tensor([1.0, 0.0], dtype=torch.bfloat16)).dtype == torch.float32


def test_token_logprobs():
    # Hand value: logits [0, log 3] -> p = [1/4, 3/4]; token 1 -> log(3/4), token 0 -> log(1/4).
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])  # (1, 2, 2)
    assert_close(core.token_logprobs(logits, torch.tensor([[1, 0]])), torch.tensor([[math.log(0.75), math.log(0.25)]]))
    # Random case: equals log_softmax then gather.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    tokens = torch.randint(0, 11, (3, 5), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert_close(core.token_logprobs(logits, tokens), expected)


# --- masked_mean / k3_kl -------------------------------------------------------------------------------------------


def test_masked_mean():
    # x = [[1, 2, 3], [4, 5, 6]], mask = [[1, 1, 0], [1, 0, 0]]:
    #   dim=None: (1 + 2 + 4) / 3 = 7/3;  dim=1: [(1 + 2) / 2, 4 / 1] = [1.5, 4].
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert core.masked_mean(x, mask).item() == pytest.approx(7 / 3)
    assert_close(core.masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.0]))
    # Bool masks work the same.
    assert core.masked_mean(x, mask.bool()).item() == pytest.approx(7 / 3)


def test_masked_mean_empty_mask_is_zero():
    # Empty mask: 0 / clamp(0, min=1) = 0, overall and for an empty row.
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert core.masked_mean(x, torch.zeros(2, 2)).item() == 0.0
    assert_close(core.masked_mean(x, torch.tensor([[0, 0], [1, 1]]), dim=1), torch.tensor([0.0, 3.5]))


def test_k3_kl():
    # r = ref − logp.  logp = ref: r = 0 -> e^0 − 0 − 1 = 0.
    #   logp = 0, ref = −1: r = −1 -> e^−1 + 1 − 1 = e^−1 ≈ 0.368.
    #   logp = −1, ref = 0: r = 1 -> e − 1 − 1 = e − 2 ≈ 0.718.
    logp = torch.tensor([-0.3, 0.0, -1.0])
    ref = torch.tensor([-0.3, -1.0, 0.0])
    assert_close(core.k3_kl(logp, ref), torch.tensor([0.0, math.exp(-1), math.e - 2]))


def test_k3_kl_is_nonnegative():
    # e^r ≥ 1 + r for every real r.
    g = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(1000, generator=g) * 3, torch.randn(1000, generator=g) * 3
    assert (core.k3_kl(logp, ref) >= 0).all()


# --- policy_loss ---------------------------------------------------------------------------------------------------


def test_policy_loss_is_token_mean_of_advantages():
    # Ratio 1 (old = logp.detach()): surrogate = A on every token, so loss = −(token mean of A over masked tokens).
    # Row 0 has 3 tokens with A = 1, row 1 has 1 token with A = −2: loss = −(3·1 + 1·(−2)) / 4 = −1/4.
    # (A per-sequence mean would give −(1 + (−2)) / 2 = +0.5: a different number.)
    logp = torch.tensor([[-0.5, -1.0, -2.0], [-0.7, -0.1, -0.2]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    A = torch.tensor([1.0, -2.0])
    loss, metrics = core.policy_loss(logp, logp.detach(), A, mask)
    assert loss.item() == pytest.approx(-0.25)
    assert metrics["loss/pg"] == pytest.approx(-0.25)
    assert metrics["loss/kl"] == 0.0
    assert metrics["loss/clip_frac"] == 0.0
    # d loss / d logp[i, t] = −A_i · ratio / (masked tokens) = −A_i / 4 on masked tokens, 0 elsewhere.
    loss.backward()
    assert_close(logp.grad, torch.tensor([[-0.25, -0.25, -0.25], [0.5, 0.0, 0.0]]))


def test_policy_loss_clip():
    # One row, A = 1, two masked tokens; token 0 has ratio 1.5 (old = logp − log 1.5), token 1 ratio 1.
    #   token 0: min(1.5·1, clamp(1.5, 0.8, 1.2)·1) = 1.2, a constant -> gradient 0;
    #   token 1: min(1, 1) = 1.  loss = −(1.2 + 1) / 2 = −1.1; d loss / d logp[0, 1] = −1·1/2 = −0.5.
    #   clip_frac: |1.5 − 1| > 0.2 on 1 of 2 masked tokens = 0.5.
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    old = logp.detach() - torch.tensor([[math.log(1.5), 0.0]])
    loss, metrics = core.policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), epsilon=0.2)
    assert loss.item() == pytest.approx(-1.1)
    assert metrics["loss/clip_frac"] == pytest.approx(0.5)
    loss.backward()
    assert_close(logp.grad, torch.tensor([[0.0, -0.5]]))


def test_policy_loss_clip_is_pessimistic_for_negative_advantage():
    # A = −1, ratio 1.5: min(1.5·(−1), 1.2·(−1)) = −1.5, the unclipped term, so the gradient flows:
    #   loss = 1.5; d loss / d logp = −A · ratio = 1.5 (one token).
    logp = torch.tensor([[-1.0]], requires_grad=True)
    old = logp.detach() - math.log(1.5)
    loss, _ = core.policy_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 1), epsilon=0.2)
    assert loss.item() == pytest.approx(1.5)
    loss.backward()
    assert_close(logp.grad, torch.tensor([[1.5]]))


def test_policy_loss_clip_frac_ignores_masked_tokens():
    # Ratio 1.5 only on a masked-out token: 0 of 2 masked tokens are clipped.
    logp = torch.tensor([[-1.0, -1.0, -1.0]])
    old = logp - torch.tensor([[0.0, 0.0, math.log(1.5)]])
    _, metrics = core.policy_loss(logp, old, torch.tensor([1.0]), torch.tensor([[1, 1, 0]]))
    assert metrics["loss/clip_frac"] == 0.0


def test_policy_loss_kl_term():
    # A = 0 -> pg = 0. logp = 0, ref = [−1, 0, 5], mask [1, 1, 0]:
    #   k3 = [e^−1, 0, (masked)] -> masked mean e^−1 / 2 ≈ 0.184; loss = beta · e^−1 / 2 = 0.1 · 0.184.
    logp = torch.zeros(1, 3)
    ref = torch.tensor([[-1.0, 0.0, 5.0]])
    loss, metrics = core.policy_loss(logp, logp, torch.tensor([0.0]), torch.tensor([[1, 1, 0]]), beta=0.1, ref_logp=ref)
    kl = math.exp(-1) / 2
    assert metrics["loss/kl"] == pytest.approx(kl)
    assert loss.item() == pytest.approx(0.1 * kl)
    # With A ≠ 0 the two terms add: A = 2 -> pg = −2, loss = −2 + 0.1 · kl.
    loss, _ = core.policy_loss(logp, logp, torch.tensor([2.0]), torch.tensor([[1, 1, 0]]), beta=0.1, ref_logp=ref)
    assert loss.item() == pytest.approx(-2 + 0.1 * kl)


def test_policy_loss_masked_out_rows_add_nothing():
    # Appending a row with an all-zero mask (a filtered trajectory) and a huge advantage changes neither the loss
    # nor the other rows' gradients, and that row gets no gradient.
    logp = torch.tensor([[-0.5, -1.0], [-0.3, -0.2]], requires_grad=True)
    loss, _ = core.policy_loss(logp, logp.detach(), torch.tensor([1.0, -1.0]), torch.tensor([[1, 1], [1, 0]]))
    loss.backward()
    ref_grad = logp.grad.clone()

    logp2 = torch.cat([logp.detach(), torch.tensor([[-4.0, -9.0]])]).requires_grad_()
    ref = torch.cat([logp.detach(), torch.tensor([[0.0, 0.0]])])  # k3 = 0 on kept rows, > 0 on the dropped one
    mask2 = torch.tensor([[1, 1], [1, 0], [0, 0]])
    loss2, _ = core.policy_loss(logp2, logp2.detach(), torch.tensor([1.0, -1.0, 1e6]), mask2, beta=0.1, ref_logp=ref)
    loss2.backward()
    # −(1 + 1 − 1) / 3 = −1/3 in both cases (the KL term is 0 on the kept tokens, where ref = logp).
    assert loss.item() == pytest.approx(-1 / 3)
    assert loss2.item() == pytest.approx(-1 / 3)
    assert_close(logp2.grad[:2], ref_grad)
    assert_close(logp2.grad[2], torch.zeros(2))


def test_policy_loss_over_the_rows_that_carry_gradient_equals_the_whole_batch():
    # Rows 1 (advantage 0) and 2 (filtered: empty mask) carry no gradient when beta = 0. Leaving them out and passing
    # the whole batch's token count (row 0: 2, row 1: 3, row 2: 0 -> 5) as n_tokens gives the same loss and the same
    # gradient. With logp = 0 the ratio is 1: loss = -(1 * 2 tokens) / 5 = -0.4.
    logp = torch.zeros(3, 3, requires_grad=True)
    adv = torch.tensor([1.0, 0.0, -2.0])
    mask = torch.tensor([[1.0, 1, 0], [1, 1, 1], [0, 0, 0]])
    full, _ = core.policy_loss(logp, logp.detach(), adv, mask)
    (g_full,) = torch.autograd.grad(full, logp)
    part, _ = core.policy_loss(logp[:1], logp[:1].detach(), adv[:1], mask[:1], n_tokens=mask.sum())
    (g_part,) = torch.autograd.grad(part, logp)
    assert full.item() == pytest.approx(-0.4) and part.item() == pytest.approx(-0.4)
    assert torch.equal(g_full, g_part)  # -1/5 on row 0's two tokens, 0 elsewhere
