"""The benchmark's TRL reward: selfrl's majority vote on the arith task, as any TRL user would take it."""
from selfrl.rewards import MajorityVoteReward
from selfrl.tasks.arith import ArithTask

trl_majority_vote = MajorityVoteReward(ArithTask(), name="trl_majority_vote")
