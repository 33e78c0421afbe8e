"""The rollout engine: the leading controller, rollouts in Redis and the steps that move them.

``Controller`` leads (one at a time, by lease) and advances every rollout;
``RolloutEngine`` drives a canary through its playbook's typed steps;
``FlagRunEngine`` does the same for flag rollouts. Admission checks, status
flags and the Redis keys of the controller live here too.
"""
