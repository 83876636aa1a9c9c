"""The fleet and what changes it: topology edits (reload, ejection), health checking, failover strategies, Sentinel, key migration."""
