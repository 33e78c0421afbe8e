"""Analysis: the criteria a step judges by and the statistics that judge a canary."""
